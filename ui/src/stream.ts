// The live feed: GET /_kairos/events read with fetch() and a ReadableStream, so that the admin
// token travels in the Authorization header (EventSource cannot send one, and the token never
// goes in a URL). Parses the SSE framing (`event:` / `data:` lines, a blank line ends an event,
// `:` lines are comments such as the keepalive), reconnects with a growing pause, and keeps the
// last 15 minutes of stats (seeded from /_kairos/stats/history) in bounded arrays.

import type { Api } from './api';
import type { History, LogLine, Point, StatsEvent, UpstreamEvent } from './types';

/** Points kept per series: 15 minutes at one a second, as the gateway keeps. */
export const MAX_POINTS = 900;
/** Live log lines kept in the page. */
export const MAX_LOG_LINES = 2000;
/** Upstream transitions kept in the page. */
export const MAX_TRANSITIONS = 200;

export interface SseEvent {
  event: string;
  data: string;
}

/** Incremental SSE parser: feed it text as it arrives, it returns the complete events. */
export class SseParser {
  private buffer = '';
  /** A CR that ended the last chunk: it may be the first half of a CRLF. */
  private pendingCr = false;

  push(chunk: string): SseEvent[] {
    let text = (this.pendingCr ? '\r' : '') + chunk;
    this.pendingCr = text.endsWith('\r');
    if (this.pendingCr) text = text.slice(0, -1);
    this.buffer += text.replace(/\r\n?/g, '\n');
    const out: SseEvent[] = [];
    let end: number;
    while ((end = this.buffer.indexOf('\n\n')) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line === '' || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
      }
      if (data.length > 0) out.push({ event, data: data.join('\n') });
    }
    return out;
  }
}

export type StreamStatus = 'connecting' | 'live' | 'reconnecting' | 'closed';

export interface LiveState {
  status: StreamStatus;
  latest: StatsEvent | null;
  total: Point[];
  routes: Record<string, Point[]>;
  upstreams: Record<string, Point[]>;
  logs: LogLine[];
  transitions: UpstreamEvent[];
  configHash: string | null;
  /** Counts of received events, by name (shown on the dashboard; the tests read them). */
  received: number;
}

function push<T>(list: T[], item: T, max: number): T[] {
  const next = list.length >= max ? list.slice(list.length - max + 1) : list.slice();
  next.push(item);
  return next;
}

export class LiveFeed {
  state: LiveState = {
    status: 'connecting',
    latest: null,
    total: [],
    routes: {},
    upstreams: {},
    logs: [],
    transitions: [],
    configHash: null,
    received: 0,
  };
  private listeners = new Set<() => void>();
  private logListeners = new Set<(lines: LogLine[]) => void>();
  private abort = new AbortController();

  /** `onUnauthorized`: the stream was refused with 401 (the token changed): sign out. */
  constructor(
    private api: Api,
    private onUnauthorized: () => void = () => {},
  ) {}

  subscribe = (fn: () => void) => {
    this.listeners.add(fn);
    return () => {
      this.listeners.delete(fn);
    };
  };

  onLog(fn: (lines: LogLine[]) => void) {
    this.logListeners.add(fn);
    return () => {
      this.logListeners.delete(fn);
    };
  }

  getState = () => this.state;

  private set(patch: Partial<LiveState>) {
    this.state = { ...this.state, ...patch };
    this.listeners.forEach((fn) => fn());
  }

  start() {
    void this.seed();
    void this.run();
  }

  stop() {
    this.abort.abort();
    this.set({ status: 'closed' });
  }

  private async seed() {
    try {
      const { data } = await this.api.get<History>('/_kairos/stats/history', this.abort.signal);
      // Live points that came in before the history answered are kept after it.
      const after = (p: Point[], since: number) => p.filter((x) => x.ts > since);
      const last = (p: Point[]) => (p.length ? p[p.length - 1].ts : 0);
      const merge = (h: Point[], live: Point[]) => [...h, ...after(live, last(h))].slice(-MAX_POINTS);
      const routes: Record<string, Point[]> = {};
      for (const [k, v] of Object.entries(data.routes ?? {})) routes[k] = merge(v, this.state.routes[k] ?? []);
      const upstreams: Record<string, Point[]> = {};
      for (const [k, v] of Object.entries(data.upstreams ?? {}))
        upstreams[k] = merge(v, this.state.upstreams[k] ?? []);
      this.set({
        total: merge(data.total ?? [], this.state.total),
        routes: { ...this.state.routes, ...routes },
        upstreams: { ...this.state.upstreams, ...upstreams },
      });
    } catch {
      // No history (an older gateway, or a blip): the live points fill the charts.
    }
  }

  private async run() {
    let pause = 500;
    while (!this.abort.signal.aborted) {
      try {
        const res = await fetch('/_kairos/events', {
          headers: { ...this.api.headers(), Accept: 'text/event-stream' },
          signal: this.abort.signal,
          cache: 'no-store',
          credentials: 'omit',
        });
        if (res.status === 401) {
          this.set({ status: 'closed' });
          this.onUnauthorized();
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        this.set({ status: 'live' });
        pause = 500;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        const parser = new SseParser();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const ev of parser.push(value)) this.dispatch(ev);
        }
      } catch {
        if (this.abort.signal.aborted) return;
      }
      this.set({ status: 'reconnecting' });
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(pause * 2, 10_000);
    }
  }

  private dispatch(ev: SseEvent) {
    let data: unknown;
    try {
      data = JSON.parse(ev.data);
    } catch {
      return;
    }
    const received = this.state.received + 1;
    switch (ev.event) {
      case 'stats': {
        const s = data as StatsEvent;
        const point = (x: StatsEvent['total']): Point => ({ ts: s.ts, ...x });
        const routes = { ...this.state.routes };
        for (const [k, v] of Object.entries(s.routes ?? {})) routes[k] = push(routes[k] ?? [], point(v), MAX_POINTS);
        const upstreams = { ...this.state.upstreams };
        for (const [k, v] of Object.entries(s.upstreams ?? {}))
          upstreams[k] = push(upstreams[k] ?? [], point(v), MAX_POINTS);
        this.set({ latest: s, total: push(this.state.total, point(s.total), MAX_POINTS), routes, upstreams, received });
        break;
      }
      case 'log': {
        const lines = (data as { lines?: LogLine[] }).lines ?? [];
        const logs = [...this.state.logs, ...lines].slice(-MAX_LOG_LINES);
        this.set({ logs, received });
        this.logListeners.forEach((fn) => fn(lines));
        break;
      }
      case 'upstream':
        this.set({ transitions: push(this.state.transitions, data as UpstreamEvent, MAX_TRANSITIONS), received });
        break;
      case 'config':
        this.set({ configHash: (data as { config_hash?: string }).config_hash ?? null, received });
        break;
      default:
        break;
    }
  }
}
