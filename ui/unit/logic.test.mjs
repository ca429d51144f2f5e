// The UI's pure logic: the SSE parser (chunks cut anywhere), the schema error filter and paths,
// the diff folding, the log filters and de-duplication.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser, diffRows, displayPath, usefulErrors, appendNew, matches, EMPTY } from '../.unit/entry.js';

const STREAM =
  ': keepalive\n\n' +
  'event: stats\ndata: {"ts":1,"total":{"rps":2.5}}\n\n' +
  'event: log\r\ndata: {"lines":[{"ts":"t","request_id":"a"}]}\r\n\r\n' +
  'data: plain\n\n' +
  'event: config\ndata:{"config_hash":"abc"}\n\n';

test('SSE: events, comments, CRLF, the default name and a data line without a space', () => {
  const got = new SseParser().push(STREAM);
  assert.deepEqual(
    got.map((e) => e.event),
    ['stats', 'log', 'message', 'config'],
  );
  assert.equal(JSON.parse(got[0].data).total.rps, 2.5);
  assert.equal(JSON.parse(got[3].data).config_hash, 'abc');
});

test('SSE: the same events whatever the chunk boundaries', () => {
  const whole = new SseParser().push(STREAM);
  for (let size = 1; size <= 17; size++) {
    const p = new SseParser();
    const got = [];
    for (let i = 0; i < STREAM.length; i += size) got.push(...p.push(STREAM.slice(i, i + size)));
    assert.deepEqual(got, whole, `chunks of ${size}`);
  }
});

test('SSE: an unfinished event waits for its blank line', () => {
  const p = new SseParser();
  assert.deepEqual(p.push('event: stats\ndata: {"ts":1}\n'), []);
  assert.equal(p.push('\n').length, 1);
});

test('schema errors: wrappers dropped, an unknown field kept, a null branch dropped', () => {
  const errors = [
    { keyword: 'properties', instanceLocation: '#', error: 'Property "routes" does not match schema.' },
    { keyword: 'items', instanceLocation: '#/routes', error: 'Items did not match schema.' },
    { keyword: '$ref', instanceLocation: '#/routes/0', error: 'A subschema had errors.' },
    { keyword: 'additionalProperties', instanceLocation: '#/routes/0', error: 'Property "upstrem" does not match additional properties schema.' },
    { keyword: 'false', instanceLocation: '#/routes/0/upstrem', error: 'False boolean schema.' },
    { keyword: 'anyOf', instanceLocation: '#/admin', error: 'Value does not match any of the subschemas.' },
    { keyword: 'type', instanceLocation: '#/admin/ui', error: 'Instance type "string" is invalid. Expected "boolean", "null".' },
    { keyword: 'type', instanceLocation: '#/admin', error: 'Instance type "object" is invalid. Expected "null".' },
  ];
  const kept = usefulErrors(errors).map((e) => `${e.keyword} ${e.instanceLocation}`);
  assert.deepEqual(kept, ['false #/routes/0/upstrem', 'type #/admin/ui']);
});

test('paths in the gateway style', () => {
  assert.equal(displayPath(['routes', '3', 'upstream']), 'routes[3].upstream');
  assert.equal(displayPath(['upstreams', 'a', 'servers', '0']), 'upstreams.a.servers[0]');
  assert.equal(displayPath([]), '(root)');
});

test('diff: changes with three lines of context, the rest folded', () => {
  const a = Array.from({ length: 20 }, (_, i) => `line ${i}`).join('\n') + '\n';
  const b = a.replace('line 10\n', 'line ten\n');
  const rows = diffRows(a, b);
  assert.deepEqual(
    rows.filter((r) => r.kind === 'del' || r.kind === 'add').map((r) => `${r.kind} ${r.text}`),
    ['del line 10', 'add line ten'],
  );
  assert.deepEqual(rows.filter((r) => r.kind === 'fold').map((r) => r.text), ['… 7 unchanged lines', '… 6 unchanged lines']);
  assert.deepEqual(diffRows(a, a).filter((r) => r.kind !== 'same' && r.kind !== 'fold'), []);
});

test('log filters as the gateway applies them', () => {
  const line = { ts: 't', level: 'info', kind: 'access', status: 503, route: 'api', client: '10.0.0.1', request_id: 'r1' };
  assert.ok(matches(line, EMPTY));
  assert.ok(matches(line, { ...EMPTY, status: '5xx' }));
  assert.ok(matches(line, { ...EMPTY, status: '503', route: 'api', client: '10.0.0.1', request_id: 'r1' }));
  assert.ok(!matches(line, { ...EMPTY, status: '4xx' }));
  assert.ok(!matches(line, { ...EMPTY, status: '500' }));
  assert.ok(!matches({ ...line, status: undefined }, { ...EMPTY, status: '5xx' }));
  assert.ok(!matches(line, { ...EMPTY, route: 'other' }));
});

test('log lines: a line a live batch repeats appears once; the newest are kept', () => {
  const l = (id) => ({ ts: `t${id}`, level: 'info', kind: 'access', request_id: `r${id}`, status: 200 });
  const first = [l(1), l(2)];
  assert.deepEqual(appendNew(first, [l(2), l(3)], 10), [l(1), l(2), l(3)]);
  assert.equal(appendNew(first, [l(1)], 10), first);
  assert.deepEqual(appendNew(first, [l(3), l(4)], 3), [l(2), l(3), l(4)]);
});
