// A line diff of two texts (jsdiff), unchanged runs folded to three lines of context.

import { diffLines } from 'diff';

interface Row {
  kind: 'add' | 'del' | 'same' | 'fold';
  text: string;
}

export function diffRows(a: string, b: string, context = 3): Row[] {
  const rows: Row[] = [];
  const parts = diffLines(a, b);
  parts.forEach((part, i) => {
    const lines = part.value.replace(/\n$/, '').split('\n');
    if (part.added || part.removed) {
      for (const l of lines) rows.push({ kind: part.added ? 'add' : 'del', text: l });
      return;
    }
    const head = i === 0 ? 0 : context;
    const tail = i === parts.length - 1 ? 0 : context;
    if (lines.length <= head + tail + 1) {
      for (const l of lines) rows.push({ kind: 'same', text: l });
      return;
    }
    for (const l of lines.slice(0, head)) rows.push({ kind: 'same', text: l });
    rows.push({ kind: 'fold', text: `… ${lines.length - head - tail} unchanged lines` });
    for (const l of lines.slice(lines.length - tail)) rows.push({ kind: 'same', text: l });
  });
  return rows;
}

export function DiffView({ a, b, label, testId }: { a: string; b: string; label: string; testId: string }) {
  const rows = diffRows(a, b);
  const changed = rows.filter((r) => r.kind === 'add' || r.kind === 'del').length;
  if (changed === 0) return <p data-testid={testId}>No difference.</p>;
  return (
    <pre className="diff" aria-label={label} data-testid={testId} tabIndex={0}>
      {rows.map((r, i) => (
        <span key={i} className={`d-${r.kind}`}>
          {r.kind === 'add' ? '+ ' : r.kind === 'del' ? '- ' : '  '}
          {r.text}
          {'\n'}
        </span>
      ))}
    </pre>
  );
}
