// Every upstream's servers with health, circuit, ejection, in-flight, latency and source;
// filters; the live transitions from `upstream` events (each one also refreshes the table).

import { useEffect, useState } from 'react';
import { useLive } from '../context';
import { fmtMs, fmtTime } from '../format';
import type { Upstream } from '../types';
import { useApiGet } from '../useApi';

export function UpstreamsView() {
  const { data, error, reload } = useApiGet<{ upstreams: Upstream[] }>('/_kairos/upstreams');
  const live = useLive();
  const transitions = live.transitions;
  useEffect(() => {
    const t = setTimeout(reload, 200);
    return () => clearTimeout(t);
  }, [transitions.length, live.configHash, reload]);
  const [text, setText] = useState('');
  const [health, setHealth] = useState('');
  const [circuit, setCircuit] = useState('');
  const [source, setSource] = useState('');
  const ups = data?.upstreams ?? [];
  const rows = ups.flatMap((u) => u.servers.map((s) => ({ u, s })));
  const values = (f: (r: (typeof rows)[number]) => string) => Array.from(new Set(rows.map(f))).sort();
  const q = text.trim().toLowerCase();
  const shown = rows.filter(
    ({ u, s }) =>
      (!q || u.name.toLowerCase().includes(q) || s.url.toLowerCase().includes(q)) &&
      (!health || s.health === health) &&
      (!circuit || s.circuit === circuit) &&
      (!source || s.source === source),
  );
  const select = (label: string, value: string, set: (v: string) => void, options: string[]) => (
    <label>
      {label}
      <select value={value} onChange={(e) => set(e.target.value)}>
        <option value="">any</option>
        {options.map((o) => (
          <option key={o}>{o}</option>
        ))}
      </select>
    </label>
  );
  return (
    <>
      {error && <p className="error" role="alert">{error}</p>}
      <form className="filters" role="search" aria-label="Filter servers" onSubmit={(e) => e.preventDefault()}>
        <label>
          Search <input type="search" value={text} onChange={(e) => setText(e.target.value)} />
        </label>
        {select('Health', health, setHealth, values((r) => r.s.health))}
        {select('Circuit', circuit, setCircuit, values((r) => r.s.circuit))}
        {select('Source', source, setSource, values((r) => r.s.source))}
        <button type="button" onClick={reload}>
          Refresh
        </button>
      </form>
      <p className="hint" aria-live="polite">
        {shown.length} of {rows.length} servers in {ups.length} upstreams
      </p>
      <div className="scroll">
        <table data-testid="upstreams-table">
          <thead>
            <tr>
              <th scope="col">Upstream</th>
              <th scope="col">Server</th>
              <th scope="col">Source</th>
              <th scope="col">Health</th>
              <th scope="col">Circuit</th>
              <th scope="col">Ejected</th>
              <th scope="col">In flight</th>
              <th scope="col">Latency (EWMA)</th>
              <th scope="col">Last check</th>
              <th scope="col">Weight</th>
            </tr>
          </thead>
          <tbody>
            {shown.map(({ u, s }) => (
              <tr key={`${u.name} ${s.url}`} className={s.available ? '' : 'down'}>
                <th scope="row">
                  {u.name}
                  {u.discovery && <small> ({u.discovery})</small>}
                </th>
                <td>
                  <code>{s.url}</code>
                </td>
                <td>{s.source}</td>
                <td>
                  <span className={`state state-${s.health}`}>{s.health}</span>
                </td>
                <td>
                  <span className={`state state-${s.circuit}`}>{s.circuit}</span>
                </td>
                <td>{s.ejected ? `yes, ${Math.ceil(s.ejected_for_ms / 1000)} s` : 'no'}</td>
                <td className="num">{s.inflight}</td>
                <td className="num">{fmtMs(s.latency_ewma_ms)}</td>
                <td>
                  {s.last_check ? `${fmtTime(s.last_check)} ${s.last_check_ok ? 'ok' : 'failed'}` : '–'}
                </td>
                <td className="num">{s.weight}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <section aria-labelledby="transitions-h">
        <h2 id="transitions-h">Transitions (live)</h2>
        {transitions.length === 0 ? (
          <p>None since this page opened.</p>
        ) : (
          <ol className="transitions" reversed data-testid="transitions">
            {[...transitions].reverse().map((t, i) => (
              <li key={`${t.ts}-${i}`}>
                <time>{fmtTime(t.ts)}</time> {t.upstream} <code>{t.server}</code>{' '}
                <span className={`state state-${t.event}`}>{t.event}</span>
                {t.detail && <> ({t.detail})</>}
              </li>
            ))}
          </ol>
        )}
      </section>
    </>
  );
}
