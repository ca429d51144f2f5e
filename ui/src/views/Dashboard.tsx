// Live numbers and 15-minute charts from the event stream (seeded by /_kairos/stats/history),
// then per-route and per-upstream tables with sparklines.

import { useEffect } from 'react';
import { useLive } from '../context';
import { Chart, Sparkline } from '../Chart';
import { fmtMs, fmtPct, fmtRps, fmtTime } from '../format';
import type { Point, Series } from '../types';

const rps = (p: Point) => p.rps;

export function Dashboard() {
  const live = useLive();
  const t = live.latest?.total;
  const first = live.latest !== null;
  useEffect(() => {
    if (first && performance.getEntriesByName('kairos:dashboard-live').length === 0) performance.mark('kairos:dashboard-live');
  }, [first]);
  return (
    <>
      <section aria-labelledby="now-h">
        <h2 id="now-h">Now{live.latest ? <small> (at {fmtTime(live.latest.ts)})</small> : null}</h2>
        <dl className="tiles">
          <Tile label="Requests/s" id="total-rps" value={fmtRps(t?.rps)} />
          <Tile label="Error rate (5xx)" id="total-error-rate" value={fmtPct(t?.error_rate)} />
          <Tile label="p50 latency" id="total-p50" value={fmtMs(t?.p50_ms)} />
          <Tile label="p99 latency" id="total-p99" value={fmtMs(t?.p99_ms)} />
          <Tile label="Active requests" id="total-active" value={t ? String(t.active) : '–'} />
          {t?.connections !== undefined && <Tile label="Open connections" id="total-connections" value={String(t.connections)} />}
        </dl>
        <p className="hint" data-testid="events-received">
          {live.received} events received
        </p>
      </section>
      <section aria-labelledby="charts-h" className="charts">
        <h2 id="charts-h">Last 15 minutes</h2>
        <Chart title="Requests/s" unit="" points={live.total} lines={[{ label: 'req/s', value: rps, className: 'a', color: '#2563eb' }]} />
        <Chart
          title="Error rate"
          unit="%"
          points={live.total}
          lines={[{ label: '5xx', value: (p) => +(p.error_rate * 100).toFixed(2), className: 'b', color: '#dc2626' }]}
        />
        <Chart
          title="Latency"
          unit=" ms"
          points={live.total}
          lines={[
            { label: 'p50', value: (p) => p.p50_ms, className: 'a', color: '#16a34a' },
            { label: 'p99', value: (p) => p.p99_ms, className: 'b', color: '#9333ea' },
          ]}
        />
      </section>
      <SeriesTable title="Routes" id="routes" latest={live.latest?.routes ?? {}} history={live.routes} />
      <SeriesTable title="Upstreams" id="upstreams" latest={live.latest?.upstreams ?? {}} history={live.upstreams} />
    </>
  );
}

function Tile({ label, value, id }: { label: string; value: string; id: string }) {
  return (
    <div className="tile">
      <dt>{label}</dt>
      <dd data-testid={id}>{value}</dd>
    </div>
  );
}

function SeriesTable({
  title,
  id,
  latest,
  history,
}: {
  title: string;
  id: string;
  latest: Record<string, Series>;
  history: Record<string, Point[]>;
}) {
  const names = Array.from(new Set([...Object.keys(history), ...Object.keys(latest)])).sort();
  return (
    <section aria-labelledby={`${id}-h`}>
      <h2 id={`${id}-h`}>{title}</h2>
      {names.length === 0 ? (
        <p>No traffic yet.</p>
      ) : (
        <div className="scroll">
          <table data-testid={`dash-${id}`}>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Req/s</th>
                <th scope="col">Errors</th>
                <th scope="col">p50</th>
                <th scope="col">p99</th>
                <th scope="col">Active</th>
                <th scope="col">Req/s, last 2 min</th>
              </tr>
            </thead>
            <tbody>
              {names.map((n) => {
                const s = latest[n];
                return (
                  <tr key={n} data-name={n}>
                    <th scope="row">{n}</th>
                    <td className="num">{fmtRps(s?.rps)}</td>
                    <td className="num">{fmtPct(s?.error_rate)}</td>
                    <td className="num">{fmtMs(s?.p50_ms)}</td>
                    <td className="num">{fmtMs(s?.p99_ms)}</td>
                    <td className="num">{s ? s.active : '–'}</td>
                    <td>
                      <Sparkline points={history[n] ?? []} value={rps} label={`${n} requests per second`} />
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
