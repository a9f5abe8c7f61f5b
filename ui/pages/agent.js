// One agent: status header with badges and recovery controls, then a
// section (metrics charts, status timeline, errors, logs, config). Live:
// the page subscribes to this agent's messages only.

import { api, ApiError, enc, statusAtLeast } from '../api.js';
import { badge, fill, fmtDuration, h, time, toast, uptime } from '../util.js';
import * as charts from './charts.js';
import * as logs from './logs.js';
import * as config from './config.js';

const SECTIONS = [
  ['overview', 'Metrics'],
  ['timeline', 'Timeline'],
  ['errors', 'Errors'],
  ['logs', 'Logs'],
  ['config', 'Config'],
];

export function render(main, ctx) {
  const { live, params, can } = ctx;
  const id = params.id;
  const section = SECTIONS.some(([s]) => s === params.section) ? params.section : 'overview';
  const base = `#/agents/${enc(id)}`;

  const title = h('h1', {}, id);
  const badges = h('div', { class: 'badges', id: 'agent-badges', 'aria-live': 'polite' });
  const facts = h('dl', { class: 'facts' });
  const controls = h('section', { class: 'controls', 'aria-labelledby': 'controls-title' });
  const body = h('div', { class: 'section-body' });
  main.append(
    h('nav', { 'aria-label': 'Breadcrumb', class: 'crumbs' }, h('a', { href: '#/' }, 'Fleet'), ' / ', id),
    h('div', { class: 'agent-head card' }, h('div', { class: 'page-head' }, title, badges), facts, controls),
    h('nav', { class: 'tabs', 'aria-label': 'Agent sections' },
      SECTIONS.map(([s, label]) => h('a', {
        href: s === 'overview' ? base : `${base}/${s}`,
        'aria-current': s === section ? 'page' : undefined,
      }, label))),
    body);

  let view = null;
  let detail = null;

  function drawHead() {
    if (!view) return;
    fill(badges,
      badge('status', view.status),
      badge('health', view.health),
      badge('recovery', view.recovery_status),
      view.heartbeat_lost ? badge('heartbeat', 'lost') : null);
    const spec = detail && detail.spec;
    const items = [
      ['Desired', view.desired_state],
      ['Node', view.node || '—'],
      ['PID', view.pid ?? '—'],
      ['Uptime', h('span', { id: 'agent-uptime' }, fmtDuration(uptime(view)))],
      ['Restarts', String(view.restart_count)],
      ['Type', view.agent_type || '—'],
      ['Package', view.package_version || '—'],
      ['Config', `v${view.config_version}`],
      ['Last heartbeat', time(view.last_heartbeat_at)],
    ];
    const command = spec ? [spec.command, ...(spec.args || [])].join(' ') : '—';
    fill(facts, items.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))),
      h('div', { class: 'wide' }, h('dt', {}, 'Command'), h('dd', {}, h('code', {}, command))),
      view.last_error ? h('div', { class: 'wide' }, h('dt', {}, 'Last error'), h('dd', { class: 'error' }, view.last_error)) : null);
    drawControls();
  }

  let pending = null;

  // Controls are built once and updated in place, so a live update never
  // takes the keyboard focus away from a button.
  const why = h('p', { id: 'controls-why', class: 'muted small', role: 'status' });
  const buttons = {};
  const defineButton = (name, label, action) => {
    buttons[name] = { label, el: h('button', { type: 'button', dataset: { action: name }, onclick: action, disabled: true }, label) };
    return buttons[name].el;
  };
  const autoSwitch = h('input', {
    type: 'checkbox', role: 'switch', id: 'auto-recovery', disabled: true,
    onchange: (e) => setAuto(e.target.checked),
  });
  const policyNote = h('span', { class: 'muted small' });
  controls.append(
    h('h2', { id: 'controls-title', class: 'sr-only' }, 'Controls'),
    h('div', { class: 'buttons' },
      defineButton('start', 'Start', () => command('start', `/agents/${enc(id)}/start`)),
      defineButton('stop', 'Stop', () => command('stop', `/agents/${enc(id)}/stop`)),
      defineButton('restart', 'Restart', () => command('restart', `/agents/${enc(id)}/restart`)),
      defineButton('reload', 'Reload config', () => command('reload', `/agents/${enc(id)}/recover`,
        { strategy: 'reload', reason: 'reload from the dashboard' }))),
    h('div', { class: 'switch' }, autoSwitch, h('label', { for: 'auto-recovery' }, 'Automatic recovery'), policyNote),
    why);

  function drawControls() {
    const operator = can('operator');
    const recovering = view.recovery_status === 'in_progress';
    const active = ['starting', 'running', 'degraded', 'backoff', 'failed'].includes(view.status);
    const policy = (detail && detail.spec && detail.spec.recovery) || null;
    const enabled = {
      start: view.desired_state !== 'running' || view.status === 'failed',
      stop: view.desired_state === 'running',
      restart: active,
      reload: view.desired_state === 'running' && !recovering,
    };
    why.textContent = !operator
      ? `Your role (${ctx.session.role}) may look but not act: these need the operator role.`
      : recovering ? `Recovery attempt ${view.recovery_attempts} is in progress: no other recovery (reload) until it completes.` : '';
    for (const [name, b] of Object.entries(buttons)) {
      b.el.disabled = !operator || !enabled[name] || pending !== null;
      b.el.textContent = pending === name ? `${b.label}…` : b.label;
      if (why.textContent) b.el.setAttribute('aria-describedby', 'controls-why');
      else b.el.removeAttribute('aria-describedby');
    }
    autoSwitch.checked = policy ? policy.auto : false;
    autoSwitch.disabled = !operator || !policy || pending !== null;
    policyNote.textContent = policy ? ` (${policy.strategy}, ${policy.max_attempts} attempts)` : '';
  }

  /** After a command, keep the keyboard where it was (the pressed button, or the next usable one). */
  function refocus(element) {
    if (document.activeElement && document.activeElement !== document.body) return;
    const target = !element.disabled ? element : Object.values(buttons).map((b) => b.el).find((el) => !el.disabled);
    if (target) target.focus();
  }

  async function command(name, path, body) {
    const had = document.activeElement === buttons[name].el;
    pending = name;
    drawControls();
    try {
      const result = await api(path, { method: 'POST', body: body || { reason: `${name} from the dashboard` } });
      view = await statusAtLeast(id, result.sequence);
    } catch (err) {
      toast(`${name} failed: ${err.message}`);
    } finally {
      pending = null;
      drawHead();
      if (had) refocus(buttons[name].el);
    }
  }

  async function setAuto(auto) {
    const policy = detail.spec.recovery;
    const had = document.activeElement === autoSwitch;
    pending = 'auto';
    drawControls();
    try {
      const result = await api(`/agents/${enc(id)}/recovery-policy`, { method: 'PUT', body: { ...policy, auto } });
      await statusAtLeast(id, result.sequence);
      detail = await api(`/agents/${enc(id)}`);
      view = detail;
    } catch (err) {
      toast(`Could not change automatic recovery: ${err.message}`);
    } finally {
      pending = null;
      drawHead();
      if (had && document.activeElement === document.body) autoSwitch.focus();
    }
  }

  // Section bodies: each gets the agent id and returns {update(message), cleanup()}.
  const sectionApi = { id, can, live, onChange: null };
  let current = null;
  if (section === 'overview') current = charts.render(body, sectionApi);
  else if (section === 'timeline') current = timeline(body, id);
  else if (section === 'errors') current = errors(body, id);
  else if (section === 'logs') current = logs.render(body, sectionApi);
  else if (section === 'config') current = config.render(body, sectionApi);

  let refreshing = null;
  let wantSeq = 0;
  async function refreshHead(seq) {
    wantSeq = Math.max(wantSeq, seq || 0);
    if (refreshing) return;
    refreshing = (async () => {
      try {
        while (true) {
          const target = wantSeq;
          view = await statusAtLeast(id, target);
          if (wantSeq <= target) break;
        }
        // The spec (recovery policy, command) may have changed too.
        detail = await api(`/agents/${enc(id)}`);
        drawHead();
        if (current && current.changed) current.changed(view);
      } catch (err) {
        if (err instanceof ApiError) toast(err.message);
      } finally {
        refreshing = null;
      }
    })();
  }

  const off = live.on((m) => {
    if (m.agent_id !== id) return;
    if (m.kind === 'agent.status') refreshHead(m.data.sequence);
    if (current && current.message) current.message(m);
  });
  live.filter({ agents: [id] });
  const ticker = setInterval(() => {
    const el = document.getElementById('agent-uptime');
    if (el && view) el.textContent = fmtDuration(uptime(view));
  }, 1000);

  (async () => {
    try {
      detail = await api(`/agents/${enc(id)}`);
      view = detail;
      drawHead();
    } catch (err) {
      fill(main, h('h1', {}, id), h('p', { class: 'error', role: 'alert' },
        err.status === 404 ? `No agent named ${id}.` : `Could not load ${id}: ${err.message}`),
      h('p', {}, h('a', { href: '#/' }, 'Back to the fleet')));
    }
  })();

  return () => {
    off();
    clearInterval(ticker);
    if (current && current.cleanup) current.cleanup();
  };
}

/** Status timeline: every transition with actor and reason, plus recovery attempts. */
function timeline(root, id) {
  const list = h('ol', { class: 'timeline', 'aria-label': 'Status transitions, newest first' });
  const attempts = h('div');
  root.append(h('h2', {}, 'Status timeline'), list, h('h2', {}, 'Recovery attempts'), attempts);
  async function load() {
    try {
      const [rows, rec] = await Promise.all([
        api(`/agents/${enc(id)}/history?limit=200`),
        api(`/agents/${enc(id)}/recovery?limit=50`),
      ]);
      fill(list, rows.length === 0 ? h('li', { class: 'empty' }, 'No transitions yet.') : rows.map((t) => h('li', {
        dataset: { sequence: t.sequence },
      },
      h('div', { class: 'when' }, time(t.at), h('span', { class: 'muted small' }, ` #${t.sequence}`)),
      h('div', { class: 'what' },
        t.from_status ? badge('from', t.from_status) : null, t.from_status ? ' → ' : null, badge('to', t.to_status),
        ' ', h('code', {}, t.event_type),
        t.from_desired !== t.to_desired ? h('span', { class: 'muted small' }, ` desired ${t.from_desired || '—'} → ${t.to_desired}`) : null),
      h('div', { class: 'who' }, 'by ', h('strong', {}, t.actor), t.reason ? [': ', t.reason] : null))));
      fill(attempts, rec.length === 0 ? h('p', { class: 'muted' }, 'No recovery attempts.') : h('div', { class: 'table-wrap' },
        h('table', {}, h('thead', {}, h('tr', {}, ['#', 'Strategy', 'Outcome', 'Reason', 'Actor', 'Started', 'Completed', 'Error'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, rec.map((r) => h('tr', {},
            h('td', {}, String(r.attempt)), h('td', {}, r.strategy), h('td', {}, badge('outcome', r.outcome)),
            h('td', {}, r.reason), h('td', {}, r.actor), h('td', {}, time(r.started_at)),
            h('td', {}, time(r.completed_at)), h('td', {}, r.error || '')))))));
    } catch (err) {
      fill(list, h('li', { class: 'error' }, `Could not load the history: ${err.message}`));
    }
  }
  load();
  return { changed: load };
}

/** Errors grouped by fingerprint; a group opens to its occurrences. */
function errors(root, id) {
  const list = h('div', { class: 'error-groups' });
  root.append(h('h2', {}, 'Errors by fingerprint'), list);
  async function load() {
    try {
      const groups = await api(`/agents/${enc(id)}/errors?grouped=true&limit=200`);
      if (groups.length === 0) {
        fill(list, h('p', { class: 'muted' }, 'No errors recorded.'));
        return;
      }
      fill(list, groups.map((g) => {
        const occurrences = h('div', { class: 'occurrences' }, 'Loading…');
        const details = h('details', { dataset: { fingerprint: g.fingerprint } },
          h('summary', {},
            badge('severity', g.severity), ' ', h('strong', {}, g.error_type), ' ',
            h('span', { class: 'muted' }, g.category), ' — ', g.first_message,
            h('span', { class: 'count-pill' }, `×${g.count}`)),
          h('p', { class: 'muted small' }, 'First seen ', time(g.first_seen), ', last seen ', time(g.last_seen),
            '. Fingerprint ', h('code', {}, g.fingerprint)),
          occurrences);
        details.addEventListener('toggle', async () => {
          if (!details.open) return;
          try {
            const rows = await api(`/agents/${enc(id)}/errors?limit=1000`);
            const mine = rows.filter((r) => r.fingerprint === g.fingerprint).slice(0, 50);
            fill(occurrences, h('ol', { class: 'plain' }, mine.map((r) => h('li', {},
              time(r.at), ' ', h('span', { class: 'muted small' }, `#${r.sequence} by ${r.actor}`), h('br'),
              r.message,
              Object.keys(r.context || {}).length ? h('pre', {}, JSON.stringify(r.context, null, 2)) : null))));
          } catch (err) {
            fill(occurrences, h('p', { class: 'error' }, err.message));
          }
        });
        return details;
      }));
    } catch (err) {
      fill(list, h('p', { class: 'error' }, `Could not load errors: ${err.message}`));
    }
  }
  load();
  return { message: (m) => { if (m.kind === 'agent.error') setTimeout(load, 500); } };
}
