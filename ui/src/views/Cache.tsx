// The response cache: size, entries, per-route hit ratios; purge all, a route or a path prefix.

import { useState, type FormEvent } from 'react';
import { describe } from '../api';
import { useSession } from '../context';
import { fmtBytes, fmtPct } from '../format';
import type { CacheStats } from '../types';
import { useApiGet } from '../useApi';

export function CacheView() {
  const { api } = useSession();
  const { data, error, status, reload } = useApiGet<CacheStats>('/_kairos/cache');
  const [prefix, setPrefix] = useState('');
  const [message, setMessage] = useState<{ ok: boolean; text: string } | null>(null);
  const purge = async (body: Record<string, unknown>, what: string) => {
    try {
      const { data: r } = await api.request<{ purged: number }>('DELETE', '/_kairos/cache', { body });
      setMessage({ ok: true, text: `Purged ${r.purged} stored answers (${what}).` });
      reload();
    } catch (e) {
      setMessage({ ok: false, text: describe(e) });
    }
  };
  if (status === 404) return <p>The response cache is not configured (no <code>caching</code> section in the config).</p>;
  return (
    <>
      {error && <p className="error" role="alert">{error}</p>}
      {data && (
        <>
          <dl className="tiles">
            <div className="tile">
              <dt>Backend</dt>
              <dd>{data.backend}</dd>
            </div>
            <div className="tile">
              <dt>Entries</dt>
              <dd data-testid="cache-entries">{data.entries}</dd>
            </div>
            <div className="tile">
              <dt>Memory</dt>
              <dd>
                {fmtBytes(data.bytes)} of {fmtBytes(data.max_size)}
              </dd>
            </div>
          </dl>
          <div className="scroll">
            <table>
              <thead>
                <tr>
                  <th scope="col">Route</th>
                  <th scope="col">Entries</th>
                  <th scope="col">Bytes</th>
                  <th scope="col">Hit ratio</th>
                  <th scope="col">
                    <span className="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {data.routes.map((r) => (
                  <tr key={r.route}>
                    <th scope="row">{r.route}</th>
                    <td className="num">{r.entries}</td>
                    <td className="num">{fmtBytes(r.bytes)}</td>
                    <td className="num">
                      {fmtPct(r.hit_ratio)} <small>({r.hits} of {r.lookups})</small>
                    </td>
                    <td>
                      <button type="button" onClick={() => purge({ route: r.route }, `route ${r.route}`)} aria-label={`Purge route ${r.route}`}>
                        Purge
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <form
            className="filters"
            onSubmit={(e: FormEvent) => {
              e.preventDefault();
              if (prefix.trim()) void purge({ prefix: prefix.trim() }, `prefix ${prefix.trim()}`);
            }}
          >
            <label>
              Path prefix <input value={prefix} onChange={(e) => setPrefix(e.target.value)} placeholder="/api/users/" />
            </label>
            <button type="submit">Purge prefix</button>
            <button type="button" onClick={() => window.confirm('Purge every stored answer?') && purge({ all: true }, 'all')}>
              Purge all
            </button>
          </form>
        </>
      )}
      <div role="status" aria-live="polite">
        {message && <p className={message.ok ? 'ok' : 'error'}>{message.text}</p>}
      </div>
    </>
  );
}
