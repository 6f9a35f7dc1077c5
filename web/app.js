// The console page: images table, details, actions, uploads, token prompt.

import * as api from './api.js';
import { Upload, pendingUploads, discard, identifierFor } from './upload.js';

const $ = (id) => document.getElementById(id);

// checkStatusResponse.status -> [word, badge class] (SPEC section 3).
const CHECK = {
  0: ['ok', 'good'],
  1: ['corrupted', 'bad'],
  2: ['leaked clusters', 'warn'],
  3: ['check failed', 'bad'],
  4: ['checking', 'busy'],
  5: ['not checked (raw/ISO)', 'neutral'],
  6: ['check timed out', 'bad'],
};
// slimStatus -> [word, badge class].
const SLIM = {
  0: ['not slimmed', 'neutral'],
  1: ['slimming', 'busy'],
  2: ['slimmed', 'good'],
  3: ['slim failed', 'bad'],
};

const view = { offset: 0, limit: 25, user: '', images: [], detailsId: null };
const uploads = [];
let pollTimer = null;

// ---------- formatting ----------

export function human(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = bytes;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

function duration(secs) {
  if (!Number.isFinite(secs)) return '—';
  secs = Math.round(secs);
  if (secs < 60) return `${secs} s`;
  const m = Math.floor(secs / 60);
  if (m < 60) return `${m} min ${secs % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function badge([word, kind], title) {
  return el('span', { class: `badge ${kind}`, text: word, title });
}

// ---------- notices and the token prompt ----------

function notify(message, kind = 'error') {
  const n = $('notice');
  n.textContent = message;
  n.className = `notice ${kind}`;
  n.hidden = false;
}

function clearNotice() {
  $('notice').hidden = true;
}

function showError(e) {
  if (e && e.status === 401) return; // the token prompt says it
  notify(e && e.message ? e.message : String(e));
}

function askToken(error) {
  const d = $('token-dialog');
  const msg = $('token-error');
  if (error && api.token()) {
    // A refused token is forgotten: the prompt asks for another.
    msg.textContent = `The service refused the token: ${error.message}`;
    msg.hidden = false;
    api.setToken('');
    updateSession();
  } else if (error) {
    msg.hidden = true;
  }
  if (!d.open) {
    $('token-input').value = '';
    d.showModal();
    $('token-input').focus();
  }
}

function updateSession() {
  const has = Boolean(api.token());
  $('who').textContent = has ? 'Signed in with a token' : '';
  $('sign-out').hidden = !has;
}

// ---------- images table ----------

async function loadImages() {
  try {
    const images = await api.listImages(view.user, view.limit, view.offset);
    view.images = images;
    renderImages();
    schedulePoll();
    if (view.detailsId) {
      const img = images.find((i) => i.imageId === view.detailsId);
      if (img) renderDetails(img);
    }
  } catch (e) {
    showError(e);
  }
}

function schedulePoll() {
  clearTimeout(pollTimer);
  const busy = view.images.some(
    (i) => i.checkStatusResponse?.status === 4 || i.slimStatus === 1,
  );
  if (busy) pollTimer = setTimeout(loadImages, 700);
}

function downloadControl(img, zip) {
  const label = zip ? 'Zip' : 'Download';
  const aria = `${zip ? 'Download as zip' : 'Download'} ${img.fileName}`;
  if (!api.token()) {
    return el('a', {
      class: 'button',
      href: api.downloadUrl(img.imageId, zip),
      download: '',
      'aria-label': aria,
      text: label,
    });
  }
  return el('button', {
    type: 'button',
    'aria-label': aria,
    text: label,
    onclick: async (ev) => {
      const b = ev.currentTarget;
      b.disabled = true;
      try {
        const base = img.fileName.replace(/\.[^.]*$/, '');
        await api.downloadWithToken(img.imageId, zip, zip ? `${base}.zip` : img.fileName);
      } catch (e) {
        showError(e);
      } finally {
        b.disabled = false;
      }
    },
  });
}

function slimCell(img) {
  const cell = el('td', { class: 'slim' }, badge(SLIM[img.slimStatus] || ['unknown', 'neutral']));
  if (img.slimStatus === 1) {
    const rate = Math.max(0, Math.min(1, img.compressInfo?.compressRate || 0));
    cell.append(
      el('progress', {
        max: '1',
        value: String(rate),
        'aria-label': `Slimming ${img.fileName}`,
        'aria-valuetext': `${Math.round(rate * 100)} %`,
      }),
      el('span', { class: 'pct', text: `${Math.round(rate * 100)} %` }),
    );
  } else if (img.slimStatus === 3 && img.compressInfo?.compressMsg) {
    cell.append(el('div', { class: 'help', text: img.compressInfo.compressMsg }));
  }
  return cell;
}

function renderImages() {
  const rows = $('rows');
  rows.replaceChildren();
  for (const img of view.images) {
    const check = img.checkStatusResponse || {};
    const name = img.fileName;
    const tr = el(
      'tr',
      { dataset: { id: img.imageId, name } },
      el('th', { scope: 'row', class: 'name' },
        el('button', {
          type: 'button',
          class: 'link',
          text: name,
          'aria-label': `Details of ${name}`,
          onclick: () => showDetails(img.imageId),
        })),
      el('td', { text: img.userId }),
      el('td', { class: 'num', text: human(img.size), title: `${img.size} bytes` }),
      el('td', { text: img.uploadTime }),
      el('td', { class: 'check' }, badge(CHECK[check.status] || ['unknown', 'neutral'], check.msg)),
      slimCell(img),
      el('td', { class: 'actions' },
        downloadControl(img, false),
        downloadControl(img, true),
        el('button', {
          type: 'button',
          text: 'Slim',
          'aria-label': `Slim ${name}`,
          disabled: img.slimStatus === 1 || img.slimStatus === 2,
          onclick: () => slim(img),
        }),
        el('button', {
          type: 'button',
          text: 'Re-check',
          'aria-label': `Re-check ${name}`,
          disabled: check.status === 4,
          onclick: () => recheck(img),
        }),
        el('button', {
          type: 'button',
          class: 'danger',
          text: 'Delete',
          'aria-label': `Delete ${name}`,
          onclick: () => remove(img),
        })),
    );
    rows.append(tr);
  }
  $('empty').hidden = view.images.length > 0;
  const first = view.images.length ? view.offset + 1 : view.offset;
  $('page-info').textContent = `${first}–${view.offset + view.images.length}`;
  $('prev').disabled = view.offset === 0;
  $('next').disabled = view.images.length < view.limit;
}

// ---------- actions ----------

async function slim(img) {
  clearNotice();
  try {
    const answer = await api.slimImage(img.imageId);
    if (answer === 'compress in progress') {
      // The service answers once slimStatus is 1: show it now, the polling takes over.
      img.slimStatus = 1;
      img.compressInfo = { ...img.compressInfo, compressRate: 0 };
      renderImages();
    } else {
      notify(answer, 'info');
    }
  } catch (e) {
    showError(e);
  }
  loadImages();
}

async function recheck(img) {
  clearNotice();
  try {
    const answer = await api.checkImage(img.imageId);
    if (answer !== 'check in progress') notify(answer, 'info');
    img.checkStatusResponse = { ...img.checkStatusResponse, status: 4, msg: 'Check In Progress' };
    renderImages();
  } catch (e) {
    showError(e);
  }
  loadImages();
}

function confirmDelete(img) {
  return new Promise((resolve) => {
    const d = $('confirm-dialog');
    $('confirm-text').textContent =
      `${img.fileName} (${human(img.size)}, user ${img.userId}) will be deleted, with its slimmed copy. This cannot be undone.`;
    d.returnValue = '';
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
    d.showModal();
    d.querySelector('button[value="cancel"]').focus();
  });
}

async function remove(img) {
  if (!(await confirmDelete(img))) return;
  clearNotice();
  try {
    await api.deleteImage(img.imageId);
    if (view.detailsId === img.imageId) closeDetails();
    notify(`${img.fileName} deleted.`, 'info');
  } catch (e) {
    showError(e);
  }
  loadImages();
}

// ---------- details ----------

async function showDetails(id) {
  try {
    const img = await api.getImage(id);
    view.detailsId = id;
    renderDetails(img);
    $('details').hidden = false;
    $('details-title').focus();
  } catch (e) {
    showError(e);
  }
}

function closeDetails() {
  view.detailsId = null;
  $('details').hidden = true;
}

function renderDetails(img) {
  const c = img.checkStatusResponse || {};
  const info = c.checkInfo || {};
  const ii = info.imageInfo || {};
  const z = img.compressInfo || {};
  const rows = [
    ['Name', img.fileName],
    ['Image id', img.imageId],
    ['User', img.userId],
    ['Uploaded (UTC)', img.uploadTime],
    ['Storage', img.storageMedium],
    ['Size', `${human(img.size)} (${img.size} bytes)`],
    ['Check', `${(CHECK[c.status] || ['unknown'])[0]} — ${c.msg || ''}`],
    ['Format', ii.format || '—'],
    ['Virtual size', ii.virtual_size ? `${ii.virtual_size} GiB` : '—'],
    ['Disk size', ii.disk_size ? `${human(Number(ii.disk_size))} (${ii.disk_size} bytes)` : '—'],
    ['Check errors', ii['check-errors'] || '—'],
    ['Image end offset', ii['image-end-offset'] || '—'],
    ['MD5', img.checksum || info.checksum || '—'],
    ['SHA-256', img.sha256 || info.sha256 || '—'],
    ['Original MD5', img.originalChecksum || '—'],
    ['Original SHA-256', img.originalSha256 || '—'],
    ['Slim', `${(SLIM[img.slimStatus] || ['unknown'])[0]}${z.compressMsg ? ' — ' + z.compressMsg : ''}`],
  ];
  $('details-title').textContent = `Details: ${img.fileName}`;
  $('details-list').replaceChildren(
    ...rows.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: String(v ?? '—') })]),
  );
}

// ---------- uploads ----------

function uploadItem(u) {
  const progress = el('progress', {
    max: String(u.file.size || 1),
    value: '0',
    'aria-label': `Upload of ${u.file.name}`,
  });
  const status = el('span', { class: 'status', 'aria-live': 'polite' });
  const stats = el('span', { class: 'stats' });
  const pause = el('button', { type: 'button', text: 'Pause', 'aria-label': `Pause ${u.file.name}` });
  const cancel = el('button', { type: 'button', text: 'Cancel', 'aria-label': `Cancel ${u.file.name}` });
  const li = el(
    'li',
    { class: 'upload', dataset: { identifier: u.identifier } },
    el('div', { class: 'line' },
      el('strong', { text: u.file.name }),
      el('span', { class: 'help', text: human(u.file.size) }),
      status),
    progress,
    el('div', { class: 'line' }, stats, el('span', { class: 'buttons' }, pause, cancel)),
  );
  pause.addEventListener('click', () => {
    if (u.state === 'uploading') u.pause();
    else if (u.state === 'paused' || u.state === 'failed') u.start();
  });
  cancel.addEventListener('click', async () => {
    try {
      await u.cancel();
    } catch (e) {
      showError(e);
    }
    li.remove();
  });
  const render = () => {
    progress.value = u.sent();
    const { bps, eta } = u.rate();
    const pct = u.file.size ? Math.floor((u.sent() * 100) / u.file.size) : 100;
    let line = `${human(u.sent())} of ${human(u.file.size)} (${pct} %)`;
    if (u.state === 'uploading') line += ` · ${human(bps)}/s · ${duration(eta)} left`;
    if (u.skipped) line += ` · ${u.skipped} chunk${u.skipped > 1 ? 's' : ''} already on the server`;
    stats.textContent = line;
  };
  u.events = {
    onProgress: render,
    onUnauthorized: (e) => askToken(e),
    onState: () => {
      li.dataset.state = u.state;
      pause.textContent = u.state === 'uploading' ? 'Pause' : 'Resume';
      pause.setAttribute('aria-label', `${pause.textContent} ${u.file.name}`);
      pause.disabled = !['uploading', 'paused', 'failed'].includes(u.state);
      cancel.disabled = u.state === 'merging';
      pause.hidden = cancel.hidden = u.state === 'done';
      const words = {
        uploading: 'uploading',
        paused: 'paused',
        merging: 'merging…',
        done: 'uploaded',
        failed: 'failed',
        cancelled: 'cancelled',
      };
      status.textContent = words[u.state] || u.state;
      status.className = `status badge ${u.state === 'done' ? 'good' : u.state === 'failed' ? 'bad' : 'busy'}`;
      if (u.state === 'failed' && u.error) {
        stats.textContent = u.error.message;
        showError(u.error);
      }
      if (u.state === 'done') {
        render();
        loadImages();
        renderPending();
      }
    },
  };
  return li;
}

function addFiles(files) {
  clearNotice();
  const user = $('upload-user').value.trim();
  for (const file of files) {
    if (!/\.(qcow2|img|iso|zip)$/.test(file.name)) {
      notify(`${file.name}: only .qcow2, .img, .iso and .zip files can be uploaded.`);
      continue;
    }
    const id = identifierFor(file, user);
    if (uploads.some((u) => u.identifier === id && !['done', 'cancelled'].includes(u.state))) continue;
    const u = new Upload(file, { user });
    uploads.push(u);
    $('uploads').append(uploadItem(u));
    u.start().then(renderPending);
    renderPending();
  }
}

// Uploads remembered from an earlier page (a reload, a closed tab) and not running here.
function renderPending() {
  const running = new Set(uploads.filter((u) => u.state !== 'cancelled').map((u) => u.identifier));
  const list = pendingUploads().filter((e) => !running.has(e.identifier));
  $('pending-title').hidden = list.length === 0;
  $('pending').replaceChildren(
    ...list.map((e) =>
      el('li', { dataset: { identifier: e.identifier } },
        el('span', {},
          el('strong', { text: e.name }),
          ` (${human(e.size)}${e.user ? ', user ' + e.user : ''}) — select the file again to resume. `),
        el('button', {
          type: 'button',
          text: 'Discard',
          'aria-label': `Discard the unfinished upload of ${e.name}`,
          onclick: async () => {
            try {
              await discard(e);
            } catch (err) {
              showError(err);
            }
            renderPending();
          },
        }))),
  );
}

// ---------- wiring ----------

function wire() {
  api.whenUnauthorized((e) => askToken(e));

  $('token-form').addEventListener('submit', () => {
    api.setToken($('token-input').value.trim());
    $('token-error').hidden = true;
    updateSession();
    loadImages();
    renderPending();
  });
  $('token-dialog').addEventListener('cancel', (e) => e.preventDefault());
  $('sign-out').addEventListener('click', () => {
    api.setToken('');
    updateSession();
    view.images = [];
    renderImages();
    loadImages();
  });

  $('filter').addEventListener('submit', (e) => {
    e.preventDefault();
    view.user = $('filter-user').value.trim();
    view.limit = Number($('page-size').value);
    view.offset = 0;
    loadImages();
  });
  $('refresh').addEventListener('click', loadImages);
  $('prev').addEventListener('click', () => {
    view.offset = Math.max(0, view.offset - view.limit);
    loadImages();
  });
  $('next').addEventListener('click', () => {
    view.offset += view.limit;
    loadImages();
  });
  $('details-close').addEventListener('click', closeDetails);

  const input = $('file-input');
  input.addEventListener('change', () => {
    addFiles([...input.files]);
    input.value = '';
  });
  const drop = $('drop');
  drop.addEventListener('click', () => input.click());
  drop.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      input.click();
    }
  });
  for (const t of ['dragenter', 'dragover']) {
    drop.addEventListener(t, (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
  }
  for (const t of ['dragleave', 'drop']) {
    drop.addEventListener(t, () => drop.classList.remove('over'));
  }
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    addFiles([...(e.dataTransfer?.files || [])]);
  });
  // A drop elsewhere on the page must not navigate away from it (and lose the uploads).
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
  window.addEventListener('beforeunload', (e) => {
    if (uploads.some((u) => u.state === 'uploading' || u.state === 'merging')) e.preventDefault();
  });
}

wire();
updateSession();
renderPending();
loadImages();
