// Number formatting shared by the views.
export const fmtRps = (v: number | null | undefined) => (v == null ? '–' : v < 10 ? v.toFixed(2) : v.toFixed(1));
export const fmtPct = (v: number | null | undefined) => (v == null ? '–' : `${(v * 100).toFixed(v < 0.1 ? 2 : 1)} %`);
export const fmtMs = (v: number | null | undefined) => (v == null ? '–' : v < 10 ? `${v.toFixed(2)} ms` : `${v.toFixed(0)} ms`);
export const fmtBytes = (v: number) =>
  v < 1024 ? `${v} B` : v < 1 << 20 ? `${(v / 1024).toFixed(1)} KB` : `${(v / (1 << 20)).toFixed(1)} MB`;
export const fmtTime = (ts: number | string) => {
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? String(ts) : d.toLocaleTimeString(undefined, { hour12: false });
};
