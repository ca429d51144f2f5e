// The admin API client: every call carries the admin token as a header (never in a URL or a
// cookie, so there is no CSRF surface). The token lives in this tab's sessionStorage only.

const TOKEN_KEY = 'kairos.admin.token';

export function loadToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function saveToken(token: string | null): void {
  try {
    if (token === null) sessionStorage.removeItem(TOKEN_KEY);
    else sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Storage disabled: the token stays in memory only.
  }
}

/** One config error as the gateway reports it (path, line, hint). */
export interface ConfigError {
  path: string;
  message: string;
  line?: number | null;
  column?: number | null;
  hint?: string | null;
}

/** The gateway's JSON error body. */
export interface ErrorBody {
  error?: { code: string; message: string; request_id?: string };
  errors?: ConfigError[];
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public body: ErrorBody | null,
    public headers: Headers,
  ) {
    super(body?.error?.message ?? `HTTP ${status}`);
  }
  get code(): string | undefined {
    return this.body?.error?.code;
  }
}

export interface ApiResponse<T> {
  data: T;
  etag: string | null;
  status: number;
}

export class Api {
  constructor(
    public token: string,
    private onUnauthorized: () => void = () => {},
  ) {}

  headers(extra?: Record<string, string>): Record<string, string> {
    return { Authorization: `Bearer ${this.token}`, ...extra };
  }

  async request<T>(
    method: string,
    path: string,
    opts: { body?: unknown; text?: string; ifMatch?: string | null; signal?: AbortSignal } = {},
  ): Promise<ApiResponse<T>> {
    const extra: Record<string, string> = {};
    let body: string | undefined;
    if (opts.text !== undefined) {
      body = opts.text;
      extra['Content-Type'] = 'application/json';
    } else if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      extra['Content-Type'] = 'application/json';
    }
    if (opts.ifMatch) extra['If-Match'] = opts.ifMatch;
    const res = await fetch(path, {
      method,
      headers: this.headers(extra),
      body,
      signal: opts.signal,
      cache: 'no-store',
      credentials: 'omit',
    });
    const type = res.headers.get('Content-Type') ?? '';
    const parsed = type.includes('json') ? await res.json().catch(() => null) : await res.text();
    if (!res.ok) {
      if (res.status === 401) this.onUnauthorized();
      throw new ApiError(res.status, parsed && typeof parsed === 'object' ? parsed : null, res.headers);
    }
    return { data: parsed as T, etag: res.headers.get('ETag'), status: res.status };
  }

  get<T>(path: string, signal?: AbortSignal) {
    return this.request<T>('GET', path, { signal });
  }
}

/** A one-line description of a failed call for the page. */
export function describe(e: unknown): string {
  if (e instanceof ApiError) {
    const code = e.code ? ` (${e.code})` : '';
    return `HTTP ${e.status}${code}: ${e.message}`;
  }
  return e instanceof Error ? e.message : String(e);
}
