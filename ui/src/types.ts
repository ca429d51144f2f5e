// Shapes of the admin API's answers the UI reads (see src/admin/openapi.json in the repo).

export interface Series {
  rps: number;
  error_rate: number;
  p50_ms: number | null;
  p99_ms: number | null;
  active: number;
  connections?: number;
}

export interface StatsEvent {
  ts: number;
  total: Series;
  routes: Record<string, Series>;
  upstreams: Record<string, Series>;
}

export interface Point extends Series {
  ts: number;
}

export interface History {
  interval_ms: number;
  total: Point[];
  routes: Record<string, Point[]>;
  upstreams: Record<string, Point[]>;
}

export interface LogLine {
  ts: string;
  level: string;
  kind: 'access' | 'event';
  method?: string;
  path?: string;
  route?: string;
  status?: number;
  latency_ms?: number;
  upstream?: string;
  client?: string;
  identity?: string;
  tenant?: string;
  request_id?: string;
  message?: string;
  grpc_status?: number;
}

export interface UpstreamEvent {
  ts: number;
  upstream: string;
  server: string;
  event: string;
  detail?: string;
}

export interface Route {
  name: string;
  path: string;
  host: string | null;
  methods: string;
  upstream: string;
  rewrite: string | null;
  tenant: string | null;
  timeout: string;
}

export interface Server {
  url: string;
  source: string;
  weight: number;
  priority: number;
  available: boolean;
  health: string;
  circuit: string;
  inflight: number;
  ejected: boolean;
  ejected_for_ms: number;
  ejections: number;
  last_check: string | null;
  last_check_ok: boolean | null;
  latency_ms: number | null;
  latency_ewma_ms: number;
}

export interface Upstream {
  name: string;
  strategy: string;
  health_check: boolean;
  circuit_breaker: boolean;
  source: string;
  discovery: string | null;
  servers: Server[];
}

export interface Reload {
  ts: string | number;
  trigger: string;
  outcome: string;
  config_hash?: string;
  errors?: { path: string; line?: number | null; message: string }[];
}

export interface Key {
  name: string;
  permissions: string[];
  rate_limit: { rps: number; burst: number } | null;
  tenant: string | null;
  source: string;
}

export interface Tenant {
  id: string;
  hosts: string[];
  api_keys: string[];
  routes: string[];
  quotas: { daily_requests: number | null; monthly_requests: number | null; warn_at: number | null } | null;
  rate_limits: { rps: number; burst: number } | null;
}

export interface Usage {
  tenant: string;
  days: { date: string; requests: number; refused: number }[];
}

export interface CacheStats {
  backend: string;
  bytes: number;
  entries: number;
  max_size: number;
  routes: { route: string; entries: number; bytes: number; hits: number; lookups: number; hit_ratio: number }[];
}
