// A uPlot line chart of the last 15 minutes, and a tiny SVG sparkline for table rows.

import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import type { Point } from './types';

export interface Line {
  label: string;
  value: (p: Point) => number | null;
  className: string;
  color: string;
}

export function Chart({ title, points, lines, unit }: { title: string; points: Point[]; lines: Line[]; unit: string }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const data = (): uPlot.AlignedData => [
    points.map((p) => p.ts / 1000),
    ...lines.map((l) => points.map((p) => l.value(p))),
  ];
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const width = Math.max(240, el.clientWidth || 400);
    plot.current = new uPlot(
      {
        width,
        height: 160,
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        axes: [{}, { size: 72, values: (_u, vals) => vals.map((v) => `${v}${unit}`) }],
        series: [{}, ...lines.map((l) => ({ label: l.label, stroke: l.color, width: 1.5, spanGaps: true }))],
      },
      data(),
      el,
    );
    const resize = new ResizeObserver(() => {
      if (plot.current && el.clientWidth > 0) plot.current.setSize({ width: el.clientWidth, height: 160 });
    });
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
    // Created once; the effect below feeds it new data.
  }, []);
  // New data only when a stats event brought a point (not on every render of the page);
  // `lines` is the same for the chart's life.
  useEffect(() => {
    plot.current?.setData(data());
  }, [points]);
  const last = points[points.length - 1];
  return (
    <figure className="chart">
      <figcaption>{title}</figcaption>
      <div ref={box} className="plot" aria-hidden="true" />
      <p className="sr-only">
        {last ? lines.map((l) => `${l.label}: ${l.value(last) ?? 'no data'}${unit}`).join(', ') : 'No data yet'}
      </p>
    </figure>
  );
}

export function Sparkline({ points, value, label }: { points: Point[]; value: (p: Point) => number | null; label: string }) {
  const w = 120;
  const h = 24;
  const vals = points.slice(-120).map((p) => value(p) ?? 0);
  if (vals.length < 2) return <svg width={w} height={h} role="img" aria-label={`${label}: no history yet`} />;
  const max = Math.max(...vals, 1e-9);
  const pts = vals.map((v, i) => `${((i / (vals.length - 1)) * w).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
  return (
    <svg width={w} height={h} role="img" aria-label={`${label}, last ${vals.length} s, peak ${max.toFixed(2)}`}>
      <polyline points={pts.join(' ')} fill="none" stroke="currentColor" strokeWidth="1.5" />
    </svg>
  );
}
