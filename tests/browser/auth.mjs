// The console with authentication on (FS_AUTH=token), in headless Chromium against a real
// server: the page loads without a credential and asks for a token; a refused token brings
// the prompt back with the service's message; with a good one the page lists, uploads (the
// chunks and the merge carry the bearer) and downloads through a blob URL, and the saved
// bytes are the file's; forgetting the token brings the prompt back.
//
// node auth.mjs <base-url> <artifacts-dir> <token> <image.img>

import { mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { args, launch, shot, axe, sha256File, assert, until, watch, log, main } from './common.mjs';

const { base, artifacts, rest } = args();
const [token, image] = rest;
if (!token || !image) {
  console.error('usage: node auth.mjs <base-url> <artifacts-dir> <token> <image.img>');
  process.exit(2);
}

await main(async () => {
  const profile = mkdtempSync(path.join(os.tmpdir(), 'fs-console-chromium-'));
  const context = await launch(profile);
  const problems = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    // The 401s this scenario provokes are logged by Chromium as failed loads.
    watch(page, problems, (t) => t.includes('401'));
    const apiCalls = [];
    page.on('request', (r) => {
      if (new URL(r.url()).pathname.startsWith('/image-management/v1/')) apiCalls.push(r);
    });

    // No credential: the page and its assets load, the API refuses, the prompt shows.
    const resp = await page.goto(base + '/');
    assert(resp.status() === 200, `the page answered ${resp.status()}`);
    const dialog = page.getByRole('dialog', { name: 'Sign in' });
    await dialog.waitFor();
    await axe(page, 'the token prompt');
    await shot(page, artifacts, 'token-prompt');

    // A refused token: the prompt comes back with the service's message.
    await page.fill('#token-input', 'not-a-token');
    await dialog.getByRole('button', { name: 'Sign in' }).click();
    const error = page.locator('#token-error');
    await until('the refusal', async () => (await dialog.isVisible()) && (await error.isVisible()));
    const said = await error.textContent();
    log(`refusal shown: ${said}`);
    assert(said.startsWith('The service refused the token: '), said);
    await shot(page, artifacts, 'token-refused');

    // The right token.
    await page.fill('#token-input', token);
    await dialog.getByRole('button', { name: 'Sign in' }).click();
    await until('the prompt to close', async () => !(await dialog.isVisible()));
    await until('the listing', () => page.locator('#empty').isVisible());
    assert((await page.locator('#who').textContent()).includes('Signed in'), 'signed in');

    // An upload: every chunk and the merge carry the bearer.
    const name = path.basename(image);
    const size = statSync(image).size;
    const expected = await sha256File(image);
    await page.setInputFiles('#file-input', image);
    const item = page.locator('li.upload').first();
    await until('the upload', async () => (await item.getAttribute('data-state')) === 'done', { timeout: 60_000 });
    const row = page.locator(`tr[data-name="${name}"]`);
    await row.waitFor();
    const posts = apiCalls.filter((r) => r.method() === 'POST');
    assert(posts.length >= 2, `${posts.length} POSTs`);
    for (const r of posts) {
      assert((await r.allHeaders()).authorization === `Bearer ${token}`, `${r.url()} without the bearer`);
    }
    assert((await row.locator('td').first().textContent()) === 'alice', 'the image is the token\'s user\'s');
    await axe(page, 'the console signed in');
    await shot(page, artifacts, 'signed-in');

    // A download, fetched with the bearer and saved through a blob URL.
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      row.getByRole('button', { name: `Download ${name}` }).click(),
    ]);
    assert(download.suggestedFilename() === name, `saved as ${download.suggestedFilename()}`);
    const saved = path.join(profile, 'saved');
    await download.saveAs(saved);
    assert(statSync(saved).size === size, 'the saved size');
    assert((await sha256File(saved)) === expected, 'the saved bytes are the file\'s');
    log('the download saved through a blob URL matches the file');

    // Forgetting the token: the next call is refused and the prompt is back.
    await page.getByRole('button', { name: 'Forget token' }).click();
    await dialog.waitFor();
    assert(!(await error.isVisible()), 'no refusal message without a token');
    await shot(page, artifacts, 'forgotten');

    assert(problems.length === 0, `problems in the page:\n${problems.join('\n')}`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
