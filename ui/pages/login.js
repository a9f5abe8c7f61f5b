// Login: a bearer token (API token `opm_...` or a JWT), checked with
// `GET /whoami` and kept in sessionStorage for this tab only.

import { h } from '../util.js';

export function render(main, { onToken, message }) {
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true,
    spellcheck: 'false', 'aria-describedby': 'token-help',
  });
  const error = h('p', { class: 'error', id: 'login-error', role: 'alert' }, message || '');
  const button = h('button', { type: 'submit' }, 'Log in');
  const form = h('form', { class: 'login card', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Log in to OPMAS'),
    h('label', { for: 'token' }, 'API token or JWT'),
    input,
    h('p', { id: 'token-help', class: 'help' },
      'Create one with ', h('code', {}, 'opmas token create --role viewer'),
      ' (or use the admin token printed by ', h('code', {}, 'opmas dev'),
      '). It is kept in this browser tab only.'),
    button,
    error);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    button.disabled = true;
    error.textContent = '';
    try {
      await onToken(input.value.trim());
    } catch (err) {
      error.textContent = err.status === 401
        ? `This token was refused: ${err.message}`
        : `Could not log in: ${err.message}`;
      button.disabled = false;
      input.focus();
    }
  });
  main.append(form);
  input.focus();
  return null;
}
