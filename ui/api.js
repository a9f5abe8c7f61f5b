// The REST API (`/api/v1`, bearer token from sessionStorage) and the live
// stream (one WebSocket, `/api/v1/ws?access_token=`, reconnecting).

const TOKEN_KEY = 'opmas.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An error answer of the API: `{error: {code, message, details}}`. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let onUnauthorized = () => {};

/** Called when a request answers 401 (expired or revoked token). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/**
 * Calls `/api/v1<path>`. `options.body` is sent as JSON; `options.raw`
 * returns the Response (for headers such as ETag).
 */
export async function api(path, options = {}) {
  const headers = { Accept: 'application/json', ...(options.headers || {}) };
  const t = options.token ?? token();
  if (t) headers.Authorization = `Bearer ${t}`;
  let body;
  if (options.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(options.body);
  }
  const response = await fetch(`/api/v1${path}`, { method: options.method || 'GET', headers, body });
  if (!response.ok) {
    let error = { code: `HTTP_${response.status}`, message: response.statusText, details: {} };
    try {
      const parsed = await response.json();
      if (parsed && parsed.error) error = parsed.error;
    } catch { /* not JSON */ }
    if (response.status === 401 && !options.token) onUnauthorized(error);
    throw new ApiError(response.status, error.code, error.message, error.details);
  }
  if (options.raw) return response;
  return response.status === 204 ? null : response.json();
}

export const enc = encodeURIComponent;

/** Every registered agent (all pages of `GET /agents`). */
export async function allAgents() {
  const items = [];
  for (let offset = 0; ; offset += 1000) {
    const page = await api(`/agents?limit=1000&offset=${offset}`);
    items.push(...page.items);
    if (items.length >= page.total || page.items.length === 0) return items;
  }
}

/**
 * The agent's status once the read model has caught up with `sequence`
 * (the live stream announces an event before the projector has applied it).
 */
export async function statusAtLeast(agentId, sequence, tries = 20) {
  let view = null;
  for (let i = 0; i < tries; i += 1) {
    view = await api(`/agents/${enc(agentId)}/status`);
    if (!sequence || view.sequence >= sequence) return view;
    await new Promise((resolve) => setTimeout(resolve, 150 + i * 50));
  }
  return view;
}

/**
 * The live stream. `live.on(fn)` gets every message `{kind, agent_id, data}`;
 * `live.filter({agents, kinds})` replaces what the server sends us.
 */
export class Live {
  constructor() {
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.current = { agents: [], kinds: [] };
    this.socket = null;
    this.retry = 0;
    this.closed = false;
    this.state = 'offline';
  }

  connect() {
    this.closed = false;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${proto}//${location.host}/api/v1/ws?access_token=${enc(token() || '')}`;
    const socket = new WebSocket(url);
    this.socket = socket;
    this.setState('connecting');
    socket.addEventListener('open', () => {
      this.retry = 0;
      socket.send(JSON.stringify(this.current));
    });
    socket.addEventListener('message', (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      if (message.kind === 'subscribed') {
        this.setState('live');
        return;
      }
      for (const fn of this.listeners) {
        try { fn(message); } catch (err) { console.error(err); }
      }
    });
    socket.addEventListener('close', () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.setState('offline');
      if (this.closed) return;
      const delay = Math.min(10000, 500 * 2 ** this.retry);
      this.retry += 1;
      setTimeout(() => { if (!this.closed) this.connect(); }, delay);
    });
  }

  close() {
    this.closed = true;
    if (this.socket) this.socket.close();
    this.socket = null;
    this.setState('offline');
  }

  filter(next) {
    this.current = { agents: next.agents || [], kinds: next.kinds || [] };
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(this.current));
    }
  }

  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onState(fn) {
    this.stateListeners.add(fn);
    fn(this.state);
    return () => this.stateListeners.delete(fn);
  }

  setState(state) {
    this.state = state;
    for (const fn of this.stateListeners) fn(state);
  }
}
