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

  function row(a) {
    const s = a.status === 'running' || a.status === 'degraded' ? samples.get(a.agent_id) : null;
    return h('tr', { dataset: { agent: a.agent_id } },
      h('th', { scope: 'row', 'data-label': 'Agent' },
        h('a', { href: `#/agents/${enc(a.agent_id)}` }, a.agent_id),
        a.agent_type ? h('span', { class: 'muted small' }, ` ${a.agent_type}`) : null),
      h('td', { 'data-label': 'Status' }, badge('status', a.status)),
      h('td', { 'data-label': 'Health' }, badge('health', a.health)),
      h('td', { 'data-label': 'Recovery' }, badge('recovery', a.recovery_status)),
      h('td', { 'data-label': 'Node' }, a.node || '—'),
      h('td', { 'data-label': 'Uptime', class: 'num', dataset: { uptime: a.agent_id } }, fmtDuration(uptime(a))),
      h('td', { 'data-label': 'Restarts', class: 'num' }, String(a.restart_count)),
      h('td', { 'data-label': 'CPU', class: 'num' }, s ? fmtPercent(s.cpu_percent) : '—'),
      h('td', { 'data-label': 'Memory', class: 'num' }, s ? fmtBytes(s.rss_bytes) : '—'));
  }

  function draw() {
    const all = [...agents.values()].sort((a, b) => a.agent_id.localeCompare(b.agent_id));
    const tally = {};
    for (const a of all) tally[a.status] = (tally[a.status] || 0) + 1;
    fill(counts,
      h('li', {}, h('button', {
        type: 'button', class: 'count', 'aria-pressed': String(state.status === ''),
        onclick: () => setStatus(''),
      }, h('strong', {}, String(all.length)), ' all')),
      STATUSES.filter((s) => tally[s]).map((s) => h('li', {}, h('button', {
        type: 'button', class: 'count', dataset: { status: s }, 'aria-pressed': String(state.status === s),
        onclick: () => setStatus(s),
      }, h('strong', {}, String(tally[s])), ` ${s}`))));
    const shown = all.filter(visible);
    if (shown.length === 0) {
      fill(body, h('tr', {}, h('td', { colspan: 9, class: 'empty' },
        all.length === 0 ? 'No agents registered yet.' : 'No agent matches the filters.')));
    } else {
      fill(body, shown.map(row));
    }
    summary.textContent = `${shown.length} of ${all.length} agents shown`;
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
      draw();
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
      const a = agents.get(m.agent_id);
      if (a) draw();
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

  return () => { off(); clearInterval(ticker); };
}
