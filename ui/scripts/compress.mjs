// Post-build step: writes a .gz and a .br sibling of every text file in dist/ (the gateway sends
// one when Accept-Encoding allows it) and prints the JavaScript budget: all JS gzipped must stay
// <= 250 KB (the build fails past it). Deterministic: gzip with mtime 0, brotli at a fixed quality,
// files visited in sorted order, so the same dist/ gives byte-identical siblings.
// gzip is pako's (zlib ported to JavaScript), not node:zlib: node's own deflate output depends on
// the zlib it was built with (NodeSource's node bundles Chromium's zlib, Debian's links the
// system's zlib 1.2.13), so the committed .gz files would differ from one Node build to another.
import { readdirSync, readFileSync, writeFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { brotliCompressSync, constants } from 'node:zlib';
import { gzip } from 'pako';

const DIST = new URL('../dist/', import.meta.url).pathname;
const TEXT = /\.(js|mjs|css|html|svg|json|txt|map)$/;
const JS_BUDGET_GZ = 250 * 1024;

function walk(dir) {
  return readdirSync(dir)
    .sort()
    .flatMap((name) => {
      const path = join(dir, name);
      return statSync(path).isDirectory() ? walk(path) : [path];
    });
}

let jsGz = 0;
const rows = [];
for (const path of walk(DIST)) {
  if (!TEXT.test(path)) continue;
  const raw = readFileSync(path);
  const gz = Buffer.from(gzip(raw, { level: 9 }));
  const br = brotliCompressSync(raw, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: 11,
      [constants.BROTLI_PARAM_SIZE_HINT]: raw.length,
    },
  });
  writeFileSync(`${path}.gz`, gz);
  writeFileSync(`${path}.br`, br);
  if (path.endsWith('.js')) jsGz += gz.length;
  rows.push([relative(DIST, path), raw.length, gz.length, br.length]);
}

const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
for (const [name, raw, gz, br] of rows) {
  console.log(`${name.padEnd(40)} ${kb(raw).padStart(10)}  gz ${kb(gz).padStart(9)}  br ${kb(br).padStart(9)}`);
}
console.log(`JavaScript total gzipped: ${kb(jsGz)} (budget ${kb(JS_BUDGET_GZ)})`);
if (jsGz > JS_BUDGET_GZ) {
  console.error('error: the UI JavaScript is over its 250 KB gzipped budget');
  process.exit(1);
}
