// The dashboard's numbers for BENCHMARKS.md (go run ./bench -web): first
// paint of the dashboard and the time from a CLI `create` returning to
// the VM shown running on an open page. Environment as dashboard.mjs's,
// plus RUNS. Prints one "measure NAME MS" line per sample.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';

const url = new URL(process.env.EMBER_URL);
const runs = Number(process.env.RUNS || 5);
const timeout = 180_000;
const ember = (...args) => execFileSync(process.env.EMBER_BIN, ['--home', process.env.EMBER_HOME, ...args], { encoding: 'utf8', timeout });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM, headless: true,
  args: ['--no-sandbox', '--proxy-server=http://127.0.0.1:9', '--no-first-run', '--disable-sync',
    '--disable-background-networking', '--disable-component-update', '--disable-domain-reliability'],
});
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await page.goto(url.href); // sets the cookie
  for (let i = 0; i < runs; i++) {
    await page.goto(url.origin + '/');
    await page.waitForSelector('#live.on', { timeout });
    await page.waitForFunction(() => performance.getEntriesByName('ember-lists-shown').length > 0, null, { timeout });
    const m = await page.evaluate(() => ({
      fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime,
      lists: performance.getEntriesByName('ember-lists-shown')[0].startTime,
    }));
    console.log('measure first-contentful-paint-ms ' + m.fcp);
    console.log('measure lists-shown-ms ' + m.lists);
  }
  for (let i = 0; i < runs; i++) {
    const name = 'wb' + i;
    ember('create', name);
    const t = Date.now();
    await page.waitForSelector(`tr[data-vm="${name}"] td.state-running`, { timeout });
    console.log('measure cli-create-to-page-ms ' + (Date.now() - t));
    ember('rm', '-f', name);
    await page.waitForFunction((n) => !document.querySelector(`tr[data-vm="${n}"]`), name, { timeout });
  }
} finally {
  await browser.close();
}
