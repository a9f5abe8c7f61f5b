// The audit trail across the fleet: the newest events of the most recently
// changed agents (`GET /agents/{id}/events`), then every new event live
// (`agent.status` / `agent.error`, completed with actor and reason from the
// event store). Filter by agent, event type, actor and text.

import { api, enc } from '../api.js';
import { debounce, fill, h, pretty, time } from '../util.js';

const PER_AGENT = 50;
const AGENTS = 50;
const MAX_ROWS = 2000;

export function render(root, { live }) {
  const events = new Map();
  const lastSeq = new Map();
  const f = { agent: '', type: '', actor: '', q: '' };

  const agentInput = h('input', { id: 'ev-agent', type: 'search', list: 'ev-agents', placeholder: 'any agent' });
  const agentList = h('datalist', { id: 'ev-agents' });
  const typeSelect = h('select', { id: 'ev-type' }, h('option', { value: '' }, 'Any event'));
  const actorInput = h('input', { id: 'ev-actor', type: 'search', placeholder: 'any actor' });
  const textInput = h('input', { id: 'ev-q', type: 'search', placeholder: 'reason or payload' });
  const status = h('p', { class: 'muted small', role: 'status', id: 'ev-status' });
  const body = h('tbody');
  root.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Events')),
    h('p', { class: 'muted' }, `The audit trail: every lifecycle fact with who caused it and why. Shows the newest ${PER_AGENT} events of the ${AGENTS} most recently changed agents, then everything new as it happens.`),
    h('form', { class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault() },
      h('div', { class: 'field' }, h('label', { for: 'ev-agent' }, 'Agent'), agentInput, agentList),
      h('div', { class: 'field' }, h('label', { for: 'ev-type' }, 'Event type'), typeSelect),
      h('div', { class: 'field' }, h('label', { for: 'ev-actor' }, 'Actor'), actorInput),
      h('div', { class: 'field grow' }, h('label', { for: 'ev-q' }, 'Text'), textInput)),
    status,
    h('div', { class: 'table-wrap' }, h('table', { class: 'events' },
      h('caption', { class: 'sr-only' }, 'Events, newest first'),
      h('thead', {}, h('tr', {}, ['Time', 'Agent', 'Event', 'Actor', 'Reason', 'Details'].map((c) => h('th', { scope: 'col' }, c)))),
      body)));

  const key = (agent, seq) => `${agent}#${seq}`;

  function add(agent, e) {
    events.set(key(agent, e.sequence), { agent, ...e });
    lastSeq.set(agent, Math.max(lastSeq.get(agent) || 0, e.sequence));
  }

  function matches(e) {
    if (f.agent && e.agent !== f.agent) return false;
    if (f.type && e.event_type !== f.type) return false;
    if (f.actor && !String(e.actor).toLowerCase().includes(f.actor)) return false;
    if (f.q) {
      const hay = `${e.reason || ''} ${JSON.stringify(e.payload || {})}`.toLowerCase();
      if (!hay.includes(f.q)) return false;
    }
    return true;
  }

  // Rows are built once per event and kept; new events are prepended, so a
  // focused link or open payload stays as it is while events arrive.
  const rowCache = new Map();
  const emptyRow = h('tr', {}, h('td', { colspan: 6, class: 'empty' }));
  let typesKey = '';
  let agentsKey = '';

  function rowFor(e) {
    const k = key(e.agent, e.sequence);
    if (!rowCache.has(k)) {
      rowCache.set(k, h('tr', { dataset: { agent: e.agent, type: e.event_type } },
        h('td', { 'data-label': 'Time' }, time(e.recorded_at)),
        h('td', { 'data-label': 'Agent' }, h('a', { href: `#/agents/${enc(e.agent)}/timeline` }, e.agent), h('span', { class: 'muted small' }, ` #${e.sequence}`)),
        h('td', { 'data-label': 'Event' }, h('code', {}, e.event_type)),
        h('td', { 'data-label': 'Actor' }, e.actor),
        h('td', { 'data-label': 'Reason' }, e.reason || ''),
        h('td', { 'data-label': 'Details' }, e.payload && Object.keys(e.payload).length
          ? h('details', {}, h('summary', {}, 'payload'), h('pre', {}, pretty(e.payload))) : '')));
    }
    return rowCache.get(k);
  }

  function draw() {
    let all = [...events.values()].sort((a, b) => (b.recorded_at || '').localeCompare(a.recorded_at || '') || b.sequence - a.sequence);
    if (all.length > MAX_ROWS) {
      for (const e of all.slice(MAX_ROWS)) {
        events.delete(key(e.agent, e.sequence));
        rowCache.delete(key(e.agent, e.sequence));
      }
      all = all.slice(0, MAX_ROWS);
    }
    const types = [...new Set(all.map((e) => e.event_type))].sort();
    if (types.join() !== typesKey) {
      typesKey = types.join();
      const chosen = typeSelect.value;
      fill(typeSelect, h('option', { value: '' }, 'Any event'), types.map((t) => h('option', { value: t, selected: t === chosen }, t)));
    }
    const agentIds = [...new Set(all.map((e) => e.agent))].sort();
    if (agentIds.join() !== agentsKey) {
      agentsKey = agentIds.join();
      fill(agentList, agentIds.map((a) => h('option', { value: a })));
    }
    const shown = all.filter(matches);
    const wanted = shown.slice(0, 500).map(rowFor);
    if (wanted.length === 0) {
      fill(emptyRow.firstChild, all.length ? 'No event matches the filters.' : 'No events yet.');
      fill(body, emptyRow);
    } else {
      const current = [...body.children];
      const added = wanted.length - current.length;
      const onlyNewOnTop = current.length > 0 && added >= 0 && current[0] !== emptyRow
        && current.every((tr, i) => tr === wanted[added + i]);
      if (onlyNewOnTop) body.prepend(...wanted.slice(0, added));
      else fill(body, wanted);
    }
    status.textContent = `${wanted.length} of ${all.length} events shown${shown.length > 500 ? ' (the newest 500 that match)' : ''}.`;
  }
  const redraw = debounce(draw, 100);

  for (const [input, field] of [[agentInput, 'agent'], [actorInput, 'actor'], [textInput, 'q']]) {
    input.addEventListener('input', debounce(() => {
      f[field] = field === 'agent' ? input.value.trim() : input.value.trim().toLowerCase();
      draw();
    }, 150));
  }
  typeSelect.addEventListener('change', () => { f.type = typeSelect.value; draw(); });

  // Live: fetch the full records (actor, reason) of new events per agent.
  const fetching = new Set();
  const again = new Set();
  async function catchUp(agent, fallback) {
    if (fetching.has(agent)) { again.add(agent); return; }
    fetching.add(agent);
    try {
      do {
        again.delete(agent);
        const page = await api(`/agents/${enc(agent)}/events?after=${lastSeq.get(agent) || 0}&limit=200`);
        for (const e of page.items) add(agent, e);
      } while (again.has(agent));
    } catch {
      for (const m of fallback) {
        add(agent, { sequence: m.sequence, event_type: m.event_type, payload: m.event, actor: m.actor, recorded_at: m.at, reason: null });
      }
    } finally {
      fetching.delete(agent);
      redraw();
    }
  }
  const off = live.on((m) => {
    if (m.kind !== 'agent.status' && m.kind !== 'agent.error') return;
    if (!lastSeq.has(m.agent_id)) lastSeq.set(m.agent_id, Math.max(0, (m.data.sequence || 1) - 1));
    catchUp(m.agent_id, [m.data]);
  });
  live.filter({ kinds: ['agent.status', 'agent.error'] });

  (async () => {
    status.textContent = 'Loading…';
    try {
      const page = await api(`/agents?sort=-updated_at&limit=${AGENTS}&include_deregistered=true`);
      const queue = [...page.items];
      const worker = async () => {
        while (queue.length) {
          const a = queue.shift();
          const after = Math.max(0, a.sequence - PER_AGENT);
          try {
            const ev = await api(`/agents/${enc(a.agent_id)}/events?after=${after}&limit=${PER_AGENT}`);
            for (const e of ev.items) add(a.agent_id, e);
          } catch { /* gone meanwhile */ }
        }
      };
      await Promise.all([worker(), worker(), worker(), worker()]);
      draw();
    } catch (err) {
      status.textContent = `Could not load events: ${err.message}`;
    }
  })();

  return () => off();
}
