// Shared by the console scenarios: Debian's Chromium through playwright-core, screenshots,
// axe-core, and small checks. A missing browser is an error, never a skip.

import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import { createReadStream, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(import.meta.url);
export const AXE = require.resolve('axe-core');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export function args() {
  const [base, artifacts, ...rest] = process.argv.slice(2);
  if (!base || !artifacts) {
    console.error('usage: node <scenario>.mjs <base-url> <artifacts-dir> ...');
    process.exit(2);
  }
  mkdirSync(artifacts, { recursive: true });
  return { base: base.replace(/\/$/, ''), artifacts, rest };
}

export async function launch(userDataDir) {
  // A fresh profile, and no traffic to Google's hosts: the machine's network is closed.
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1280, height: 900 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

let step = 0;
export async function shot(page, artifacts, name) {
  step += 1;
  const file = path.join(artifacts, `${String(step).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
}

export function log(...a) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...a);
}

// Runs axe-core on the page as it is; fails on serious or critical violations.
export async function axe(page, what) {
  // Not page.addScriptTag: it inserts an inline script, which the console's CSP refuses (as
  // it should). An evaluation through the DevTools protocol is not subject to the page's CSP.
  if (!(await page.evaluate(() => Boolean(window.axe)))) {
    await page.evaluate(readFileSync(AXE, 'utf8') + '\n;void 0');
  }
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5),
    }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  log(`axe (${what}): ${result.length} violation(s), ${bad.length} serious or critical`);
  for (const v of result) log(`  ${v.impact} ${v.id}: ${v.help} at ${v.nodes.join(', ')}`);
  if (bad.length) throw new Error(`axe found serious or critical violations on ${what}: ${JSON.stringify(bad)}`);
  return result;
}

export function sha256File(file) {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file)
      .on('data', (d) => h.update(d))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject);
  });
}

export async function sha256Url(url, headers = {}) {
  const resp = await fetch(url, { headers });
  if (!resp.ok) throw new Error(`GET ${url}: ${resp.status} ${await resp.text()}`);
  const h = createHash('sha256');
  let n = 0;
  for await (const chunk of resp.body) {
    h.update(chunk);
    n += chunk.length;
  }
  return { sha256: h.digest('hex'), bytes: n };
}

export function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

export async function until(what, f, { timeout = 30_000, every = 100 } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

// Fails the run on a page error or a Content-Security-Policy violation; `allow` filters
// console errors that the scenario expects (a 401 it provokes).
export function watch(page, problems, allow = () => false) {
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const t = m.text();
    if (allow(t)) return;
    problems.push(`console error: ${t}`);
  });
  page.on('dialog', (d) => d.accept().catch(() => {}));
}

// Runs a scenario, printing its error and exiting non-zero on failure.
export async function main(f) {
  const started = Date.now();
  try {
    await f();
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    console.error(`FAILED after ${((Date.now() - started) / 1000).toFixed(1)} s:`, e && e.stack ? e.stack : e);
    process.exitCode = 1;
  }
}
