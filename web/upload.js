// Chunked, parallel, resumable uploads through POST /images/upload and /images/merge.
//
// The identifier is derived from the file (name, size, last modification) and the user it is
// uploaded as, so selecting the same file again — after a pause, a reload or a closed tab —
// finds the same upload session; the resume query (GET /images/upload?identifier=X) says
// which chunks the service already holds, and only the others are sent. Unfinished uploads
// are remembered in localStorage, because a browser cannot reopen a file by itself: the page
// lists them and asks for the file again.

import { BASE, ApiError, token, call } from './api.js';

export const CHUNK_SIZE = 8 * 1024 * 1024; // at least S3's 5 MiB part minimum
export const PARALLEL = 3;
const PENDING_KEY = 'fs-console-pending';
const RETRIES = 4;

// A 53-bit string hash (cyrb53): crypto.subtle exists only in secure contexts, and the console
// may be served over plain HTTP inside a cluster. Not a security measure: identifiers are
// per user on the service side.
function hash53(str, seed) {
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < str.length; i++) {
    const ch = str.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(16).padStart(14, '0');
}

// `[A-Za-z0-9._-]`, at most 128 characters, as the service requires.
export function identifierFor(file, user) {
  const key = `${user || ''}\n${file.name}\n${file.size}\n${file.lastModified}`;
  const stem = file.name.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 60);
  return `c-${hash53(key, 1)}${hash53(key, 2)}-${stem}`;
}

export function pendingUploads() {
  try {
    const list = JSON.parse(localStorage.getItem(PENDING_KEY) || '[]');
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

function savePending(list) {
  localStorage.setItem(PENDING_KEY, JSON.stringify(list));
}

function remember(entry) {
  const list = pendingUploads().filter((e) => e.identifier !== entry.identifier);
  list.push(entry);
  savePending(list);
}

export function forget(identifier) {
  savePending(pendingUploads().filter((e) => e.identifier !== identifier));
}

// Drops a remembered upload and its chunks on the service.
export async function discard(entry) {
  await call('DELETE', '/images/upload', {
    query: { identifier: entry.identifier, userId: entry.user || undefined },
  });
  forget(entry.identifier);
}

// One chunk, through XMLHttpRequest: fetch reports no upload progress.
function sendChunk(form, onLoaded, register) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    register(xhr);
    xhr.open('POST', `${BASE}/images/upload`);
    const t = token();
    if (t) xhr.setRequestHeader('Authorization', `Bearer ${t}`);
    xhr.upload.onprogress = (e) => onLoaded(e.loaded);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve();
      let code = 'HTTP_' + xhr.status;
      let message = `${xhr.status} ${xhr.statusText}`;
      try {
        const body = JSON.parse(xhr.responseText);
        if (body && body.message) {
          message = body.message;
          code = body.code || code;
        }
      } catch {
        if (xhr.responseText) message = xhr.responseText;
      }
      reject(new ApiError(xhr.status, code, message));
    };
    xhr.onerror = () => reject(new ApiError(0, 'NETWORK', 'the connection failed'));
    xhr.onabort = () => reject(new DOMException('paused', 'AbortError'));
    xhr.send(form);
  });
}

const transient = (e) => e instanceof ApiError && (e.status === 0 || e.status >= 500 || e.status === 429);

export class Upload {
  // `events`: onProgress(upload), onState(upload), onUnauthorized(error).
  constructor(file, { user = '', priority = '', chunkSize = CHUNK_SIZE, parallel = PARALLEL, events = {} } = {}) {
    this.file = file;
    this.user = user;
    this.priority = priority;
    this.chunkSize = chunkSize;
    this.parallel = parallel;
    this.events = events;
    this.identifier = identifierFor(file, user);
    this.totalChunks = Math.max(1, Math.ceil(file.size / chunkSize));
    this.state = 'idle';
    this.error = null;
    this.record = null;
    this.done = 0; // bytes of chunks the service holds
    this.inflight = new Map(); // chunk number -> bytes sent so far
    this.xhrs = new Set();
    this.skipped = 0; // chunks found on the service when this run started
    this.samples = [];
  }

  sent() {
    let n = this.done;
    for (const v of this.inflight.values()) n += v;
    return Math.min(n, this.file.size);
  }

  // Bytes per second over the last few seconds, and the seconds left at that rate.
  rate() {
    const now = performance.now();
    this.samples.push([now, this.sent()]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
    const [t0, b0] = this.samples[0];
    const bps = now - t0 > 250 ? ((this.sent() - b0) * 1000) / (now - t0) : 0;
    const eta = bps > 0 ? (this.file.size - this.sent()) / bps : Infinity;
    return { bps, eta };
  }

  setState(s, error) {
    this.state = s;
    this.error = error || null;
    this.events.onState?.(this);
  }

  progress() {
    this.events.onProgress?.(this);
  }

  chunkBytes(n) {
    const start = (n - 1) * this.chunkSize;
    return [start, Math.min(start + this.chunkSize, this.file.size)];
  }

  async start() {
    if (this.state === 'uploading' || this.state === 'merging' || this.state === 'done') return;
    this.setState('uploading');
    this.samples = [];
    remember({
      identifier: this.identifier,
      name: this.file.name,
      size: this.file.size,
      lastModified: this.file.lastModified,
      user: this.user,
      started: new Date().toISOString(),
    });
    try {
      const status = await call('GET', '/images/upload', {
        query: { identifier: this.identifier, userId: this.user || undefined },
      }).then((r) => r.json());
      const have = new Set();
      for (const c of status.chunks || []) {
        const [a, b] = this.chunkBytes(c.chunkNumber);
        if (c.chunkNumber <= this.totalChunks && c.size === b - a) have.add(c.chunkNumber);
      }
      this.skipped = have.size;
      this.done = 0;
      for (const n of have) {
        const [a, b] = this.chunkBytes(n);
        this.done += b - a;
      }
      const todo = [];
      if (status.state !== 'completed') {
        for (let n = 1; n <= this.totalChunks; n++) if (!have.has(n)) todo.push(n);
      }
      this.progress();
      await Promise.all(Array.from({ length: this.parallel }, () => this.worker(todo)));
      if (this.state !== 'uploading') return;
      this.setState('merging');
      this.record = await this.merge();
      forget(this.identifier);
      this.done = this.file.size;
      this.setState('done');
    } catch (e) {
      if (e.name === 'AbortError' || this.state === 'paused' || this.state === 'cancelled') return;
      this.abortAll();
      if (e.status === 401) this.events.onUnauthorized?.(e);
      this.setState('failed', e);
    }
  }

  async worker(todo) {
    while (this.state === 'uploading' && todo.length) {
      const n = todo.shift();
      try {
        await this.sendWithRetries(n);
      } catch (e) {
        if (e.name === 'AbortError') todo.unshift(n);
        throw e;
      }
    }
  }

  async sendWithRetries(n) {
    const [a, b] = this.chunkBytes(n);
    for (let attempt = 0; ; attempt++) {
      const form = new FormData();
      form.append('identifier', this.identifier);
      form.append('chunkNumber', String(n));
      form.append('totalChunks', String(this.totalChunks));
      form.append('totalSize', String(this.file.size));
      form.append('chunkSize', String(this.chunkSize));
      form.append('currentChunkSize', String(b - a));
      if (this.user) form.append('userId', this.user);
      if (this.priority !== '') form.append('priority', this.priority);
      form.append('part', this.file.slice(a, b), `${n}.part`);
      this.inflight.set(n, 0);
      try {
        await sendChunk(
          form,
          (loaded) => {
            // A late event of an aborted request (a pause) must not count again.
            if (this.state !== 'uploading' || !this.inflight.has(n)) return;
            this.inflight.set(n, Math.min(loaded, b - a));
            this.progress();
          },
          (xhr) => this.xhrs.add(xhr),
        );
        this.inflight.delete(n);
        this.done += b - a;
        this.progress();
        return;
      } catch (e) {
        this.inflight.delete(n);
        this.progress();
        if (e.name === 'AbortError' || !transient(e) || attempt >= RETRIES) throw e;
        await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
        if (this.state !== 'uploading') throw new DOMException('paused', 'AbortError');
      }
    }
  }

  async merge() {
    const form = new FormData();
    form.append('identifier', this.identifier);
    form.append('filename', this.file.name);
    form.append('totalChunks', String(this.totalChunks));
    form.append('totalSize', String(this.file.size));
    form.append('chunkSize', String(this.chunkSize));
    if (this.user) form.append('userId', this.user);
    if (this.priority !== '') form.append('priority', this.priority);
    const resp = await call('POST', '/images/merge', { body: form });
    return resp.json();
  }

  abortAll() {
    for (const x of this.xhrs) x.abort();
    this.xhrs.clear();
  }

  pause() {
    if (this.state !== 'uploading') return;
    this.setState('paused');
    this.abortAll();
    this.inflight.clear();
    this.progress();
  }

  async cancel() {
    const was = this.state;
    this.setState('cancelled');
    this.abortAll();
    this.inflight.clear();
    if (was !== 'done') {
      await call('DELETE', '/images/upload', {
        query: { identifier: this.identifier, userId: this.user || undefined },
      });
    }
    forget(this.identifier);
  }
}
