// Browser test of the dashboard against a real server (scripts/ui-test.sh
// starts it, registers and starts the agent, and sets two config versions).
// Headless Debian Chromium driven by playwright-core.
//
// Env: OPMAS_UI_URL, OPMAS_UI_TOKEN (admin), OPMAS_UI_VIEWER_TOKEN,
// OPMAS_UI_AGENT, OPMAS_UI_ARTIFACTS (screenshots), OPMAS_CHROMIUM.

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const base = process.env.OPMAS_UI_URL;
const admin = process.env.OPMAS_UI_TOKEN;
const viewer = process.env.OPMAS_UI_VIEWER_TOKEN;
const agent = process.env.OPMAS_UI_AGENT;
const artifacts = process.env.OPMAS_UI_ARTIFACTS || new URL('./artifacts', import.meta.url).pathname;
const executablePath = process.env.OPMAS_CHROMIUM || '/usr/bin/chromium';
for (const [k, v] of Object.entries({ base, admin, viewer, agent })) assert.ok(v, `missing ${k}`);
mkdirSync(artifacts, { recursive: true });

const WAIT = { timeout: 30_000 };

async function rest(path, { method = 'GET', body, token = admin, headers = {} } = {}) {
  const response = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const axeSource = readFileSync(new URL('./node_modules/axe-core/axe.min.js', import.meta.url), 'utf8');

/** axe-core's WCAG 2.1 A/AA rules on the page as it is: no serious or critical violation. */
async function accessible(page, name) {
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
  }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')})`), [],
    `accessibility of ${name}`);
  return result.passes.length;
}

let step = 'start';
const log = (s) => { step = s; console.log(`- ${s}`); };

const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
const pageErrors = [];
function watch(page) {
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  page.on('console', (msg) => { if (msg.type() === 'error') pageErrors.push(`console: ${msg.text()}`); });
}

async function login(page, token) {
  await page.goto(base);
  await page.getByLabel('API token or JWT', { exact: true }).fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#live-state[data-state="live"]').waitFor(WAIT);
}

const row = (page) => page.locator(`table.fleet tr[data-agent="${agent}"]`);
const statusBadge = (scope) => scope.locator('[data-badge="status"]');

let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  watch(page);

  log('the page and its assets need no token; the API does');
  const index = await fetch(`${base}/`);
  assert.equal(index.status, 200);
  assert.match(index.headers.get('content-type'), /text\/html/);
  assert.match(index.headers.get('content-security-policy'), /default-src 'self'/);
  assert.equal((await fetch(`${base}/ui/vendor/uplot/LICENSE`)).status, 200);
  assert.equal((await fetch(`${base}/ui/nope.js`)).status, 404);
  assert.equal((await fetch(`${base}/api/v1/agents`)).status, 401);

  log('a wrong token is refused with a message');
  await page.goto(base);
  await page.getByLabel('API token or JWT', { exact: true }).waitFor(WAIT);
  assert.ok(await accessible(page, 'the login page') > 5);
  await page.getByLabel('API token or JWT', { exact: true }).fill('opm_wrong');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#login-error').filter({ hasText: 'refused' }).waitFor(WAIT);
  // The browser logs the refused request (401) as a console error: expected here.
  pageErrors.length = 0;

  log('log in with the admin token: whoami shows the role, the live stream connects');
  await page.getByLabel('API token or JWT', { exact: true }).fill(admin);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#live-state[data-state="live"]').waitFor(WAIT);
  assert.equal(await page.locator('#whoami .role').textContent(), 'admin');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('opmas.token')), admin);

  log('the agent appears on the overview, running, with CPU and memory');
  await statusBadge(row(page)).filter({ hasText: 'running' }).waitFor(WAIT);
  await row(page).locator('td[data-label="CPU"]').filter({ hasText: '%' }).waitFor(WAIT);
  assert.match(await row(page).locator('td[data-label="Memory"]').textContent(), /iB|B$/);
  assert.match(await row(page).locator('td[data-label="Node"]').textContent(), /\S/);
  assert.match(await page.locator('.counts button[data-status="running"]').textContent(), /1\s+running/);
  await page.locator('table.fleet tr[data-agent="ui-broken"]').waitFor(WAIT);
  assert.match(await page.locator('.counts button').first().textContent(), /2\s+all/);

  log('filters: status and search hide and show the row');
  await page.getByLabel('Status', { exact: true }).selectOption('stopped');
  await row(page).waitFor({ state: 'detached', ...WAIT });
  await page.getByLabel('Status', { exact: true }).selectOption('');
  await row(page).waitFor(WAIT);
  await page.getByLabel('Search', { exact: true }).fill('no-such-agent');
  await page.getByText('No agent matches the filters.').waitFor(WAIT);
  await page.getByLabel('Search', { exact: true }).fill(agent.slice(0, 5));
  await row(page).waitFor(WAIT);
  await page.getByLabel('Search', { exact: true }).fill('');
  await page.locator('table.fleet tr[data-agent="ui-broken"]').waitFor(WAIT);
  await page.screenshot({ path: `${artifacts}/overview-1280.png`, fullPage: true });
  await accessible(page, 'the fleet page');

  log('stopped through the API, the badge turns "stopped" live, without a reload');
  await page.evaluate(() => { window.__noReload = true; });
  await row(page).getByRole('link', { name: agent }).focus();
  await rest(`/agents/${agent}/stop`, { method: 'POST', body: { reason: 'stopped by the browser test' } });
  await statusBadge(row(page)).filter({ hasText: 'stopped' }).waitFor(WAIT);
  assert.equal(await page.evaluate(() => window.__noReload), true, 'the page was reloaded');
  assert.equal(await row(page).locator('td[data-label="CPU"]').textContent(), '—');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), agent,
    'the live update took the keyboard focus away from the agent link');

  log('the agent page (opened with the keyboard): badges, facts, four charts; Start turns it running live');
  await page.keyboard.press('Enter');
  await page.locator('#agent-badges [data-badge="status"]').filter({ hasText: 'stopped' }).waitFor(WAIT);
  await page.locator('#chart-note').filter({ hasText: /raw sample/ }).waitFor(WAIT);
  assert.equal(await page.locator('figure.chart').count(), 4);
  assert.equal(await page.locator('figure.chart canvas').count(), 4);
  await page.getByRole('button', { name: 'Start', exact: true }).focus();
  await page.keyboard.press('Enter');
  await page.locator('#agent-badges [data-badge="status"]').filter({ hasText: 'running' }).waitFor(WAIT);
  await page.waitForFunction(() => document.activeElement && document.activeElement.dataset.action === 'stop', null, WAIT);
  assert.equal(await page.evaluate(() => window.__noReload), true, 'the page was reloaded');
  assert.equal(await page.getByRole('button', { name: 'Stop', exact: true }).isEnabled(), true);

  log('charts: the 1 h range has samples; the 24 h range loads from the rollups');
  assert.match(await page.locator('figure[data-chart="rss"] .sr-only').textContent(), /Memory \(RSS\): \d+ points, latest \d/);
  await page.getByRole('radio', { name: '24 h' }).click();
  await page.locator('#chart-note').filter({ hasText: /1m rollup|No samples/ }).waitFor(WAIT);
  assert.equal(await page.getByRole('radio', { name: '24 h' }).getAttribute('aria-checked'), 'true');
  await page.getByRole('radio', { name: '1 h' }).click();
  await page.locator('#chart-note').filter({ hasText: /raw sample/ }).waitFor(WAIT);

  log('automatic recovery switch turns the policy off');
  const auto = page.getByRole('switch', { name: 'Automatic recovery' });
  assert.equal(await auto.isChecked(), true);
  await auto.focus();
  await page.keyboard.press('Space');
  await page.waitForFunction(() => {
    const el = document.getElementById('auto-recovery');
    return el && !el.checked && !el.disabled;
  }, null, WAIT);
  assert.equal((await rest(`/agents/${agent}`)).spec.recovery.auto, false);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'auto-recovery');
  await page.screenshot({ path: `${artifacts}/agent-1280.png`, fullPage: true });
  await accessible(page, 'the agent page');

  log('Reload config starts a recovery by reload; the controls reflect it');
  await page.getByRole('button', { name: 'Reload config', exact: true }).click();
  // Read in one snapshot of the page (a reload recovery can complete
  // between two separate reads): either it is in progress and the controls
  // say so (button disabled, notice shown), or it has already ended. An
  // in-progress badge with enabled controls never satisfies the wait.
  const snapshot = await (await page.waitForFunction(() => {
    const b = document.querySelector('#agent-badges [data-badge="recovery"]');
    if (!b || b.dataset.value === 'none') return null;
    const button = [...document.querySelectorAll('button')]
      .find((x) => x.textContent.trim() === 'Reload config');
    const disabled = button ? button.disabled : null;
    const notice = document.body.innerText.includes('is in progress');
    if (b.dataset.value === 'in_progress' && !(disabled && notice)) return null;
    return { value: b.dataset.value, disabled, notice };
  }, null, WAIT)).jsonValue();
  console.log(`  recovery badge after Reload: ${snapshot.value}`);
  if (snapshot.value === 'in_progress') {
    assert.equal(snapshot.disabled, true);
    assert.equal(snapshot.notice, true);
  }

  log('timeline: every transition with actor and reason');
  await page.getByRole('link', { name: 'Timeline' }).click();
  const stopItem = page.locator('.timeline li').filter({ hasText: 'stopped by the browser test' });
  await stopItem.first().waitFor(WAIT);
  assert.match(await stopItem.first().textContent(), /StopRequested/);
  assert.match(await stopItem.first().textContent(), /by ui-admin|by token:/);
  await page.locator('.timeline li').filter({ hasText: 'start from the dashboard' }).first().waitFor(WAIT);
  const attempt = page.locator('table tr').filter({ hasText: 'reload from the dashboard' });
  await attempt.waitFor(WAIT);
  assert.match(await attempt.textContent(), /reload/);
  await accessible(page, 'the timeline');

  log('logs: search finds a line; the level filter keeps only that level; the tail is live');
  await page.getByRole('link', { name: 'Logs' }).click();
  await page.locator('#log-lines li').first().waitFor(WAIT);
  await page.waitForFunction(() => document.querySelectorAll('#log-lines li').length >= 8, null, WAIT);
  const before = await page.locator('#log-lines li').count();
  await page.waitForFunction((n) => document.querySelectorAll('#log-lines li').length > n, before, WAIT);
  await page.getByLabel('Search', { exact: true }).fill('tick 3');
  await page.locator('#log-status').filter({ hasText: 'containing “tick 3”' }).waitFor(WAIT);
  const found = await page.locator('#log-lines li .text').allTextContents();
  assert.ok(found.includes('tick 3'), `no line "tick 3" in ${JSON.stringify(found)}`);
  assert.ok(found.every((t) => t.includes('tick 3')), `a line without "tick 3": ${JSON.stringify(found)}`);
  await page.getByLabel('Search', { exact: true }).fill('');
  for (const level of ['trace', 'debug', 'info', 'error']) await page.getByRole('checkbox', { name: level }).uncheck();
  await page.waitForFunction(() => {
    const items = [...document.querySelectorAll('#log-lines li')];
    return items.length > 0 && items.every((li) => li.dataset.level === 'warn');
  }, null, WAIT);
  await accessible(page, 'the log viewer');
  const warned = await page.locator('#log-lines li .text').allTextContents();
  assert.ok(warned.every((t) => t.startsWith('WARN slow tick')), JSON.stringify(warned));

  log("errors: the broken agent's spawn failures are grouped by fingerprint, with details");
  await page.goto(`${base}/#/agents/ui-broken/errors`);
  const group = page.locator('details[data-fingerprint]').filter({ hasText: 'SpawnFailed' });
  await group.waitFor(WAIT);
  await group.locator('summary').click();
  await group.locator('.occurrences pre').filter({ hasText: '/nonexistent/opmas-ui-broken' }).first().waitFor(WAIT);
  await accessible(page, 'the error list');
  await page.goto(`${base}/#/agents/${agent}`);
  await page.locator('#agent-badges [data-badge="status"]').filter({ hasText: 'running' }).waitFor(WAIT);

  log('config: roll back to the version with greeting "hello" (a new version)');
  const versions = await rest(`/agents/${agent}/config/versions`);
  const hello = versions.find((v) => v.config.greeting === 'hello').version;
  const latest = versions[0].version;
  assert.deepEqual(versions[0].config, { greeting: 'bonjour', extra: 1 });
  await page.getByRole('link', { name: 'Config' }).click();
  await page.locator('#config-version').filter({ hasText: `v${latest}` }).waitFor(WAIT);
  const top = page.locator(`#config-versions li[data-version="${latest}"]`);
  assert.match(await top.locator('table.diff').textContent(), /greeting.*"hello".*"bonjour"/s);
  await page.getByRole('button', { name: `Roll back to v${hello}` }).click();
  await page.locator('#config-version').filter({ hasText: `v${latest + 1}` }).waitFor(WAIT);
  await page.locator(`#config-versions li[data-version="${latest + 1}"]`).filter({ hasText: `restored v${hello}` }).waitFor(WAIT);
  const cfg = await rest(`/agents/${agent}/config`);
  assert.equal(cfg.version, latest + 1);
  assert.deepEqual(cfg.config, { greeting: 'hello' });
  assert.match(await page.locator('#config-current pre').textContent(), /"greeting": "hello"/);
  await accessible(page, 'the config view');

  log('events page: the audit trail, filtered by type; a restart appears live');
  await page.getByRole('link', { name: 'Events' }).click();
  await page.locator('table.events tr[data-type="StopRequested"]').first().waitFor(WAIT);
  await page.getByLabel('Event type', { exact: true }).selectOption('StopRequested');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('table.events tbody tr')];
    return rows.length > 0 && rows.every((r) => r.dataset.type === 'StopRequested');
  }, null, WAIT);
  await page.getByLabel('Event type', { exact: true }).selectOption('');
  await page.evaluate(() => { window.__noReload = true; });
  await rest(`/agents/${agent}/restart`, { method: 'POST', body: { reason: 'restart seen live' } });
  const restart = page.locator('table.events tr[data-type="RestartRequested"]').filter({ hasText: 'restart seen live' });
  await restart.waitFor(WAIT);
  assert.equal(await page.evaluate(() => window.__noReload), true, 'the page was reloaded');
  await page.screenshot({ path: `${artifacts}/events-1280.png`, fullPage: true });
  await accessible(page, 'the events page');

  log('phone width: overview, agent page and events');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole('link', { name: 'Fleet' }).click();
  await row(page).waitFor(WAIT);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the overview scrolls sideways by ${overflow}px at 390px`);
  await page.screenshot({ path: `${artifacts}/overview-390.png`, fullPage: true });
  await accessible(page, 'the fleet page at 390 px');
  await page.goto(`${base}/#/agents/${agent}`);
  await page.locator('figure.chart canvas').first().waitFor(WAIT);
  await page.locator('#chart-note').filter({ hasText: /raw sample/ }).waitFor(WAIT);
  const agentOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(agentOverflow <= 1, `the agent page scrolls sideways by ${agentOverflow}px at 390px`);
  await page.screenshot({ path: `${artifacts}/agent-390.png`, fullPage: true });
  await accessible(page, 'the agent page at 390 px');
  await page.goto(`${base}/#/events`);
  await page.locator('table.events tbody tr[data-type]').first().waitFor(WAIT);
  const eventsOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(eventsOverflow <= 1, `the events page scrolls sideways by ${eventsOverflow}px at 390px`);
  await page.screenshot({ path: `${artifacts}/events-390.png`, fullPage: true });
  await accessible(page, 'the events page at 390 px');

  log('a viewer sees everything but may not act');
  const vctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const vpage = await vctx.newPage();
  watch(vpage);
  await login(vpage, viewer);
  assert.equal(await vpage.locator('#whoami .role').textContent(), 'viewer');
  await vpage.goto(`${base}/#/agents/${agent}`);
  await vpage.locator('#agent-badges [data-badge="status"]').waitFor(WAIT);
  for (const name of ['Start', 'Stop', 'Restart', 'Reload config']) {
    assert.equal(await vpage.getByRole('button', { name, exact: true }).isDisabled(), true, `${name} enabled for a viewer`);
  }
  assert.equal(await vpage.getByRole('switch', { name: 'Automatic recovery' }).isDisabled(), true);
  await vpage.getByText('may look but not act').waitFor(WAIT);
  await accessible(vpage, 'the agent page of a viewer');
  await vpage.goto(`${base}/#/agents/${agent}/config`);
  const rollbacks = vpage.locator('[data-rollback]');
  await rollbacks.first().waitFor(WAIT);
  assert.ok(await rollbacks.count() >= 2);
  for (const button of await rollbacks.all()) assert.equal(await button.isDisabled(), true, 'rollback enabled for a viewer');

  log('log out forgets the token');
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByLabel('API token or JWT', { exact: true }).waitFor(WAIT);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('opmas.token')), null);

  assert.deepEqual(pageErrors, [], 'errors in the page');
  console.log('dashboard test passed');
  await browser.close();
} catch (err) {
  console.error(`FAILED at step "${step}": ${err.stack || err}`);
  if (pageErrors.length) console.error(`page errors: ${pageErrors.join('\n')}`);
  if (page) await page.screenshot({ path: `${artifacts}/failure.png`, fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
