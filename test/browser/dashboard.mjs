// The web dashboard in a real browser (Debian's chromium through npm's
// playwright-core), against a real daemon with real guests. Run by
// test/e2e/web_test.go (TestWebDashboardInBrowser), which starts the
// daemon and passes:
//   EMBER_URL   the address `ember web` printed (with its token)
//   EMBER_BIN   the ember binary; EMBER_HOME its home
//   SHOTS       the folder for screenshots (git-ignored)
//   CHROMIUM    the browser
// Every step waits for a condition (a selector, a text, a command's
// output), never for a time. Each line it prints starts with "ok" or
// "FAIL"; it exits non-zero on the first failure.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const url = new URL(process.env.EMBER_URL);
const origin = url.origin;
const shots = process.env.SHOTS;
mkdirSync(shots, { recursive: true });
const timeout = 180_000; // a TCG boot on a loaded machine

function ember(...args) {
  return execFileSync(process.env.EMBER_BIN, ['--home', process.env.EMBER_HOME, ...args], { encoding: 'utf8', timeout });
}
function step(what) { console.log('ok ' + what); }

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  // Root runs no sandbox; every address but loopback goes to a closed
  // port, so nothing the browser might try leaves the machine.
  args: ['--no-sandbox', '--proxy-server=http://127.0.0.1:9', '--no-first-run', '--disable-sync',
    '--disable-background-networking', '--disable-component-update', '--disable-domain-reliability'],
});
let failed = false;
let page = null;
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await ctx.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  // Uncaught errors fail the test; an API call the daemon refused (a VM
  // that stopped between a list and its sessions' list) is only shown.
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(m.text()); });
  page.on('response', async (r) => {
    if (r.status() >= 400) console.log('note: ' + r.request().method() + ' ' + r.url() + ' answered ' + r.status() + ': ' + (await r.text().catch(() => '')).slice(0, 300));
  });

  // The token visit: a cookie, and the token gone from the address.
  const t0 = Date.now();
  await page.goto(url.href);
  if (page.url().includes('token=')) throw new Error('the token stayed in the address: ' + page.url());
  const cookies = await ctx.cookies();
  const ck = cookies.find((c) => c.name === 'ember_token');
  if (!ck || !ck.httpOnly || ck.sameSite !== 'Strict') throw new Error('cookie: ' + JSON.stringify(cookies));
  await page.waitForSelector('#live.on', { timeout });
  console.log('measure first-paint-ms ' + (Date.now() - t0));
  step('the dashboard opened with the token, live');

  // A VM created from the CLI shows up without a reload.
  ember('create', 'web1');
  const created = Date.now();
  await page.waitForSelector('tr[data-vm="web1"] td.state-running', { timeout });
  console.log('measure cli-create-to-page-ms ' + (Date.now() - created));
  await page.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true });
  step('a VM created from the CLI appeared without a reload');

  // A terminal on it: type, see the output; the CLI sees it too.
  const term = await ctx.newPage();
  term.on('pageerror', (e) => pageErrors.push(String(e)));
  const termURL = origin + '/terminal?vm=web1&session=main';
  await term.goto(termURL);
  await term.waitForSelector('body[data-attached="true"]', { timeout });
  await term.click('#terminal');
  await term.keyboard.type('echo hello-from-browser\n');
  await waitTerminalLine(term, 'hello-from-browser');
  step('typed in the browser terminal and saw the output');
  await waitFor(() => ember('session', 'read', 'web1', 'main', '--plain').split('\n').some((l) => l.trim() === 'hello-from-browser'),
    'ember session read shows the browser\'s command');
  step('ember session read shows it');
  ember('session', 'send', 'web1', 'main', 'echo from-the-cli-$((6*7))', '--enter');
  await waitTerminalLine(term, 'from-the-cli-42');
  await term.screenshot({ path: join(shots, 'terminal.png') });
  step('text sent with ember session send appeared in the browser');

  // A reload attaches again and replays the history.
  await term.reload();
  await term.waitForSelector('body[data-attached="true"]', { timeout });
  await waitTerminalLine(term, 'hello-from-browser');
  await waitTerminalLine(term, 'from-the-cli-42');
  await term.screenshot({ path: join(shots, 'terminal-reloaded.png') });
  step('a reload re-attached with the history');
  // Closing the tab detaches; the session runs on.
  await term.close();
  await waitFor(() => {
    const s = JSON.parse(ember('session', 'ls', 'web1', '--json')).find((x) => x.name === 'main');
    return s && s.state === 'running' && s.attached === 0;
  }, 'the session runs on, detached, after the tab closed');
  step('closing the tab detached and left the session running');

  // Stop from the page: the CLI sees it stopped.
  await page.click('tr[data-vm="web1"] button[data-action="stop"]');
  await page.waitForSelector('tr[data-vm="web1"] td.state-stopped', { timeout });
  const vm = JSON.parse(ember('ls', '--json')).find((v) => v.name === 'web1');
  if (!vm || vm.state !== 'stopped') throw new Error('ember ls after a stop from the page: ' + JSON.stringify(vm));
  step('stopped from the page; ember ls shows it stopped');

  // Start it again from the page, then delete it (the page asks first).
  await page.click('tr[data-vm="web1"] button[data-action="start"]');
  await page.waitForSelector('tr[data-vm="web1"] td.state-running', { timeout });
  await page.click('tr[data-vm="web1"] button[data-action="delete"]');
  await page.click('#confirm button[value="no"]');
  await page.click('tr[data-vm="web1"] button[data-action="delete"]');
  await page.click('#confirm button[value="yes"]');
  await page.waitForSelector('tr[data-vm="web1"]', { state: 'detached', timeout });
  if (JSON.parse(ember('ls', '--json')).some((v) => v.name === 'web1')) throw new Error('web1 still listed after a delete from the page');
  step('started and deleted from the page (after a confirm that was first declined)');

  // Create from the page: the VM and its operation show up.
  await page.fill('#create input[name="name"]', 'web2');
  await page.click('#create button[type="submit"]');
  await page.waitForSelector('tr[data-vm="web2"] td.state-running', { timeout });
  await page.click('nav a[data-page="operations"]');
  await page.waitForSelector('#ops tr:has(td:text-is("web2")) td.state-succeeded', { timeout });
  await page.click('#ops tr:has(td:text-is("web2")) button[data-action="log"]');
  await page.waitForSelector('#oplog:not([hidden]) h3:has-text("web2")', { timeout });
  await page.screenshot({ path: join(shots, 'operations.png'), fullPage: true });
  const v2 = JSON.parse(ember('ls', '--json')).find((v) => v.name === 'web2');
  if (!v2 || v2.state !== 'running') throw new Error('ember ls after a create from the page: ' + JSON.stringify(v2));
  step('created from the page; its operation succeeded');
  if (pageErrors.length) throw new Error('the page reported errors: ' + pageErrors.join('; '));

  // Without the token: the login page, 401 for the API and the websocket.
  const anon = await browser.newContext();
  const p2 = await anon.newPage();
  const r = await p2.goto(origin + '/sessions');
  if (r.status() !== 401 || !(await p2.$('input[name="token"]'))) throw new Error('a page without the token: ' + r.status());
  const api = await p2.evaluate(async () => (await fetch('/api/vm.list', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' })).status);
  if (api !== 401) throw new Error('the API without the token: ' + api);
  const ws = await p2.evaluate(() => new Promise((resolve) => {
    const w = new WebSocket('ws://' + location.host + '/api/ws');
    w.onopen = () => resolve('open');
    w.onerror = () => resolve('refused');
  }));
  if (ws !== 'refused') throw new Error('a websocket without the token: ' + ws);
  await p2.screenshot({ path: join(shots, 'login.png') });
  step('without the token: the login page, 401 for the API, the websocket refused');
} catch (e) {
  failed = true;
  console.log('FAIL ' + (e && e.stack || e));
  if (page) {
    await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
    console.log('the page at the failure (' + page.url() + '):\n' + (await page.innerText('body').catch(() => '?')));
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);

// waitTerminalLine waits until a line of the terminal's screen or
// scrollback is exactly text (the command's output, not its echo).
async function waitTerminalLine(p, text) {
  await p.waitForFunction((want) => {
    const b = window.emberTerminal && window.emberTerminal.buffer.active;
    if (!b) return false;
    for (let i = 0; i < b.length; i++) {
      const l = b.getLine(i);
      if (l && l.translateToString(true).trim() === want) return true;
    }
    return false;
  }, text, { timeout });
}

// waitFor retries a check of the CLI until it holds (each try is a
// command that answers at once), failing after the timeout.
async function waitFor(check, what) {
  const end = Date.now() + timeout;
  for (;;) {
    if (check()) return;
    if (Date.now() > end) throw new Error('timed out: ' + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}
