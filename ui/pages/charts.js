// CPU, memory, threads and open files of one agent over 1 h, 24 h or 7 d,
// from `GET /agents/{id}/metrics` (1 min rollups for 1 h and 24 h, 1 h
// rollups for 7 d).
// The 1 h view shows its newest minute from raw samples, then adds live
// `agent.metrics` samples.

import uPlot from '../vendor/uplot/uPlot.esm.js';
import { api, enc } from '../api.js';
import { fill, fmtBytes, fmtPercent, h } from '../util.js';

const RANGES = [
  ['1h', '1 h', 3600, '1m'],
  ['24h', '24 h', 86400, '1m'],
  ['7d', '7 d', 7 * 86400, '1h'],
];

const count = (v) => (v == null ? '—' : String(Math.round(v)));
// Whole-number axis steps for counts (no "1, 1, 0" ticks).
const COUNT_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000];

const CHARTS = [
  ['cpu', 'CPU', fmtPercent, 'cpu_percent', undefined],
  ['rss', 'Memory (RSS)', fmtBytes, 'rss_bytes', undefined],
  ['threads', 'Threads', count, 'threads', COUNT_STEPS],
  ['fds', 'Open files', count, 'open_fds', COUNT_STEPS],
];

export function render(root, { id }) {
  let range = '1h';
  let points = [];
  // The x axis spans the chosen range, in seconds.
  const span = { since: 0, until: 0 };
  const plots = new Map();
  const note = h('p', { class: 'muted small', role: 'status', id: 'chart-note' });
  const group = h('div', { class: 'segmented', role: 'radiogroup', 'aria-label': 'Time range' });
  const grid = h('div', { class: 'charts' });
  root.append(h('div', { class: 'section-head' }, h('h2', {}, 'Resources'), group), note, grid);

  function drawRanges() {
    fill(group, RANGES.map(([key, label]) => h('button', {
      type: 'button', role: 'radio', 'aria-checked': String(key === range), dataset: { range: key },
      onclick: () => { range = key; drawRanges(); load(); },
    }, label)));
  }

  function series(field) {
    const xs = points.map((p) => new Date(p.bucket).getTime() / 1000);
    return [xs, points.map((p) => p[`${field}_avg`]), points.map((p) => p[`${field}_max`])];
  }

  function draw() {
    for (const plot of plots.values()) plot.destroy();
    plots.clear();
    fill(grid);
    for (const [key, label, format, , incrs] of CHARTS) {
      const holder = h('div', { class: 'chart-plot', 'aria-hidden': 'true' });
      const last = points.length ? points[points.length - 1][`${key}_last`] : null;
      const figure = h('figure', { class: 'chart card', dataset: { chart: key } },
        h('figcaption', {}, h('strong', {}, label), h('span', { class: 'muted small' }, ` latest ${format(last)}`)),
        holder,
        h('p', { class: 'sr-only' }, points.length
          ? `${label}: ${points.length} points, latest ${format(last)}, highest ${format(Math.max(...points.map((p) => p[`${key}_max`])))}`
          : `${label}: no samples in this range`));
      grid.append(figure);
      const width = Math.max(240, holder.clientWidth || grid.clientWidth || 300);
      const plot = new uPlot({
        width,
        height: 160,
        legend: { show: false },
        cursor: { show: true, drag: { x: false, y: false } },
        scales: {
          x: { time: true, range: () => [span.since, span.until] },
          y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
        },
        axes: [
          { stroke: '#475569', grid: { stroke: '#e2e8f0' } },
          { stroke: '#475569', grid: { stroke: '#e2e8f0' }, size: 70, incrs, values: (u, vals) => vals.map(format) },
        ],
        series: [
          {},
          { label: 'average', stroke: '#1d4ed8', width: 2, fill: 'rgba(29, 78, 216, 0.08)' },
          { label: 'max', stroke: '#b45309', width: 1, dash: [4, 4] },
        ],
      }, series(key), holder);
      plots.set(key, plot);
    }
  }

  async function load() {
    const [, , seconds, resolution] = RANGES.find(([k]) => k === range);
    const until = new Date();
    const since = new Date(until.getTime() - seconds * 1000);
    span.since = since.getTime() / 1000;
    span.until = until.getTime() / 1000;
    const query = (res, from) => `/agents/${enc(id)}/metrics?resolution=${res}&since=${from.toISOString()}&until=${until.toISOString()}`;
    try {
      const page = await api(query(resolution, since));
      points = page.points;
      let raw = 0;
      if (range === '1h') {
        // The newest minute may not be rolled up yet (or only in part):
        // raw samples from its start instead.
        const last = points.length ? points.pop() : null;
        const from = last ? new Date(last.bucket) : since;
        const tail = await api(query('raw', from > since ? from : since));
        raw = tail.points.length;
        points = points.concat(tail.points);
      }
      const rolled = points.length - raw;
      const parts = [];
      if (rolled) parts.push(`${rolled} ${resolution} rollup${rolled === 1 ? '' : 's'}`);
      if (raw) parts.push(`${raw} raw sample${raw === 1 ? '' : 's'}`);
      note.textContent = points.length
        ? `${parts.join(' and ')}; solid line average, dashed line maximum.`
        : 'No samples in this range (the agent has not run, or its samples have expired).';
      draw();
    } catch (err) {
      note.textContent = `Could not load metrics: ${err.message}`;
    }
  }

  const observer = new ResizeObserver(() => {
    for (const [key, plot] of plots) {
      const holder = grid.querySelector(`[data-chart="${key}"] .chart-plot`);
      if (holder && holder.clientWidth && Math.abs(holder.clientWidth - plot.width) > 4) {
        plot.setSize({ width: holder.clientWidth, height: 160 });
      }
    }
  });
  observer.observe(grid);

  drawRanges();
  load();

  return {
    message(m) {
      if (m.kind !== 'agent.metrics' || range !== '1h') return;
      const s = m.data;
      const point = { bucket: s.at, samples: 1 };
      for (const [key, , , field] of CHARTS) {
        for (const agg of ['min', 'avg', 'max', 'last']) point[`${key}_${agg}`] = s[field];
      }
      points.push(point);
      span.until = Date.now() / 1000;
      span.since = span.until - 3600;
      const cutoff = Date.now() - 3600 * 1000;
      points = points.filter((p) => new Date(p.bucket).getTime() >= cutoff);
      for (const [key, , format] of CHARTS) {
        const plot = plots.get(key);
        if (plot) plot.setData(series(key));
        const caption = grid.querySelector(`[data-chart="${key}"] figcaption .muted`);
        if (caption) caption.textContent = ` latest ${format(point[`${key}_last`])}`;
      }
    },
    cleanup() {
      observer.disconnect();
      for (const plot of plots.values()) plot.destroy();
    },
  };
}
