// Tenants with their quotas and this month's usage (GET /_kairos/tenants/{id}/usage).

import { useEffect, useState } from 'react';
import { describe } from '../api';
import { useSession } from '../context';
import type { Tenant, Usage } from '../types';
import { useApiGet } from '../useApi';

export function TenantsView() {
  const { api } = useSession();
  const { data, error } = useApiGet<{ tenants: Tenant[] }>('/_kairos/tenants');
  const [usage, setUsage] = useState<Record<string, Usage | string>>({});
  const tenants = data?.tenants ?? [];
  useEffect(() => {
    const abort = new AbortController();
    for (const t of tenants) {
      api
        .get<Usage>(`/_kairos/tenants/${encodeURIComponent(t.id)}/usage`, abort.signal)
        .then((r) => setUsage((u) => ({ ...u, [t.id]: r.data })))
        .catch((e) => !abort.signal.aborted && setUsage((u) => ({ ...u, [t.id]: describe(e) })));
    }
    return () => abort.abort();
  }, [api, data]); // tenants derives from data
  const today = new Date().toISOString().slice(0, 10);
  return (
    <>
      {error && <p className="error" role="alert">{error}</p>}
      {!error && tenants.length === 0 && <p>No tenants configured (see <code>tenants</code> in the config).</p>}
      {tenants.length > 0 && (
        <div className="scroll">
          <table data-testid="tenants-table">
            <thead>
              <tr>
                <th scope="col">Tenant</th>
                <th scope="col">Hosts</th>
                <th scope="col">Keys</th>
                <th scope="col">Routes</th>
                <th scope="col">Rate limit</th>
                <th scope="col">Today</th>
                <th scope="col">This month</th>
              </tr>
            </thead>
            <tbody>
              {tenants.map((t) => {
                const u = usage[t.id];
                const days = typeof u === 'object' ? u.days : [];
                const day = days.find((d) => d.date === today);
                const month = days.filter((d) => d.date.slice(0, 7) === today.slice(0, 7));
                const monthTotal = month.reduce((a, d) => a + d.requests, 0);
                const refused = month.reduce((a, d) => a + d.refused, 0);
                return (
                  <tr key={t.id}>
                    <th scope="row">{t.id}</th>
                    <td>{t.hosts.join(', ') || '–'}</td>
                    <td>{t.api_keys.join(', ') || '–'}</td>
                    <td>{t.routes.join(', ') || '–'}</td>
                    <td>{t.rate_limits ? `${t.rate_limits.rps}/s, burst ${t.rate_limits.burst}` : '–'}</td>
                    <td>
                      {typeof u === 'string' ? u : <Quota used={day?.requests ?? 0} limit={t.quotas?.daily_requests ?? null} label={`${t.id} today`} />}
                    </td>
                    <td>
                      {typeof u === 'string' ? (
                        ''
                      ) : (
                        <>
                          <Quota used={monthTotal} limit={t.quotas?.monthly_requests ?? null} label={`${t.id} this month`} />
                          {refused > 0 && <small> ({refused} refused)</small>}
                        </>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}

function Quota({ used, limit, label }: { used: number; limit: number | null; label: string }) {
  if (!limit) return <>{used} (no quota)</>;
  return (
    <>
      <meter min={0} max={limit} value={Math.min(used, limit)} high={limit * 0.8} aria-label={`${label}: ${used} of ${limit}`} /> {used} /{' '}
      {limit}
    </>
  );
}
