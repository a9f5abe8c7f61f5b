// Log viewer: `GET /agents/{id}/logs` with level and text filters (newest
// 500 lines, shown oldest first), and a live tail from the stream's
// `agent.log` messages, filtered the same way.

import { api, enc } from '../api.js';
import { debounce, fill, h } from '../util.js';

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];
const MAX_LINES = 2000;

export function render(root, { id }) {
  const levels = new Set(LEVELS);
  const boxes = LEVELS.map((l) => h('label', { class: 'check' },
    h('input', {
      type: 'checkbox', name: 'level', value: l, checked: true,
      onchange: (e) => { if (e.target.checked) levels.add(l); else levels.delete(l); load(); },
    }), ` ${l}`));
  const search = h('input', { id: 'log-q', type: 'search', placeholder: 'text in the line' });
  const tail = h('input', { id: 'log-tail', type: 'checkbox', role: 'switch', checked: true });
  const status = h('p', { class: 'muted small', role: 'status', id: 'log-status' });
  const list = h('ol', { class: 'log', id: 'log-lines', tabindex: '0', 'aria-label': 'Log lines, oldest first' });
  root.append(
    h('h2', {}, 'Logs'),
    h('form', { class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); load(); } },
      h('fieldset', { class: 'levels' }, h('legend', {}, 'Levels'), boxes),
      h('div', { class: 'field grow' }, h('label', { for: 'log-q' }, 'Search'), search),
      h('div', { class: 'switch' }, tail, h('label', { for: 'log-tail' }, 'Live tail'))),
    status,
    list);

  function matches(line) {
    if (!levels.has(line.level)) return false;
    const q = search.value.trim().toLowerCase();
    return !q || String(line.line).toLowerCase().includes(q);
  }

  function item(line) {
    return h('li', { class: `lvl-${line.level}`, dataset: { level: line.level } },
      h('time', { datetime: line.at }, new Date(line.at).toLocaleTimeString()),
      h('span', { class: 'lvl' }, line.level),
      h('span', { class: 'stream muted' }, line.stream),
      h('span', { class: 'text' }, line.line));
  }

  function atBottom() {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  }

  let generation = 0;
  async function load() {
    const mine = ++generation;
    if (levels.size === 0) {
      fill(list);
      status.textContent = 'Pick at least one level.';
      return;
    }
    const q = search.value.trim();
    const params = new URLSearchParams({ limit: '500' });
    if (levels.size < LEVELS.length) params.set('level', [...levels].join(','));
    if (q) params.set('q', q);
    status.textContent = 'Searching…';
    try {
      const rows = await api(`/agents/${enc(id)}/logs?${params}`);
      if (mine !== generation) return;
      rows.reverse();
      fill(list, rows.map(item));
      list.scrollTop = list.scrollHeight;
      status.textContent = `${rows.length} line${rows.length === 1 ? '' : 's'}${q ? ` containing “${q}”` : ''}${rows.length === 500 ? ' (the newest 500)' : ''}${tail.checked ? '; new lines appear live' : ''}.`;
    } catch (err) {
      if (mine === generation) status.textContent = `Could not load logs: ${err.message}`;
    }
  }

  search.addEventListener('input', debounce(load, 300));
  tail.addEventListener('change', load);
  load();

  return {
    message(m) {
      if (m.kind !== 'agent.log' || !tail.checked || !matches(m.data)) return;
      const stick = atBottom();
      list.append(item(m.data));
      while (list.childElementCount > MAX_LINES) list.firstElementChild.remove();
      if (stick) list.scrollTop = list.scrollHeight;
    },
  };
}
