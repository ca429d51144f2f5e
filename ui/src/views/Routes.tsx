// The routes in effect with their live numbers; filters by text, upstream and tenant.

import { useEffect, useState } from 'react';
import { useLive } from '../context';
import { fmtMs, fmtPct, fmtRps } from '../format';
import type { Route } from '../types';
import { useApiGet } from '../useApi';

export function RoutesView() {
  const { data, error, reload } = useApiGet<Route[]>('/_kairos/routes');
  const live = useLive();
  // A config reload (from this UI or elsewhere) changes the routes: read them again.
  useEffect(() => {
    if (live.configHash) reload();
  }, [live.configHash, reload]);
  const [text, setText] = useState('');
  const [upstream, setUpstream] = useState('');
  const routes = data ?? [];
  const upstreams = Array.from(new Set(routes.map((r) => r.upstream))).sort();
  const q = text.trim().toLowerCase();
  const shown = routes.filter(
    (r) =>
      (!upstream || r.upstream === upstream) &&
      (!q || [r.name, r.path, r.host ?? '', r.methods, r.tenant ?? ''].some((f) => f.toLowerCase().includes(q))),
  );
  return (
    <>
      {error && <p className="error" role="alert">{error}</p>}
      <form className="filters" role="search" aria-label="Filter routes" onSubmit={(e) => e.preventDefault()}>
        <label>
          Search <input type="search" value={text} onChange={(e) => setText(e.target.value)} />
        </label>
        <label>
          Upstream
          <select value={upstream} onChange={(e) => setUpstream(e.target.value)}>
            <option value="">any</option>
            {upstreams.map((u) => (
              <option key={u}>{u}</option>
            ))}
          </select>
        </label>
        <button type="button" onClick={reload}>
          Refresh
        </button>
      </form>
      <p className="hint" aria-live="polite">
        {shown.length} of {routes.length} routes
      </p>
      <div className="scroll">
        <table data-testid="routes-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Methods</th>
              <th scope="col">Host</th>
              <th scope="col">Path</th>
              <th scope="col">Upstream</th>
              <th scope="col">Tenant</th>
              <th scope="col">Timeout</th>
              <th scope="col">Req/s</th>
              <th scope="col">Errors</th>
              <th scope="col">p99</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((r) => {
              const s = live.latest?.routes[r.name];
              return (
                <tr key={r.name} data-name={r.name}>
                  <th scope="row">{r.name}</th>
                  <td>{r.methods}</td>
                  <td>{r.host ?? 'any'}</td>
                  <td>
                    <code>{r.path}</code>
                    {r.rewrite && (
                      <>
                        {' → '}
                        <code>{r.rewrite}</code>
                      </>
                    )}
                  </td>
                  <td>{r.upstream}</td>
                  <td>{r.tenant ?? '–'}</td>
                  <td>{r.timeout}</td>
                  <td className="num">{fmtRps(s?.rps)}</td>
                  <td className="num">{fmtPct(s?.error_rate)}</td>
                  <td className="num">{fmtMs(s?.p99_ms)}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
    </>
  );
}
