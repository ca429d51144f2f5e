// Unit tests of the UI's pure logic with node's own test runner: unit/entry.ts is built for
// node by Vite (an SSR build: TypeScript and JSX compiled, packages left to node_modules) into
// ui/.unit/, then `node --test unit/*.test.mjs` runs against it. `npm run test:unit`.
import { build } from 'vite';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const ui = dirname(dirname(fileURLToPath(import.meta.url)));
await build({
  root: ui,
  configFile: false,
  logLevel: 'warn',
  build: { ssr: join(ui, 'unit/entry.ts'), outDir: join(ui, '.unit'), emptyOutDir: true, target: 'node18' },
});
const tests = readdirSync(join(ui, 'unit'))
  .filter((f) => f.endsWith('.test.mjs'))
  .sort()
  .map((f) => join(ui, 'unit', f));
const run = spawnSync(process.execPath, ['--test', ...tests], { stdio: 'inherit' });
process.exit(run.status ?? 1);
