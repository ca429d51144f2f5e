// The admin UI in a real browser: Debian's Chromium, headless, driven by playwright-core, against
// a real gateway (started by tests/admin_ui.rs with a real upstream and a load running). Plain
// node, no test runner: each check throws on failure and the script exits non-zero.
//
// Environment (set by tests/admin_ui.rs):
//   KAIROS_URL             the gateway, e.g. http://127.0.0.1:41234
//   KAIROS_TOKEN           the admin token
//   KAIROS_UI_SCREENSHOTS     optional: a directory to write the README's PNGs into
//   CHROMIUM               optional: the browser (default /usr/bin/chromium)
//
// What it checks: login with a wrong then the right token (reached with Tab, sent with Enter),
// the token kept only in sessionStorage, the dashboard's numbers moving under load, keyboard
// navigation between views, routes and upstreams, a schema error shown at its line as you type
// and by the gateway's dry run, a valid edit reviewed as a diff, applied and visible in routes,
// a conflicting edit refused with the other change shown, the log viewer finding a request made
// during the test by its request id, key creation (the key then works on a real route), axe-core
// on every view (no serious or critical violation), no CSP violation, and logout.

import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const BASE = process.env.KAIROS_URL;
const TOKEN = process.env.KAIROS_TOKEN;
const SHOTS = process.env.KAIROS_UI_SCREENSHOTS || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!BASE || !TOKEN) {
  console.error('KAIROS_URL and KAIROS_TOKEN are required');
  process.exit(2);
}
const UI = `${BASE}/_kairos/admin/`;
const WAIT = 30_000;

let step = '';
/** The page, for the failure report. */
let current = null;
const log = (...a) => console.log('[admin-ui]', ...a);
function check(cond, message) {
  if (!cond) throw new Error(`${step}: ${message}`);
}

/** The admin API, called directly: "someone else" in the conflict test. */
async function admin(method, path, { body, ifMatch } = {}) {
  const headers = { Authorization: `Bearer ${TOKEN}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (ifMatch) headers['If-Match'] = ifMatch;
  const res = await fetch(`${BASE}${path}`, { method, headers, body });
  const text = await res.text();
  return { status: res.status, etag: res.headers.get('etag'), text, json: () => JSON.parse(text) };
}

async function axeCheck(page, view) {
  await page.evaluate(AXE);
  const result = await page.evaluate(async () => {
    // axe: the global the injected axe.min.js defines.
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  const minor = result.filter((v) => !bad.includes(v));
  if (minor.length) log(`axe ${view}: minor:`, JSON.stringify(minor));
  if (bad.length) throw new Error(`axe on ${view}: ${JSON.stringify(bad, null, 1)}`);
  log(`axe ${view}: no serious or critical violation`);
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: false });
  log(`screenshot ${name}.png`);
}

async function go(page, view) {
  await page.click(`nav a[href="#/${view}"]`);
  await page.waitForFunction((v) => location.hash === `#/${v}`, view);
}

/** Replaces the editor's whole text the way a paste does. */
async function setEditorText(page, text) {
  await page.click('.cm-content');
  await page.keyboard.press('Control+A');
  await page.keyboard.insertText(text);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  current = page;
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const t = m.text();
    // The refusals the test provokes (wrong token 401, schema 400, duplicate key 409, stale
    // 412, no such route 404) are logged by the browser as failed loads.
    if (/status of (401|409|412|400|404)/.test(t)) return;
    problems.push(`console error: ${t}`);
  });
  // Every CSP violation is recorded by the page itself (the script runs before the app's).
  await context.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
  });

  // ---- login ----------------------------------------------------------------------------------
  step = 'first view';
  const res = await page.goto(UI, { waitUntil: 'load' });
  check(res && res.status() === 200, `GET ${UI} answered ${res && res.status()}`);
  const csp = res.headers()['content-security-policy'] ?? '';
  check(csp.includes("script-src 'self'") && csp.includes("frame-ancestors 'none'"), `CSP header: ${csp}`);
  await page.waitForSelector('#token');
  const timing = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const ready = performance.getEntriesByName('kairos:login-ready')[0];
    return { domInteractive: nav?.domInteractive, loadEventEnd: nav?.loadEventEnd, loginReady: ready?.startTime };
  });
  log(`first view interactive: login form ready ${timing.loginReady?.toFixed(1)} ms after navigation start (DOM interactive ${timing.domInteractive?.toFixed(1)} ms, load ${timing.loadEventEnd?.toFixed(1)} ms)`);
  await axeCheck(page, 'login');
  await shot(page, 'login');

  step = 'keyboard to the login field';
  let reached = false;
  for (let i = 0; i < 6 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement?.id === 'token');
  }
  check(reached, 'Tab never reached the token field');

  step = 'wrong token';
  await page.keyboard.type('not-the-admin-token');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#login-error', { timeout: WAIT });
  const wrong = await page.textContent('#login-error');
  check(/wrong token/i.test(wrong) && /401/.test(wrong), `message: ${wrong}`);
  check(await page.evaluate(() => sessionStorage.length === 0), 'a wrong token was stored');
  log('wrong token refused:', wrong);

  step = 'right token';
  await page.fill('#token', '');
  await page.focus('#token');
  await page.keyboard.type(TOKEN);
  await page.keyboard.press('Enter');
  await page.waitForSelector('nav[aria-label="Main"]', { timeout: WAIT });
  const storage = await page.evaluate(() => ({
    session: Object.keys(sessionStorage),
    local: localStorage.length,
    cookie: document.cookie,
    url: location.href,
  }));
  check(storage.local === 0 && storage.cookie === '' && !storage.url.includes(TOKEN), `token leaked: ${JSON.stringify(storage)}`);
  check(storage.session.length === 1, `sessionStorage: ${storage.session}`);

  // ---- dashboard ------------------------------------------------------------------------------
  step = 'dashboard moving';
  await page.waitForFunction(() => parseFloat(document.querySelector('[data-testid="total-rps"]')?.textContent ?? '') > 0, null, {
    timeout: WAIT,
  });
  const live = await page.evaluate(() => performance.getEntriesByName('kairos:dashboard-live')[0]?.startTime);
  log(`dashboard: first live numbers ${live?.toFixed(0)} ms after navigation start (includes typing the token)`);
  const samples = [];
  const events = [];
  for (let i = 0; i < 6; i++) {
    samples.push(await page.textContent('[data-testid="total-rps"]'));
    events.push(parseInt((await page.textContent('[data-testid="events-received"]')) ?? '0', 10));
    await page.waitForTimeout(1000);
  }
  log('dashboard requests/s samples:', samples.join(', '), '; events received:', events.join(', '));
  check(samples.every((s) => parseFloat(s) > 0), `requests/s not all > 0: ${samples}`);
  check(new Set(samples).size > 1, `requests/s did not move: ${samples}`);
  check(events[events.length - 1] > events[0], `no new events: ${events}`);
  await page.waitForSelector('[data-testid="dash-routes"] tr[data-name="api"]', { timeout: WAIT });
  await page.waitForSelector('[data-testid="dash-upstreams"] tr[data-name="backend"]', { timeout: WAIT });
  check((await page.textContent('[data-testid="stream-status"]')).includes('live'), 'stream not live');
  await axeCheck(page, 'dashboard');
  await shot(page, 'dashboard');

  // ---- keyboard navigation --------------------------------------------------------------------
  step = 'keyboard navigation';
  await page.focus('nav a[href="#/dashboard"]');
  await page.keyboard.press('Tab');
  const focused = await page.evaluate(() => document.activeElement?.getAttribute('href'));
  check(focused === '#/routes', `Tab from Dashboard went to ${focused}`);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => location.hash === '#/routes');
  await page.waitForFunction(() => document.activeElement?.tagName === 'H1' && document.activeElement.textContent === 'Routes');
  log('keyboard: Tab + Enter opened Routes, focus on its heading');

  // ---- routes and upstreams -------------------------------------------------------------------
  step = 'routes';
  await page.waitForSelector('[data-testid="routes-table"] tr[data-name="api"]', { timeout: WAIT });
  await page.fill('input[type="search"]', 'secure');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="routes-table"] tbody tr').length === 1);
  await page.fill('input[type="search"]', '');
  await axeCheck(page, 'routes');
  await shot(page, 'routes');

  step = 'upstreams';
  await go(page, 'upstreams');
  await page.waitForSelector('[data-testid="upstreams-table"] tbody tr', { timeout: WAIT });
  const upRow = await page.textContent('[data-testid="upstreams-table"] tbody tr');
  check(upRow.includes('backend') && upRow.includes('static'), `upstream row: ${upRow}`);
  // The flapping server's health transitions arrive live as `upstream` events.
  await page.waitForFunction(
    () => {
      const items = Array.from(document.querySelectorAll('[data-testid="transitions"] li')).map((l) => l.textContent);
      return items.some((t) => t.includes('flaky') && t.includes('down')) && items.some((t) => t.includes('flaky') && t.includes('up'));
    },
    null,
    { timeout: WAIT },
  );
  await page.fill('input[type="search"]', 'flaky');
  await page.waitForFunction(() => {
    const rows = Array.from(document.querySelectorAll('[data-testid="upstreams-table"] tbody tr'));
    return rows.length === 1 && rows[0].textContent.includes('flaky');
  });
  log('upstreams: the flapping server\'s down and up transitions shown live; the search filter keeps its row only');
  await axeCheck(page, 'upstreams');
  await shot(page, 'upstreams');

  // ---- config editor: schema error at its line ------------------------------------------------
  step = 'config: schema error';
  await go(page, 'config');
  await page.waitForSelector('.cm-content', { timeout: WAIT });
  await page.waitForFunction(() => (document.querySelector('.editor')?.shadowRoot?.querySelectorAll('.cm-content .cm-line').length ?? 0) > 5);
  const running = await admin('GET', '/_kairos/config');
  check(running.status === 200, `GET config ${running.status}`);
  const cfg = running.json();
  const bad = structuredClone(cfg);
  bad.routes[0].upstrem = 'backend';
  const badText = `${JSON.stringify(bad, null, 2)}\n`;
  const badLine = badText.split('\n').findIndex((l) => l.includes('"upstrem"')) + 1;
  await setEditorText(page, badText);
  await page.waitForSelector(`[data-testid="problems"] li[data-source="schema"][data-line="${badLine}"]`, { timeout: WAIT });
  const schemaMsg = await page.textContent(`[data-testid="problems"] li[data-source="schema"][data-line="${badLine}"]`);
  check(/upstrem/.test(schemaMsg), `schema problem: ${schemaMsg}`);
  await page.waitForSelector('.cm-lintRange-error');
  log(`schema error shown as you type at line ${badLine}: ${schemaMsg}`);
  await page.click('text=Check on server');
  await page.waitForSelector('[data-testid="problems"] li[data-source="server"]', { timeout: WAIT });
  const serverLines = await page.$$eval('[data-testid="problems"] li[data-source="server"]', (els) =>
    els.map((e) => ({ line: Number(e.getAttribute('data-line')), text: e.textContent })),
  );
  log('gateway dry run:', JSON.stringify(serverLines));
  check(serverLines.some((p) => p.line === badLine && /upstrem/.test(p.text)), `no server error at line ${badLine}`);
  // "Line N" moves the editor's cursor to the error (and scrolls it into view).
  await page.click(`[data-testid="problems"] li[data-source="schema"][data-line="${badLine}"] button`);
  await page.waitForSelector('.cm-activeLine:has-text("upstrem")');
  await axeCheck(page, 'config (with errors)');
  await shot(page, 'config-errors');

  // ---- config editor: a valid edit, reviewed, applied, visible in routes ----------------------
  step = 'config: valid edit';
  const good = structuredClone(cfg);
  good.routes.push({ name: 'added-by-ui', path: '/ui-added', upstream: 'backend' });
  await setEditorText(page, `${JSON.stringify(good, null, 2)}\n`);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="problems"] li').length === 0, null, { timeout: WAIT });
  await page.click('text=Review changes');
  await page.waitForSelector('[data-testid="config-diff"]');
  const diff = await page.textContent('[data-testid="config-diff"]');
  check(/\+ .*added-by-ui/.test(diff), `diff: ${diff}`);
  await shot(page, 'config-diff');
  await page.click('button:text-is("Apply")');
  await page.waitForFunction(() => /Applied/.test(document.querySelector('[data-testid="config-outcome"]')?.textContent ?? ''), null, {
    timeout: WAIT,
  });
  const through = await fetch(`${BASE}/ui-added`);
  check(through.status === 200, `GET /ui-added through the gateway: ${through.status}`);
  await go(page, 'routes');
  await page.waitForSelector('[data-testid="routes-table"] tr[data-name="added-by-ui"]', { timeout: WAIT });
  log('valid edit applied; route added-by-ui in the routes view and answering');

  // ---- config editor: a conflicting edit ------------------------------------------------------
  step = 'config: conflict';
  await go(page, 'config');
  await page.waitForFunction(() => (document.querySelector('.editor')?.shadowRoot?.querySelectorAll('.cm-content .cm-line').length ?? 0) > 5, null, { timeout: WAIT });
  const base = await admin('GET', '/_kairos/config');
  const mine = base.json();
  mine.routes.push({ name: 'mine', path: '/mine', upstream: 'backend' });
  await setEditorText(page, `${JSON.stringify(mine, null, 2)}\n`);
  // Someone else applies their change first.
  const theirs = base.json();
  theirs.routes.push({ name: 'theirs', path: '/theirs', upstream: 'backend' });
  const put = await admin('PUT', '/_kairos/config', { body: JSON.stringify(theirs, null, 2), ifMatch: base.etag });
  check(put.status === 200, `their PUT: ${put.status} ${put.text}`);
  // Their reload arrives as a `config` event: the editor says so before anyone clicks Apply.
  await page.waitForSelector('[data-testid="config-changed"]', { timeout: WAIT });
  await page.click('text=Review changes');
  await page.click('button:text-is("Apply")');
  await page.waitForSelector('[data-testid="config-conflict"]', { timeout: WAIT });
  const conflict = await page.textContent('[data-testid="config-conflict"]');
  check(/412/.test(conflict) && /\+ .*theirs/.test(conflict), `conflict: ${conflict}`);
  const after = (await admin('GET', '/_kairos/config')).json();
  check(after.routes.some((r) => r.name === 'theirs') && !after.routes.some((r) => r.name === 'mine'), 'the refused edit changed the config');
  // The refused edit is still in the editor: reviewing again shows it against their config.
  await page.click('text=Review changes');
  await page.waitForSelector('[data-testid="config-diff"]');
  const again = await page.textContent('[data-testid="config-diff"]');
  check(/\+ .*"mine"/.test(again) && /- .*"theirs"/.test(again), `review after the conflict: ${again}`);
  await axeCheck(page, 'config (conflict)');
  await shot(page, 'config-conflict');
  log('conflicting edit refused (412) with the other change shown');

  // ---- logs -----------------------------------------------------------------------------------
  step = 'logs';
  await go(page, 'logs');
  const made = await fetch(`${BASE}/api/made-during-the-test`);
  check(made.status === 200, `request through the gateway: ${made.status}`);
  const rid = made.headers.get('x-request-id');
  check(rid, 'no x-request-id on the answer');
  await page.waitForSelector(`[data-testid="logs-table"] button:text-is("${rid}")`, { timeout: WAIT });
  // Under load the rows move down as new lines arrive: pause them, as a reader would, to click.
  await page.check('label:has-text("Pause live lines") input');
  await page.click(`[data-testid="logs-table"] button:text-is("${rid}")`);
  await page.waitForSelector('[data-testid="request-filter"]');
  await page.waitForFunction(
    (id) => {
      const rows = Array.from(document.querySelectorAll('[data-testid="logs-table"] tbody tr'));
      return rows.length > 0 && rows.every((r) => r.textContent.includes(id));
    },
    rid,
    { timeout: WAIT },
  );
  const row = await page.textContent('[data-testid="logs-table"] tbody tr');
  check(row.includes('/api/made-during-the-test') && row.includes('200'), `log row: ${row}`);
  log(`log viewer: request ${rid} found live and by its id`);
  await page.click('button:text-is("Clear")');
  await page.uncheck('label:has-text("Pause live lines") input');
  await axeCheck(page, 'logs');
  await shot(page, 'logs');

  // ---- tenants, cache -------------------------------------------------------------------------
  step = 'tenants';
  await go(page, 'tenants');
  await page.waitForSelector('[data-testid="tenants-table"] tbody tr', { timeout: WAIT });
  // One request in seven of the load is for the tenant's host: today's usage against its quota.
  await page.waitForFunction(() => /[1-9]\d* \/ 100000/.test(document.querySelector('[data-testid="tenants-table"] tbody tr')?.textContent ?? ''), null, {
    timeout: WAIT,
  });
  log('tenants:', (await page.textContent('[data-testid="tenants-table"] tbody tr')).replace(/\s+/g, ' '));
  await axeCheck(page, 'tenants');
  await shot(page, 'tenants');
  step = 'cache';
  await go(page, 'cache');
  await page.waitForFunction(() => Number(document.querySelector('[data-testid="cache-entries"]')?.textContent) > 0, null, { timeout: WAIT });
  await axeCheck(page, 'cache');
  page.once('dialog', (d) => d.accept());
  await page.click('button:text-is("Purge all")');
  await page.waitForFunction(() => /Purged [1-9]\d* stored answers \(all\)/.test(document.querySelector('main')?.textContent ?? ''), null, { timeout: WAIT });
  log('cache: entries listed, purge all done');

  step = 'csp so far';
  const early = await page.evaluate(() => window.__csp);
  check(early.length === 0, `CSP violations: ${early.join('; ')}`);

  // ---- keys -----------------------------------------------------------------------------------
  step = 'keys';
  await go(page, 'keys');
  await page.waitForSelector('[data-testid="keys-table"] tr[data-name="partner"]', { timeout: WAIT });
  await page.fill('label:has-text("Name") input', 'e2e-key');
  await page.fill('label:has-text("Permissions") input', 'read');
  await page.click('button:text-is("Create key")');
  await page.waitForSelector('[data-testid="new-key"]', { timeout: WAIT });
  const key = (await page.textContent('[data-testid="new-key"]')).trim();
  check(/^kairos_[A-Za-z0-9_-]{40,}$/.test(key), `key: ${key}`);
  await page.waitForSelector('[data-testid="keys-table"] tr[data-name="e2e-key"]', { timeout: WAIT });
  const table = await page.textContent('[data-testid="keys-table"]');
  check(!table.includes(key) && !table.includes('sha256:'), 'the key table shows a key or a hash');
  const withKey = await fetch(`${BASE}/secure/data`, { headers: { 'X-API-Key': key } });
  const withoutKey = await fetch(`${BASE}/secure/data`, { headers: { 'X-API-Key': `${key}x` } });
  check(withKey.status === 200 && withoutKey.status === 401, `secure route: with the key ${withKey.status}, with a wrong one ${withoutKey.status}`);
  await axeCheck(page, 'keys');
  await shot(page, 'keys');
  log('key created, shown once, and accepted on a real route');

  // The new key's hash is redacted in GET /_kairos/config: an edit of that config applied with
  // the placeholder keeps the hash (the gateway puts the running value back), so the key works.
  step = 'config: redacted placeholder kept';
  await go(page, 'config');
  await page.waitForFunction(() => (document.querySelector('.editor')?.shadowRoot?.querySelectorAll('.cm-content .cm-line').length ?? 0) > 5, null, { timeout: WAIT });
  const before = await admin('GET', '/_kairos/config');
  check(before.text.includes('<redacted>'), 'the key hash is not redacted');
  const note = await page.textContent('[data-testid="redacted-note"]', { timeout: WAIT });
  check(note.includes('api_keys.keys.e2e-key.key_hash'), `redacted note: ${note}`);
  const redactedEdit = before.json();
  redactedEdit.routes.push({ name: 'kept-secrets', path: '/kept-secrets', upstream: 'backend' });
  await setEditorText(page, `${JSON.stringify(redactedEdit, null, 2)}\n`);
  await page.click('text=Review changes');
  await page.click('button:text-is("Apply")');
  await page.waitForFunction(() => /Applied/.test(document.querySelector('[data-testid="config-outcome"]')?.textContent ?? ''), null, {
    timeout: WAIT,
  });
  const kept = await admin('GET', '/_kairos/config');
  check(kept.etag !== before.etag && kept.json().routes.some((r) => r.name === 'kept-secrets'), 'the edit with <redacted> placeholders was not applied');
  const stillWorks = await fetch(`${BASE}/secure/data`, { headers: { 'X-API-Key': key } });
  check(stillWorks.status === 200, `the key after an edit with its hash redacted: ${stillWorks.status}`);
  log('an edit holding <redacted> placeholders is applied and the secrets are kept');

  // A second key of the same name is refused (409); deleting the key stops it working.
  step = 'keys: duplicate and delete';
  await go(page, 'keys');
  await page.waitForSelector('[data-testid="keys-table"] tr[data-name="e2e-key"]', { timeout: WAIT });
  await page.fill('label:has-text("Name") input', 'e2e-key');
  await page.click('button:text-is("Create key")');
  await page.waitForFunction(() => /exists already/.test(document.querySelector('main')?.textContent ?? ''), null, { timeout: WAIT });
  page.once('dialog', (d) => d.accept());
  await page.click('button[aria-label="Delete key e2e-key"]');
  await page.waitForFunction(() => !document.querySelector('[data-testid="keys-table"] tr[data-name="e2e-key"]'), null, { timeout: WAIT });
  const afterDelete = await fetch(`${BASE}/secure/data`, { headers: { 'X-API-Key': key } });
  check(afterDelete.status === 401, `the deleted key still answers ${afterDelete.status}`);
  log('a duplicate key name is refused; the deleted key is refused on the route');

  // ---- reload history -------------------------------------------------------------------------
  step = 'reload history';
  await go(page, 'config');
  await page.waitForFunction(
    () => {
      const rows = Array.from(document.querySelectorAll('[data-testid="reload-history"] tbody tr')).map((r) => r.textContent);
      return rows.some((r) => r.includes('admin') && r.includes('applied')) && rows.some((r) => r.includes('startup'));
    },
    null,
    { timeout: WAIT },
  );
  log('reload history lists the startup and the applied admin edits');

  // ---- CSP, errors, logout --------------------------------------------------------------------
  step = 'csp';
  const violations = await page.evaluate(() => window.__csp);
  check(violations.length === 0, `CSP violations: ${violations.join('; ')}`);
  check(problems.length === 0, problems.join('; '));

  step = 'logout';
  await page.click('text=Sign out');
  await page.waitForSelector('#token');
  check(await page.evaluate(() => sessionStorage.length === 0), 'token still stored after logout');

  // The token is changed elsewhere while the tab is signed in: its next call gets a 401 and
  // the tab signs out, saying why.
  step = 'token changed elsewhere';
  await page.fill('#token', TOKEN);
  await page.keyboard.press('Enter');
  await page.waitForSelector('nav[aria-label="Main"]', { timeout: WAIT });
  const cfgNow = await admin('GET', '/_kairos/config');
  const rotated = cfgNow.json();
  rotated.admin.token = `${TOKEN}-rotated`;
  const rotate = await admin('PUT', '/_kairos/config', { body: JSON.stringify(rotated, null, 2), ifMatch: cfgNow.etag });
  check(rotate.status === 200, `rotating the token: ${rotate.status} ${rotate.text}`);
  // The next call may be the event stream's (the gateway may end it on the token change) or a
  // view's: open Routes unless the tab signed out already.
  await page
    .locator('nav a[href="#/routes"]')
    .click({ timeout: 2000 })
    .catch(() => {});
  await page.waitForSelector('#login-error', { timeout: WAIT });
  const expired = await page.textContent('#login-error');
  check(/no longer accepts/.test(expired), `message: ${expired}`);
  check(await page.evaluate(() => sessionStorage.length === 0), 'the refused token is still stored');
  log('a token changed elsewhere signs the tab out:', expired);

  await browser.close();
  log('all checks passed');
}

main().catch(async (e) => {
  console.error(`[admin-ui] FAILED at step "${step}":`, e.stack || e.message);
  // What the page showed, to tell why: its main text, and a screenshot in the system's temp dir.
  if (current) {
    try {
      const text = await current.evaluate(() => document.querySelector('main')?.innerText ?? document.body.innerText);
      console.error('[admin-ui] the page said:\n', text.slice(0, 4000));
      const path = join(tmpdir(), 'kairos-admin-ui-failure.png');
      await current.screenshot({ path, fullPage: true });
      console.error(`[admin-ui] screenshot: ${path}`);
    } catch (e2) {
      console.error('[admin-ui] (no page state:', e2.message, ')');
    }
  }
  process.exit(1);
});
