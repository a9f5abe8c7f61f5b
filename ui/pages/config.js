// Config: the current version, every version with its diff and actor, and
// rollback (operator) to any earlier version, which becomes a new version.

import { api, enc } from '../api.js';
import { fill, h, pretty, time, toast } from '../util.js';

export function render(root, { id, can }) {
  const current = h('div', { id: 'config-current' });
  const versions = h('ol', { class: 'versions plain', id: 'config-versions', 'aria-label': 'Config versions, newest first' });
  root.append(h('h2', {}, 'Current config'), current, h('h2', {}, 'Versions'), versions);
  let busy = false;

  function diff(rows) {
    if (!rows || rows.length === 0) return h('p', { class: 'muted small' }, 'No change.');
    return h('table', { class: 'diff' },
      h('thead', {}, h('tr', {}, ['Key', 'Before', 'After'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.map((d) => h('tr', {},
        h('td', {}, h('code', {}, d.path || '(root)')),
        h('td', { class: 'del' }, d.from === undefined || d.from === null ? '—' : JSON.stringify(d.from)),
        h('td', { class: 'add' }, d.to === undefined || d.to === null ? '—' : JSON.stringify(d.to))))));
  }

  async function rollback(version) {
    if (busy) return;
    busy = true;
    try {
      await api(`/agents/${enc(id)}/config/rollback`, {
        method: 'POST', body: { to_version: version, reason: `rollback to v${version} from the dashboard` },
      });
      await load(version);
    } catch (err) {
      toast(`Rollback failed: ${err.message}`);
    } finally {
      busy = false;
    }
  }

  /** Loads; after a rollback, polls until the projected versions show it. */
  async function load(rolledBackTo) {
    try {
      let rows;
      let cfg;
      for (let i = 0; i < 30; i += 1) {
        [cfg, rows] = await Promise.all([
          api(`/agents/${enc(id)}/config`),
          api(`/agents/${enc(id)}/config/versions`),
        ]);
        const top = rows[0];
        if (rolledBackTo === undefined || (top && top.version >= cfg.version)) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      fill(current,
        h('p', {}, 'Version ', h('strong', { id: 'config-version' }, `v${cfg.version}`)),
        h('pre', { class: 'json', tabindex: '0', 'aria-label': `Config version ${cfg.version}` }, pretty(cfg.config)));
      if (rows.length === 0) {
        fill(versions, h('li', { class: 'muted' }, 'No config versions yet.'));
        return;
      }
      const operator = can('operator');
      fill(versions, rows.map((v) => h('li', { class: 'card', dataset: { version: v.version } },
        h('div', { class: 'version-head' },
          h('h3', {}, `v${v.version}`),
          v.version === cfg.version ? h('span', { class: 'badge tone-ok' }, 'current') : null,
          h('span', { class: 'muted small' }, ' ', h('code', {}, v.event_type), ' by ', v.actor, ', ', time(v.at),
            v.rolled_back_to ? ` (restored v${v.rolled_back_to})` : ''),
          v.version !== cfg.version ? h('button', {
            type: 'button', class: 'secondary', dataset: { rollback: v.version },
            disabled: !operator,
            title: operator ? undefined : 'Needs the operator role',
            onclick: () => rollback(v.version),
          }, `Roll back to v${v.version}`) : null),
        diff(v.diff),
        h('details', {}, h('summary', {}, 'Full config'), h('pre', { class: 'json' }, pretty(v.config))))));
    } catch (err) {
      fill(current, h('p', { class: 'error' }, `Could not load the config: ${err.message}`));
    }
  }

  load();
  return { changed: () => load() };
}
