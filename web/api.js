// The service's API, as the console uses it: every call sends the token (if any) as
// `Authorization: Bearer`, and every failure becomes an ApiError carrying the service's own
// `message` (its JSON error body) and status.

export const BASE = '/image-management/v1';
const TOKEN_KEY = 'fs-console-token';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// Called on every 401 (set by the page: it brings the token prompt back).
let onUnauthorized = () => {};
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

function headers(extra) {
  const h = new Headers(extra || {});
  const t = token();
  if (t) h.set('Authorization', `Bearer ${t}`);
  return h;
}

async function failure(resp) {
  let code = 'HTTP_' + resp.status;
  let message = `${resp.status} ${resp.statusText}`;
  const text = await resp.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && typeof body.message === 'string') {
      message = body.message;
      code = body.code || code;
    }
  } catch {
    if (text) message = text;
  }
  const err = new ApiError(resp.status, code, message);
  if (resp.status === 401) onUnauthorized(err);
  return err;
}

// One request to the API; `path` is under BASE. Returns the Response of a success.
export async function call(method, path, { body, query, signal } = {}) {
  let url = BASE + path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    }
    const s = q.toString();
    if (s) url += '?' + s;
  }
  let resp;
  try {
    resp = await fetch(url, { method, headers: headers(), body, signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'NETWORK', 'the service did not answer (' + e.message + ')');
  }
  if (!resp.ok) throw await failure(resp);
  return resp;
}

export async function json(method, path, opts) {
  return (await call(method, path, opts)).json();
}

export async function text(method, path, opts) {
  return (await call(method, path, opts)).text();
}

export const listImages = (userId, limit, offset) =>
  json('GET', '/images', { query: { userId, limit, offset } });
export const getImage = (id) => json('GET', `/images/${encodeURIComponent(id)}`);
export const deleteImage = (id) => text('DELETE', `/images/${encodeURIComponent(id)}`);
export const slimImage = (id) => text('POST', `/images/${encodeURIComponent(id)}/action/slim`);
export const checkImage = (id) => text('POST', `/images/${encodeURIComponent(id)}/action/check`);
export const usage = () => json('GET', '/usage');

export function downloadUrl(id, zip) {
  return `${BASE}/images/${encodeURIComponent(id)}/action/download${zip ? '?isZip=true' : ''}`;
}

// The file name a Content-Disposition value gives (RFC 6266): `filename*` (RFC 8187, UTF-8)
// when it is there and decodes, else `filename`, a token or a quoted-string (RFC 9110 5.6.4:
// `;` and escaped quotes inside); null when there is none.
export function dispositionFilename(value) {
  const params = new Map();
  const param = /;\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)/g;
  for (const [, key, raw] of value.matchAll(param)) {
    const v = raw.startsWith('"') ? raw.slice(1, -1).replace(/\\(.)/g, '$1') : raw;
    if (!params.has(key.toLowerCase())) params.set(key.toLowerCase(), v);
  }
  const extended = /^UTF-8'[^']*'(.+)$/i.exec(params.get('filename*') || '');
  if (extended) {
    try {
      return decodeURIComponent(extended[1]);
    } catch {
      // A broken escape: the plain form below.
    }
  }
  return params.get('filename') || null;
}

// With a token, a plain link cannot carry it: fetch the bytes with the bearer and save them
// through a blob URL (the whole file is held in memory: fine for the sizes a browser handles,
// use fsctl or curl for large images).
export async function downloadWithToken(id, zip, fallbackName) {
  const resp = await call('GET', downloadUrl(id, zip).slice(BASE.length));
  const name = dispositionFilename(resp.headers.get('Content-Disposition') || '') ?? fallbackName;
  const blob = await resp.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
