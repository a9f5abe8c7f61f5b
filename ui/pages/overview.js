// Fleet overview: every agent with its badges, node, uptime, restarts and
// latest CPU / memory; counts by status, a status filter and a search.
// Live: `agent.status` refreshes a row once the read model has caught up,
// `agent.metrics` updates CPU / memory.

import { allAgents, api, enc, statusAtLeast } from '../api.js';
import { badge, debounce, fill, fmtBytes, fmtDuration, fmtPercent, h, uptime } from '../util.js';

const STATUSES = ['registered', 'starting', 'running', 'degraded', 'backoff', 'stopping', 'stopped', 'failed'];

export function render(main, { live }) {
  const agents = new Map();
  const samples = new Map();
  const state = { status: '', q: '' };

  const counts = h('ul', { class: 'counts', 'aria-label': 'Agents by status' });
  const statusSelect = h('select', { id: 'filter-status' },
    h('option', { value: '' }, 'All statuses'),
    STATUSES.map((s) => h('option', { value: s }, s)));
  const search = h('input', { id: 'filter-q', type: 'search', placeholder: 'agent id, type or node' });
  const summary = h('p', { class: 'muted', role: 'status', id: 'fleet-summary' });
  const body = h('tbody');
  const table = h('table', { class: 'fleet', 'aria-describedby': 'fleet-summary' },
    h('caption', { class: 'sr-only' }, 'Agents'),
    h('thead', {}, h('tr', {},
      ['Agent', 'Status', 'Health', 'Recovery', 'Node', 'Uptime', 'Restarts', 'CPU', 'Memory']
        .map((c) => h('th', { scope: 'col' }, c)))),
    body);

  main.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Fleet')),
    counts,
    h('form', { class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault() },
      h('div', { class: 'field' }, h('label', { for: 'filter-status' }, 'Status'), statusSelect),
      h('div', { class: 'field grow' }, h('label', { for: 'filter-q' }, 'Search'), search)),
    summary,
    h('div', { class: 'table-wrap' }, table));

  function visible(a) {
    if (state.status && a.status !== state.status) return false;
    if (!state.q) return true;
    const q = state.q.toLowerCase();
    return [a.agent_id, a.agent_type, a.node].some((v) => v && v.toLowerCase().includes(q));
  }

  // Rows and count buttons are updated in place, so live updates never
  // take the keyboard focus away from a link or button.
  const rows = new Map();
  const emptyRow = h('tr', {}, h('td', { colspan: 9, class: 'empty' }));

  function makeRow(a) {
    const cell = (label, cls) => h('td', { 'data-label': label, class: cls });
    const r = {
      status: cell('Status'), health: cell('Health'), recovery: cell('Recovery'), node: cell('Node'),
      uptime: cell('Uptime', 'num'), restarts: cell('Restarts', 'num'), cpu: cell('CPU', 'num'), mem: cell('Memory', 'num'),
      key: '',
    };
    r.uptime.dataset.uptime = a.agent_id;
    r.tr = h('tr', { dataset: { agent: a.agent_id } },
      h('th', { scope: 'row', 'data-label': 'Agent' },
        h('a', { href: `#/agents/${enc(a.agent_id)}` }, a.agent_id),
        a.agent_type ? h('span', { class: 'muted small' }, ` ${a.agent_type}`) : null),
      r.status, r.health, r.recovery, r.node, r.uptime, r.restarts, r.cpu, r.mem);
    rows.set(a.agent_id, r);
    return r;
  }

  function updateRow(r, a) {
    const key = `${a.sequence}|${a.status}|${a.health}|${a.recovery_status}|${a.node}|${a.restart_count}`;
    if (key !== r.key) {
      r.key = key;
      fill(r.status, badge('status', a.status));
      fill(r.health, badge('health', a.health));
      fill(r.recovery, badge('recovery', a.recovery_status));
      r.node.textContent = a.node || '—';
      r.restarts.textContent = String(a.restart_count);
    }
    r.uptime.textContent = fmtDuration(uptime(a));
    const s = a.status === 'running' || a.status === 'degraded' ? samples.get(a.agent_id) : null;
    r.cpu.textContent = s ? fmtPercent(s.cpu_percent) : '—';
    r.mem.textContent = s ? fmtBytes(s.rss_bytes) : '—';
  }

  const countButtons = new Map();
  function countButton(status) {
    if (!countButtons.has(status)) {
      const number = h('strong');
      const button = h('button', {
        type: 'button', class: 'count', dataset: status ? { status } : {},
        onclick: () => setStatus(status),
      }, number, ` ${status || 'all'}`);
      const li = h('li', {}, button);
      counts.append(li);
      countButtons.set(status, { li, button, number });
    }
    return countButtons.get(status);
  }

  function draw() {
    const all = [...agents.values()].sort((a, b) => a.agent_id.localeCompare(b.agent_id));
    const tally = {};
    for (const a of all) tally[a.status] = (tally[a.status] || 0) + 1;
    for (const status of ['', ...STATUSES]) {
      const n = status ? tally[status] || 0 : all.length;
      const c = countButton(status);
      c.li.hidden = status !== '' && n === 0 && state.status !== status;
      c.number.textContent = String(n);
      c.button.setAttribute('aria-pressed', String(state.status === status));
    }
    for (const [id, r] of rows) {
      if (!agents.has(id)) { r.tr.remove(); rows.delete(id); }
    }
    const shown = all.filter(visible);
    if (shown.length === 0) {
      fill(emptyRow.firstChild, all.length === 0 ? 'No agents registered yet.' : 'No agent matches the filters.');
      if (body.firstChild !== emptyRow || body.childElementCount !== 1) fill(body, emptyRow);
    } else {
      const trs = shown.map((a) => {
        const r = rows.get(a.agent_id) || makeRow(a);
        updateRow(r, a);
        return r.tr;
      });
      const current = [...body.children];
      if (current.length !== trs.length || current.some((tr, i) => tr !== trs[i])) fill(body, trs);
    }
    summary.textContent = `${shown.length} of ${all.length} agents shown`;
  }

  // Live messages come in bursts: one redraw per 250 ms at most.
  let drawTimer = null;
  function scheduleDraw() {
    if (drawTimer === null) drawTimer = setTimeout(() => { drawTimer = null; draw(); }, 250);
  }

  function setStatus(s) {
    state.status = s;
    statusSelect.value = s;
    draw();
  }

  statusSelect.addEventListener('change', () => setStatus(statusSelect.value));
  search.addEventListener('input', debounce(() => { state.q = search.value.trim(); draw(); }, 150));

  // Live updates: one refresh per agent at a time, the newest sequence wins.
  const wanted = new Map();
  const running = new Set();
  async function refresh(id) {
    if (running.has(id)) return;
    running.add(id);
    try {
      while (wanted.has(id)) {
        const seq = wanted.get(id);
        wanted.delete(id);
        try {
          const view = await statusAtLeast(id, seq);
          if (view.deregistered) agents.delete(id); else agents.set(id, view);
        } catch (err) {
          if (err.status === 404) agents.delete(id);
        }
      }
      scheduleDraw();
    } finally {
      running.delete(id);
    }
  }
  const off = live.on((m) => {
    if (m.kind === 'agent.status') {
      wanted.set(m.agent_id, Math.max(wanted.get(m.agent_id) || 0, m.data.sequence || 0));
      refresh(m.agent_id);
    } else if (m.kind === 'agent.metrics') {
      samples.set(m.agent_id, m.data);
      if (agents.has(m.agent_id)) scheduleDraw();
    }
  });
  live.filter({ kinds: ['agent.status', 'agent.metrics'] });

  const ticker = setInterval(() => {
    for (const cell of body.querySelectorAll('[data-uptime]')) {
      cell.textContent = fmtDuration(uptime(agents.get(cell.dataset.uptime)));
    }
  }, 1000);

  (async () => {
    fill(body, h('tr', {}, h('td', { colspan: 9, class: 'empty' }, 'Loading…')));
    try {
      const [list, latest] = await Promise.all([allAgents(), api('/metrics/latest')]);
      for (const a of list) {
        const seen = agents.get(a.agent_id);
        if (!seen || seen.sequence < a.sequence) agents.set(a.agent_id, a);
      }
      for (const s of latest) if (!samples.has(s.agent_id)) samples.set(s.agent_id, s);
      draw();
    } catch (err) {
      fill(body, h('tr', {}, h('td', { colspan: 9, class: 'error' }, `Could not load agents: ${err.message}`)));
    }
  })();

  return () => { off(); clearInterval(ticker); clearTimeout(drawTimer); };
}
