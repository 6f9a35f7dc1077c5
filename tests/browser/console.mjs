// The console without authentication, in headless Chromium against a real server:
// upload of a 30 MiB qcow2 with a reload half way and a resume that sends only the missing
// chunks, the stored bytes compared by SHA-256; details; slim with its progress bar then
// "slimmed"; re-check; a .zip uploaded as another user, the user filter; a delete confirmed
// in its dialog; axe-core on each view. The first file is chosen from the keyboard (Enter on
// the drop zone), the .zip is dropped on it.
//
// Also: pause, resume and cancel of an upload (DELETE /images/upload drops its chunks).
//
// node console.mjs <base-url> <artifacts-dir> <image.qcow2> <archive.zip> <other.img>

import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { args, launch, shot, axe, sha256File, sha256Url, assert, until, watch, log, main } from './common.mjs';

const { base, artifacts, rest } = args();
const [image, archive, other] = rest;
if (!image || !archive || !other) {
  console.error('usage: node console.mjs <base-url> <artifacts-dir> <image.qcow2> <archive.zip> <other.img>');
  process.exit(2);
}
const API = `${base}/image-management/v1`;
const UPLOAD_PATH = '/image-management/v1/images/upload';

async function resumeQuery(identifier) {
  const r = await fetch(`${API}/images/upload?identifier=${encodeURIComponent(identifier)}`);
  assert(r.ok, `resume query answered ${r.status}`);
  return r.json();
}

// Records, in the page, every badge text and progress value a row shows (the polling may
// replace a state before a screenshot could catch it).
async function recordRow(page, name) {
  await page.evaluate((name) => {
    window.seen = { badges: new Set(), rates: new Set() };
    const look = () => {
      const tr = document.querySelector(`tr[data-name="${CSS.escape(name)}"]`);
      if (!tr) return;
      for (const b of tr.querySelectorAll('.badge')) window.seen.badges.add(b.textContent);
      for (const p of tr.querySelectorAll('progress')) window.seen.rates.add(p.value);
    };
    new MutationObserver(look).observe(document.getElementById('rows'), { childList: true, subtree: true });
  }, name);
}
const seen = (page) =>
  page.evaluate(() => ({ badges: [...window.seen.badges], rates: [...window.seen.rates] }));

const row = (page, name) => page.locator(`tr[data-name="${name}"]`);

await main(async () => {
  const profile = mkdtempSync(path.join(os.tmpdir(), 'fs-console-chromium-'));
  const context = await launch(profile);
  const problems = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    watch(page, problems);
    // File choosers are intercepted from the start: waitForEvent('filechooser') alone turns
    // the interception on without waiting for it, and a cold browser could open the real
    // (headless, invisible) dialog before it took effect.
    page.on('filechooser', () => {});
    const name = path.basename(image);
    const size = statSync(image).size;
    const expected = await sha256File(image);
    log(`image ${name}: ${size} bytes, sha256 ${expected}`);

    // The page, empty.
    await page.goto(base + '/');
    await page.locator('#images').waitFor();
    await until('the first listing', () => page.locator('#empty').isVisible());
    await axe(page, 'the empty console');
    await shot(page, artifacts, 'empty');

    // Upload with chunk requests held back after the first two, so that the reload lands
    // half way: two chunks stored, the others not.
    let chunkPosts = 0;
    const held = [];
    const throttle = (route) => {
      if (route.request().method() !== 'POST') return route.continue();
      chunkPosts += 1;
      if (chunkPosts <= 2) return route.continue();
      held.push(route); // never answered: the reload drops it
    };
    const isChunk = (url) => url.pathname === UPLOAD_PATH;
    await page.route(isChunk, throttle);
    // From the keyboard: the drop zone is a button that opens the file chooser.
    await page.focus('#drop');
    const [chooser] = await Promise.all([page.waitForEvent('filechooser'), page.keyboard.press('Enter')]);
    await chooser.setFiles(image);
    const item = page.locator('li.upload').first();
    const identifier = await item.getAttribute('data-identifier');
    log(`identifier ${identifier}`);
    const half = await until('two chunks on the server', async () => {
      const s = await resumeQuery(identifier);
      return s.chunks.length >= 2 && held.length >= 1 ? s : null;
    });
    const total = Math.ceil(size / (8 << 20));
    assert(half.chunks.length === 2 && half.chunks.length < total, `half way: ${JSON.stringify(half)}`);
    await until('the progress bar to move', async () => Number(await item.locator('progress').getAttribute('value')) > 0);
    await shot(page, artifacts, 'upload-half-way');

    await page.reload();
    for (const r of held) await r.abort().catch(() => {});
    await page.unroute(isChunk, throttle);
    const after = await resumeQuery(identifier);
    log(`after the reload the service holds chunks ${after.chunks.map((c) => c.chunkNumber)} of ${total}`);
    assert(after.chunks.length > 0 && after.chunks.length < total, 'some but not all chunks are stored');

    // The page remembers the upload and asks for the file again.
    const pending = page.locator(`#pending li[data-identifier="${identifier}"]`);
    await pending.waitFor();
    assert((await pending.textContent()).includes('select the file again to resume'), 'the pending upload asks for the file');
    await axe(page, 'the console with an unfinished upload');
    await shot(page, artifacts, 'after-reload');

    // Resume: only the missing chunks are sent.
    const sentAfter = [];
    page.on('request', (r) => {
      if (r.method() === 'POST' && new URL(r.url()).pathname === UPLOAD_PATH) sentAfter.push(r);
    });
    await page.setInputFiles('#file-input', image);
    const resumed = page.locator(`li.upload[data-identifier="${identifier}"]`);
    await resumed.waitFor();
    await until('the upload to finish', async () => (await resumed.getAttribute('data-state')) === 'done', { timeout: 60_000 });
    assert(!(await pending.count()), 'the pending entry is gone');
    const stats = await resumed.locator('.stats').textContent();
    log(`upload line: ${stats}`);
    assert(
      sentAfter.length === total - after.chunks.length,
      `after the reload ${sentAfter.length} chunks were sent, expected ${total - after.chunks.length}`,
    );
    assert(stats.includes(`${after.chunks.length} chunks already on the server`), 'the line says chunks were skipped');

    // The row, checked.
    await row(page, name).waitFor();
    await until('the check', async () => (await row(page, name).locator('td.check').textContent()).trim() === 'ok', { timeout: 60_000 });
    await shot(page, artifacts, 'uploaded');

    // The stored bytes are the file's.
    const images = await (await fetch(`${API}/images`)).json();
    const rec = images.find((i) => i.fileName === name);
    assert(rec, 'the image is listed by the API');
    const got = await sha256Url(`${API}/images/${rec.imageId}/action/download`);
    assert(got.bytes === size && got.sha256 === expected, `downloaded ${got.bytes} bytes, sha256 ${got.sha256}`);
    log('the downloaded bytes match the file');
    const href = await row(page, name).getByRole('link', { name: `Download ${name}` }).getAttribute('href');
    assert(href.endsWith(`/images/${rec.imageId}/action/download`), `download link ${href}`);
    const zipHref = await row(page, name).getByRole('link', { name: `Download as zip ${name}` }).getAttribute('href');
    assert(zipHref.endsWith('?isZip=true'), `zip link ${zipHref}`);

    // Details.
    await page.getByRole('button', { name: `Details of ${name}` }).click();
    const details = page.locator('#details-list');
    await details.waitFor();
    const text = await details.textContent();
    assert(text.includes('qcow2') && text.includes(expected), `details: ${text}`);
    await axe(page, 'the details view');
    await shot(page, artifacts, 'details');
    await page.getByRole('button', { name: 'Close' }).click();

    // Slim: progress, then "slimmed".
    await recordRow(page, name);
    await page.getByRole('button', { name: `Slim ${name}` }).click();
    await until('"slimmed"', async () => (await row(page, name).locator('td.slim .badge').textContent()) === 'slimmed', { timeout: 90_000 });
    const slimSeen = await seen(page);
    log(`slim: badges ${JSON.stringify(slimSeen.badges)}, progress values ${JSON.stringify(slimSeen.rates)}`);
    assert(slimSeen.badges.includes('slimming'), 'the row showed "slimming"');
    assert(slimSeen.rates.length >= 1, 'the row showed a progress bar');
    await shot(page, artifacts, 'slimmed');

    // Re-check: "checking", then "ok" again.
    await recordRow(page, name);
    await page.getByRole('button', { name: `Re-check ${name}` }).click();
    await until('the re-check', async () => {
      const s = await seen(page);
      return s.badges.includes('checking') && (await row(page, name).locator('td.check').textContent()).trim() === 'ok';
    }, { timeout: 60_000 });
    await shot(page, artifacts, 'rechecked');

    // A .zip, uploaded as another user; the filter by user.
    // Dropped on the drop zone (a drop event carrying the file, as a drag from the desktop).
    await page.fill('#upload-user', 'alice');
    const bytes = readFileSync(archive).toString('base64');
    const transfer = await page.evaluateHandle(({ bytes, name }) => {
      const dt = new DataTransfer();
      const raw = Uint8Array.from(atob(bytes), (c) => c.charCodeAt(0));
      dt.items.add(new File([raw], name, { type: 'application/zip' }));
      return dt;
    }, { bytes, name: path.basename(archive) });
    await page.dispatchEvent('#drop', 'dragenter', { dataTransfer: transfer });
    await page.dispatchEvent('#drop', 'drop', { dataTransfer: transfer });
    const inner = 'small.img';
    await row(page, inner).waitFor({ timeout: 60_000 });
    assert((await row(page, inner).locator('td').first().textContent()) === 'alice', 'the zip image is alice\'s');
    await until('the zip image check', async () => (await row(page, inner).locator('td.check').textContent()).includes('not checked'));
    await page.fill('#filter-user', 'alice');
    await page.selectOption('#page-size', '10');
    const [listing] = await Promise.all([
      page.waitForRequest((r) => new URL(r.url()).pathname === '/image-management/v1/images'),
      page.getByRole('button', { name: 'Filter' }).click(),
    ]);
    const q = new URL(listing.url()).searchParams;
    assert(q.get('userId') === 'alice' && q.get('limit') === '10' && q.get('offset') === '0', `listing ${listing.url()}`);
    assert(await page.locator('#next').isDisabled(), 'no next page');
    await until('the filter', async () => (await page.locator('#rows tr').count()) === 1);
    await shot(page, artifacts, 'filtered');
    await page.fill('#filter-user', '');
    await page.getByRole('button', { name: 'Filter' }).click();
    await until('both rows', async () => (await page.locator('#rows tr').count()) === 2);

    // Delete, with confirmation: Cancel keeps the row, Delete removes it.
    await page.getByRole('button', { name: `Delete ${inner}` }).click();
    const dialog = page.getByRole('dialog', { name: 'Delete image?' });
    await dialog.waitFor();
    await axe(page, 'the delete confirmation');
    await shot(page, artifacts, 'delete-confirmation');
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await page.waitForTimeout(300);
    assert((await row(page, inner).count()) === 1, 'Cancel keeps the row');
    await page.getByRole('button', { name: `Delete ${inner}` }).click();
    await dialog.getByRole('button', { name: 'Delete' }).click();
    await until('the row to go', async () => (await row(page, inner).count()) === 0);
    const left = await (await fetch(`${API}/images`)).json();
    assert(left.length === 1 && left[0].fileName === name, `left: ${left.map((i) => i.fileName)}`);
    await axe(page, 'the console after a delete');
    await shot(page, artifacts, 'deleted');

    // Pause, resume, cancel: chunks after the first are held back again.
    await page.fill('#upload-user', '');
    chunkPosts = 0;
    held.length = 0;
    await page.route(isChunk, throttle);
    const deletes = [];
    page.on('request', (r) => {
      if (r.method() === 'DELETE' && new URL(r.url()).pathname === UPLOAD_PATH) deletes.push(r);
    });
    await page.setInputFiles('#file-input', other);
    const otherName = path.basename(other);
    const up = page.locator('li.upload').filter({ hasText: otherName });
    const otherId = await up.getAttribute('data-identifier');
    await until('two chunks of the other file', async () => (await resumeQuery(otherId)).chunks.length === 2 && held.length >= 1);
    await up.getByRole('button', { name: `Pause ${otherName}` }).click();
    await until('paused', async () => (await up.getAttribute('data-state')) === 'paused');
    const heldBefore = held.length;
    await shot(page, artifacts, 'paused');
    await up.getByRole('button', { name: `Resume ${otherName}` }).click();
    await until('the resumed upload to send again', async () => held.length > heldBefore);
    assert((await up.getAttribute('data-state')) === 'uploading', 'uploading again');
    await up.getByRole('button', { name: `Cancel ${otherName}` }).click();
    await until('the cancel', async () => deletes.length === 1 && (await up.count()) === 0);
    for (const r of held) await r.abort().catch(() => {});
    await page.unroute(isChunk, throttle);
    const cancelled = await resumeQuery(otherId);
    assert(cancelled.chunks.length === 0 && cancelled.state === 'none', `after cancel: ${JSON.stringify(cancelled)}`);
    assert(!(await page.locator(`#pending li[data-identifier="${otherId}"]`).count()), 'not remembered');
    log('pause, resume and cancel: the service holds nothing of the cancelled upload');

    assert(problems.length === 0, `problems in the page:\n${problems.join('\n')}`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
