// The dashboard shell: login, the session bar, the live stream and a hash
// router (`#/`, `#/agents/<id>[/<section>]`, `#/events`). Each page module
// exports `render(main, ctx)` and returns a cleanup function.

import { api, Live, setToken, setUnauthorizedHandler, token } from './api.js';
import { fill, h } from './util.js';
import * as login from './pages/login.js';
import * as overview from './pages/overview.js';
import * as agent from './pages/agent.js';
import * as events from './pages/events.js';

const ROLES = ['viewer', 'operator', 'admin'];

const main = document.getElementById('main');
const live = new Live();
let session = null;
let cleanup = null;

function can(role) {
  return session !== null && ROLES.indexOf(session.role) >= ROLES.indexOf(role);
}

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const parts = hash.split('?')[0].split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'agents' && parts[1]) {
    return { page: agent, name: 'agent', params: { id: parts[1], section: parts[2] || 'overview' } };
  }
  if (parts[0] === 'events') return { page: events, name: 'events', params: {} };
  return { page: overview, name: 'overview', params: {} };
}

async function show() {
  if (cleanup) { cleanup(); cleanup = null; }
  if (!session) {
    showLogin();
    return;
  }
  const { page, name, params } = route();
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  fill(main);
  const ctx = { session, can, live, params };
  cleanup = page.render(main, ctx) || null;
}

function showLogin(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('session').hidden = true;
  live.close();
  fill(main);
  cleanup = login.render(main, { onToken: start, message });
}

/** Checks `candidate` with `GET /whoami`; on success keeps it and opens the app. */
async function start(candidate) {
  const who = await api('/whoami', { token: candidate });
  setToken(candidate);
  session = who;
  fill(document.getElementById('whoami'),
    h('span', { class: 'subject' }, who.subject), ' ',
    h('span', { class: 'role', dataset: { role: who.role } }, who.role));
  document.getElementById('nav').hidden = false;
  document.getElementById('session').hidden = false;
  live.connect();
  await show();
  main.focus();
}

function logout(message) {
  setToken(null);
  session = null;
  if (cleanup) { cleanup(); cleanup = null; }
  showLogin(message);
}

setUnauthorizedHandler((error) => {
  if (session) logout(`Signed out: ${error.message}`);
});

live.onState((state) => {
  const el = document.getElementById('live-state');
  el.textContent = state;
  el.dataset.state = state;
});

document.getElementById('logout').addEventListener('click', () => logout());
window.addEventListener('hashchange', () => {
  show().then(() => main.focus({ preventScroll: true }));
});

const saved = token();
if (saved) {
  start(saved).catch(() => logout('Your saved token is no longer valid; log in again.'));
} else {
  showLogin();
}
