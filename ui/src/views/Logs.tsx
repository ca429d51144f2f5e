// The recent log lines (GET /_kairos/logs with the filters) followed live by `log` events that
// match the same filters. Clicking a request id shows all of that request's lines.

import { useEffect, useMemo, useState } from 'react';
import { hashParams } from '../hash';
import { describe } from '../api';
import { useSession } from '../context';
import { fmtMs } from '../format';
import type { LogLine } from '../types';
import { EMPTY, appendNew as append, lineKey, matches, type Filters } from '../logfilter';

const SHOWN = 500;
const appendNew = (old: LogLine[], fresh: LogLine[]) => append(old, fresh, SHOWN);

export function LogsView() {
  const { api, feed } = useSession();
  const [draft, setDraft] = useState<Filters>(() => ({ ...EMPTY, request_id: hashParams().get('request_id') ?? '' }));
  const [filters, setFilters] = useState<Filters>(draft);
  const [lines, setLines] = useState<LogLine[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [paused, setPaused] = useState(false);

  useEffect(() => {
    const abort = new AbortController();
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v.trim()) q.set(k, v.trim());
    q.set('limit', String(SHOWN));
    setLines([]);
    api
      .get<{ lines: LogLine[] }>(`/_kairos/logs?${q}`, abort.signal)
      .then((r) => {
        // Lines that came live while the read was on its way are newer: kept after it.
        setLines((live) => appendNew(appendNew([], r.data.lines ?? []), live));
        setError(null);
      })
      .catch((e) => !abort.signal.aborted && setError(describe(e)));
    return () => abort.abort();
  }, [api, filters]);

  useEffect(() => {
    if (paused) return;
    return feed.onLog((batch) => {
      const fresh = batch.filter((l) => matches(l, filters));
      if (fresh.length) setLines((old) => appendNew(old, fresh));
    });
  }, [feed, filters, paused]);

  const apply = (f: Filters) => {
    setDraft(f);
    setFilters(f);
  };
  const field = (name: keyof Filters, label: string, placeholder: string) => (
    <label>
      {label}
      <input value={draft[name]} placeholder={placeholder} onChange={(e) => setDraft({ ...draft, [name]: e.target.value })} />
    </label>
  );
  const newestFirst = useMemo(() => [...lines].reverse(), [lines]);
  return (
    <>
      <form
        className="filters"
        role="search"
        aria-label="Filter log lines"
        onSubmit={(e) => {
          e.preventDefault();
          apply(draft);
        }}
      >
        {field('route', 'Route', 'any')}
        {field('status', 'Status', '5xx, 404…')}
        {field('client', 'Client', 'IP')}
        {field('request_id', 'Request id', 'any')}
        <button type="submit">Filter</button>
        <button type="button" onClick={() => apply(EMPTY)}>
          Clear
        </button>
        <label className="check">
          <input type="checkbox" checked={paused} onChange={(e) => setPaused(e.target.checked)} /> Pause live lines
        </label>
      </form>
      {error && <p className="error" role="alert">{error}</p>}
      {filters.request_id && (
        <p data-testid="request-filter">
          All lines of request <code>{filters.request_id}</code>:
        </p>
      )}
      <p className="hint">{lines.length} lines, newest first</p>
      <div className="scroll">
        <table className="logs" data-testid="logs-table">
          <thead>
            <tr>
              <th scope="col">Time</th>
              <th scope="col">Level</th>
              <th scope="col">Request</th>
              <th scope="col">Status</th>
              <th scope="col">Latency</th>
              <th scope="col">Route</th>
              <th scope="col">Upstream</th>
              <th scope="col">Client</th>
              <th scope="col">Identity</th>
              <th scope="col">Request id</th>
            </tr>
          </thead>
          <tbody>
            {newestFirst.map((l) => (
              // A key that stays with its line as new lines come in above it (a click on a row
              // must reach the row it was aimed at).
              <tr key={lineKey(l)} className={`lvl-${l.level} ${l.status && l.status >= 500 ? 'err' : ''}`}>
                <td>
                  <time dateTime={l.ts}>{l.ts.replace(/^.*T/, '').replace(/Z$/, '')}</time>
                </td>
                <td>{l.level}</td>
                <td>
                  {l.kind === 'event' ? (
                    l.message
                  ) : (
                    <>
                      {l.method} <code>{l.path}</code>
                    </>
                  )}
                </td>
                <td className="num">{l.status ?? ''}</td>
                <td className="num">{l.latency_ms !== undefined ? fmtMs(l.latency_ms) : ''}</td>
                <td>{l.route ?? ''}</td>
                <td>{l.upstream ?? ''}</td>
                <td>{l.client ?? ''}</td>
                <td>{l.identity ?? ''}</td>
                <td>
                  {l.request_id && (
                    <button
                      type="button"
                      className="link"
                      title="Show all lines of this request"
                      onClick={() => apply({ ...EMPTY, request_id: l.request_id ?? '' })}
                    >
                      {l.request_id}
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}
