// The log viewer's filters, applied to live lines the way GET /_kairos/logs applies them.

import type { LogLine } from './types';

export interface Filters {
  route: string;
  status: string;
  client: string;
  request_id: string;
}

export const EMPTY: Filters = { route: '', status: '', client: '', request_id: '' };

/** Whether `l` passes the filters the way the gateway's /_kairos/logs does. */
export function matches(l: LogLine, f: Filters): boolean {
  if (f.route && l.route !== f.route) return false;
  if (f.client && l.client !== f.client) return false;
  if (f.request_id && l.request_id !== f.request_id) return false;
  if (f.status) {
    const s = l.status;
    if (s === undefined) return false;
    const m = /^([1-5])xx$/i.exec(f.status);
    if (m ? Math.floor(s / 100) !== Number(m[1]) : String(s) !== f.status) return false;
  }
  return true;
}

/** A line's identity: a live batch may repeat lines the first read already returned. */
export const lineKey = (l: LogLine) => `${l.request_id ?? ''} ${l.ts} ${l.kind} ${l.status ?? ''} ${l.message ?? ''}`;

/** `old` and then the lines of `fresh` it does not hold, the newest `max` of them. */
export function appendNew(old: LogLine[], fresh: LogLine[], max: number): LogLine[] {
  const seen = new Set(old.map(lineKey));
  const added = fresh.filter((l) => {
    const k = lineKey(l);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
  return added.length ? [...old, ...added].slice(-max) : old;
}
