// Small DOM and formatting helpers. Text always goes in as text nodes,
// never as HTML, so agent output cannot inject markup.

/** Creates an element: h('a', {href: '#/', class: 'x'}, 'text', child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, '');
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const BADGE_TONE = {
  running: 'ok', healthy: 'ok', succeeded: 'ok',
  starting: 'info', stopping: 'info', registered: 'info', in_progress: 'info',
  degraded: 'warn', warning: 'warn', backoff: 'warn',
  failed: 'bad', critical: 'bad', error: 'bad',
  stopped: 'mute', unknown: 'mute', none: 'mute', info: 'mute',
};

/** A status badge: the value as text, coloured by tone; `label` for screen readers. */
export function badge(label, value) {
  const v = value ?? 'unknown';
  return h('span', {
    class: `badge tone-${BADGE_TONE[v] || 'mute'}`,
    dataset: { badge: label, value: v },
    title: `${label}: ${v}`,
  }, h('span', { class: 'sr-only' }, `${label}: `), v.replace('_', ' '));
}

export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(v < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

export function fmtPercent(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  return `${Number(n).toFixed(1)} %`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  let s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** A <time> element with the local time as text and the instant as datetime. */
export function time(iso) {
  return h('time', { datetime: iso || undefined }, fmtTime(iso));
}

/** Seconds since `started_at` while running, else null. */
export function uptime(agent) {
  if (!agent || agent.status !== 'running' || !agent.started_at) return null;
  return (Date.now() - new Date(agent.started_at).getTime()) / 1000;
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Shows a message for a few seconds (errors of commands). */
export function toast(message) {
  const el = document.getElementById('toast');
  if (!el) return;
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
}

/** `{"a": 1}` pretty-printed. */
export function pretty(value) {
  return JSON.stringify(value, null, 2);
}
