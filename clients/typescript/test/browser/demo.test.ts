/**
 * The demo page in headless Chromium against a real stack: a user sees
 * only their products' events; with the network switched off and on, the
 * events missed meanwhile appear, each once, marked as caught up; after a
 * reload the page resumes from the cursor kept in localStorage.
 */

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { DemoServer, launchChromium } from '../support/demo.js';
import { news, Stack } from '../support/stack.js';

let stack: Stack;
let demo: DemoServer;
let browser: Browser;
let cleanup: () => Promise<void>;

before(async () => {
  stack = await Stack.start({ gateways: 2 });
  demo = await DemoServer.start(stack);
  ({ browser, cleanup } = await launchChromium());
});

after(async () => {
  await cleanup?.();
  await demo?.stop();
  await stack?.stop();
});

interface Row {
  id: string;
  n: number;
  tag: string;
}

async function feed(page: Page): Promise<Row[]> {
  return page.$$eval('#feed li', (lis) =>
    lis.map((li) => ({
      id: (li as HTMLElement).dataset.id ?? '',
      n: Number((li as HTMLElement).dataset.n),
      tag: (li as HTMLElement).dataset.tag ?? '',
    })),
  );
}

async function waitForState(page: Page, state: string, timeout = 20_000): Promise<void> {
  await page.waitForFunction((s) => document.getElementById('state')?.dataset.state === s, state, { timeout });
}

async function waitForRows(page: Page, n: number, timeout = 20_000): Promise<void> {
  await page.waitForFunction((k) => document.querySelectorAll('#feed li').length >= k, n, { timeout });
}

test('switching the network off and on catches the missed events up, once', async () => {
  const run = `web-${Date.now()}`;
  const context: BrowserContext = await browser.newContext();
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${demo.url}?user=alice`);
  await waitForState(page, 'connected');
  assert.equal(await page.textContent('#products'), 'CHLT, Sfc');

  // Alice has CHLT and Sfc; the Mkt event is not hers.
  await stack.produce([
    news(`${run}-1`, ['CHLT'], 1),
    news(`${run}-x`, ['Mkt'], 99),
    news(`${run}-2`, ['Sfc'], 2),
    news(`${run}-3`, ['CHLT', 'FullAccess'], 3),
  ]);
  await waitForRows(page, 3);

  await context.setOffline(true);
  await page.waitForFunction(() => document.getElementById('state')?.dataset.state !== 'connected', null, {
    timeout: 10_000,
  });
  await stack.produce([4, 5, 6, 7, 8].map((n) => news(`${run}-${n}`, ['CHLT'], n)));
  // Long enough for a few failed reconnect attempts while offline.
  await page.waitForTimeout(2000);
  assert.equal((await feed(page)).length, 3, 'nothing arrives while offline');

  await context.setOffline(false);
  await waitForState(page, 'connected');
  await waitForRows(page, 8);
  await page.waitForTimeout(1000);
  const rows = (await feed(page)).reverse();
  assert.deepEqual(
    rows.map((r) => r.n),
    [1, 2, 3, 4, 5, 6, 7, 8],
    'every event once, in order, none out of scope',
  );
  assert.deepEqual(
    rows.filter((r) => r.tag === 'caught-up').map((r) => r.n),
    [4, 5, 6, 7, 8],
  );
  assert.equal(await page.textContent('#caughtup'), '5');
  assert.equal(await page.textContent('#unrecovered'), '0');
  await page.screenshot({ path: 'test-results/demo-after-reconnect.png', fullPage: true });

  // A reload resumes from the cursor in localStorage: no replay of 1–8.
  await page.reload();
  await waitForState(page, 'connected');
  await page.waitForFunction(() => document.getElementById('resume')?.textContent?.includes('stored cursor'), null, {
    timeout: 10_000,
  });
  await stack.produce([news(`${run}-9`, ['Sfc'], 9)]);
  await waitForRows(page, 1);
  await page.waitForTimeout(1000);
  assert.deepEqual(
    (await feed(page)).map((r) => r.n),
    [9],
  );
  assert.deepEqual(errors, []);
  await context.close();
});

test('another demo user sees only their own products', async () => {
  const run = `bob-${Date.now()}`;
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${demo.url}?user=bob`);
  await waitForState(page, 'connected');
  // Bob starts without a cursor: today's lookback window (Sfc only) first.
  await page.waitForTimeout(1000);
  const before = (await feed(page)).length;
  await stack.produce([news(`${run}-1`, ['CHLT'], 101), news(`${run}-2`, ['Sfc'], 102)]);
  await page.waitForFunction(
    (id) => !!document.querySelector(`#feed li[data-id="${id}"]`),
    `${run}-2`,
    { timeout: 20_000 },
  );
  await page.waitForTimeout(500);
  const rows = await feed(page);
  assert.equal(rows.length, before + 1);
  assert.ok(!rows.some((r) => r.id === `${run}-1`), 'CHLT is not Bob’s');
  await context.close();
});
