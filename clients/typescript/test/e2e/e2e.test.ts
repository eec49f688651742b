/**
 * The SDK against a real stack (tansu, PostgreSQL, Redis, the bridge and
 * two gateways), asserting what an application sees: every message once,
 * in order, across a node drain, a token expiry, a cursor from another log
 * and a network that blocks WebSockets.
 */

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { SwitchyardClient, type ClientOptions } from '../../src/client.js';
import { MemoryCursorStore } from '../../src/store.js';
import type { Message } from '../../src/subscription.js';
import type { WebSocketConstructor } from '../../src/transport/types.js';
import { UpgradeBlockingProxy } from '../support/proxy.js';
import { foreignCursor, news, Stack, waitFor } from '../support/stack.js';

let stack: Stack;
const clients: SwitchyardClient[] = [];

before(async () => {
  stack = await Stack.start({ gateways: 2 });
});

after(async () => {
  for (const c of clients) c.disconnect();
  await stack?.stop();
});

function client(user: string, products: string[], opts: Partial<ClientOptions> & { ttl?: number } = {}) {
  let tokens = 0;
  const c = new SwitchyardClient({
    url: stack.gateways.map((g) => g.url),
    getToken: () => {
      tokens++;
      return stack.token({ sub: user, products }, opts.ttl ?? 600);
    },
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    cursorStore: new MemoryCursorStore(),
    reconnect: { initialDelayMs: 200, maxDelayMs: 2000 },
    ...opts,
  });
  clients.push(c);
  return { c, tokens: () => tokens };
}

function ns(msgs: Message<{ n: number }>[]): number[] {
  return msgs.map((m) => m.payload.n);
}

const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test('a draining node hands its clients to the other node, which resumes them with nothing lost or repeated', async () => {
  const run = `drain-${Date.now()}`;
  const { c } = client('drain-user', ['CHLT']);
  const got: Message<{ n: number }>[] = [];
  const hints: number[] = [];
  const urls: string[] = [];
  c.on('reconnecting', (e) => e.serverHint && hints.push(e.delayMs));
  c.on('connected', (e) => urls.push(e.url));
  // Only this run's events: News replays today's lookback window first.
  c.subscribe<{ n: number }>('News', { message: (m) => m.id.startsWith(run) && got.push(m) });
  c.connect();
  await c.ready(10_000);
  assert.equal(urls[0], stack.gateways[0]?.url);
  await stack.produce(range(1, 5).map((n) => news(`${run}-${n}`, ['CHLT'], n)));
  await waitFor('the first five', () => got.length >= 5);

  // Drain node 0 while events keep coming.
  await stack.term(0);
  for (let n = 6; n <= 40; n++) {
    await stack.produce([news(`${run}-${n}`, ['CHLT'], n)]);
    await new Promise((r) => setTimeout(r, 60));
  }
  await waitFor('all forty', () => got.length >= 40, 30_000);
  await stack.waitExit(0);
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(ns(got), range(1, 40), 'once, in order');
  assert.equal(hints.length, 1, 'the reconnect followed the server hint');
  assert.ok((hints[0] as number) < 250);
  assert.equal(urls.at(-1), stack.gateways[1]?.url);
  // A fresh node replaces node 0 for the next tests.
  await stack.startGateway();
  stack.gateways = stack.gateways.filter((g) => g.index !== 0);
});

test('a cursor from another log is reported as unrecovered, and the lookback window replays', async () => {
  const run = `epoch-${Date.now()}`;
  const first = client('epoch-user', ['Sfc']);
  const seen: Message<{ n: number }>[] = [];
  first.c.subscribe<{ n: number }>('News', { message: (m) => m.id.startsWith(run) && seen.push(m) });
  first.c.connect();
  await first.c.ready(10_000);
  await stack.produce(range(1, 3).map((n) => news(`${run}-${n}`, ['Sfc'], n)));
  await waitFor('three messages', () => seen.length >= 3);
  first.c.disconnect();

  // As if the database had been restored from a backup since.
  const store = new MemoryCursorStore();
  store.set('epoch-user:News', foreignCursor((seen[2] as Message).cursor));
  const second = client('epoch-user', ['Sfc'], { cursorStore: store });
  const lost: (string | undefined)[] = [];
  const replayed: Message<{ n: number }>[] = [];
  second.c.subscribe<{ n: number }>('News', {
    unrecovered: (e) => lost.push(e.cursor),
    message: (m) => m.id.startsWith(run) && replayed.push(m),
  });
  second.c.connect();
  await waitFor('the replay', () => replayed.length >= 3);
  assert.equal(lost.length, 1);
  assert.notEqual(lost[0], (seen[2] as Message).cursor);
  assert.deepEqual(ns(replayed), [1, 2, 3]);
  // The unusable cursor was replaced by a valid one.
  await waitFor('a fresh cursor in the store', () => {
    const c = store.get('epoch-user:News');
    return c !== undefined && c !== lost[0];
  });
});

test('close 4001 at token expiry: a fresh token, a new connection, and the subscription resumes', async () => {
  const run = `exp-${Date.now()}`;
  const { c, tokens } = client('expiring-user', ['CHLT'], { ttl: 3, tokenRefreshMarginMs: false });
  const got: Message<{ n: number }>[] = [];
  const codes: number[] = [];
  c.on('disconnected', (e) => codes.push(e.code));
  c.subscribe<{ n: number }>('News', { message: (m) => m.id.startsWith(run) && got.push(m) });
  c.connect();
  await c.ready(10_000);
  await stack.produce([news(`${run}-1`, ['CHLT'], 1)]);
  await waitFor('the first message', () => got.length >= 1);
  await waitFor('the expiry close', () => codes.includes(4001), 10_000);
  await stack.produce([news(`${run}-2`, ['CHLT'], 2), news(`${run}-3`, ['CHLT'], 3)]);
  await waitFor('messages after the new token', () => got.length >= 3, 15_000);
  assert.deepEqual(ns(got), [1, 2, 3]);
  assert.ok(tokens() >= 2);
  c.disconnect();
});

test('a token refreshed before exp keeps the same connection', async () => {
  const run = `refresh-${Date.now()}`;
  const { c, tokens } = client('refreshing-user', ['CHLT'], { ttl: 3 });
  const got: Message<{ n: number }>[] = [];
  const closes: number[] = [];
  c.on('disconnected', (e) => closes.push(e.code));
  c.subscribe<{ n: number }>('News', { message: (m) => m.id.startsWith(run) && got.push(m) });
  c.connect();
  await c.ready(10_000);
  const connection = c.connectionId;
  // Two token lifetimes and more; each token is replaced half-way.
  for (let n = 1; n <= 4; n++) {
    await stack.produce([news(`${run}-${n}`, ['CHLT'], n)]);
    await new Promise((r) => setTimeout(r, 1500));
  }
  await waitFor('four messages', () => got.length >= 4);
  assert.deepEqual(ns(got), range(1, 4));
  assert.deepEqual(closes, [], 'never disconnected');
  assert.equal(c.connectionId, connection);
  assert.ok(tokens() >= 3, `getToken called ${tokens()} times`);
  c.disconnect();
});

test('where WebSockets are blocked the client long-polls from its cursor, and moves back when they work', async () => {
  const run = `lp-${Date.now()}`;
  const proxy = new UpgradeBlockingProxy(new URL(stack.gateways[1]?.url as string));
  const url = await proxy.listen();
  try {
    const { c } = client('poll-user', ['Sfc'], { url, fallbackAfter: 2, upgradeIntervalMs: 2000 });
    const got: Message<{ n: number }>[] = [];
    const transports: string[] = [];
    c.on('connected', (e) => transports.push(e.transport));
    c.subscribe<{ n: number }>('News', { message: (m) => m.id.startsWith(run) && got.push(m) });
    c.connect();
    await c.ready(10_000);
    await stack.produce(range(1, 3).map((n) => news(`${run}-${n}`, ['Sfc'], n)));
    await waitFor('three over WebSocket', () => got.length >= 3);

    // The network starts refusing WebSockets, and the open one is cut.
    proxy.blockUpgrades = true;
    proxy.cutTunnels();
    await stack.produce(range(4, 8).map((n) => news(`${run}-${n}`, ['Sfc'], n)));
    await waitFor('long-poll', () => c.transportKind === 'longpoll', 15_000);
    await waitFor('eight', () => got.length >= 8, 15_000);
    await stack.produce(range(9, 10).map((n) => news(`${run}-${n}`, ['Sfc'], n)));
    await waitFor('ten over long-poll', () => got.length >= 10, 15_000);
    assert.ok(proxy.upgradesRefused >= 2);

    // WebSockets work again: the client upgrades and carries on.
    proxy.blockUpgrades = false;
    await waitFor('the WebSocket again', () => c.transportKind === 'websocket', 10_000);
    await stack.produce(range(11, 12).map((n) => news(`${run}-${n}`, ['Sfc'], n)));
    await waitFor('twelve', () => got.length >= 12, 15_000);
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(ns(got), range(1, 12), 'once, in order, across both transports');
    assert.deepEqual(transports, ['websocket', 'longpoll', 'websocket']);
    c.disconnect();
  } finally {
    await proxy.close();
  }
});

test('publish resolves once stored, and refusals carry the protocol code', async () => {
  const { c } = client('publisher', ['CHLT']);
  const chat: Message<{ text: string }>[] = [];
  c.subscribe<{ text: string }>('Chat', { message: (m) => chat.push(m) });
  c.connect();
  await c.ready(10_000);
  const marker = `hello-${Date.now()}`;
  await c.publish('Chat', { text: marker });
  await waitFor('our chat message', () => chat.some((m) => m.payload.text === marker));
  await assert.rejects(c.publish('News', { text: 'no' }), (e: { code: string }) => e.code === 'not_publishable');
  await assert.rejects(c.publish('NoSuchTopic', {}), (e: { code: string }) => e.code === 'bad_request');
  c.disconnect();
});
