import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SwitchyardError } from '../../src/errors.js';
import type { Message } from '../../src/subscription.js';
import { FakeWebSocket, flush } from '../support/fakes.js';
import { confirm, connected, msg, setup } from '../support/setup.js';

test('messages carry topic, id, payload and cursor, in order', async () => {
  const h = setup();
  const got: Message<{ n: number }>[] = [];
  const sub = h.client.subscribe<{ n: number }>('News', { message: (m) => got.push(m) });
  assert.equal(sub.state, 'subscribing');
  const ws = await connected(h);
  confirm(ws, 'News', false);
  assert.equal(sub.state, 'subscribed');
  for (const n of [1, 2, 3]) ws.push(msg('News', n));
  assert.deepEqual(
    got.map((m) => [m.topic, m.id, m.payload.n, m.cursor, m.createdAtMs]),
    [
      ['News', 'e1', 1, 'c1', 1],
      ['News', 'e2', 2, 'c2', 1],
      ['News', 'e3', 3, 'c3', 1],
    ],
  );
  assert.equal(sub.cursor, 'c3');
  assert.equal(h.store.get('alice:News'), 'c3');
});

test('a message replayed after a reconnect is delivered once', async () => {
  const h = setup();
  const ids: string[] = [];
  const sub = h.client.subscribe('News', { message: (m) => ids.push(m.id) });
  let ws = await connected(h);
  confirm(ws, 'News');
  ws.push(msg('News', 1));
  ws.push(msg('News', 2));
  ws.serverClose(1006);
  await h.clock.advance(1000);
  ws = FakeWebSocket.last();
  ws.accept();
  await flush();
  confirm(ws, 'News', true);
  // The other node replays from an older position (e.g. the cursor write
  // lagged): ids already handled are dropped, the rest flows in order.
  for (const n of [1, 2, 3, 4]) ws.push(msg('News', n));
  assert.deepEqual(ids, ['e1', 'e2', 'e3', 'e4']);
  assert.equal(sub.duplicatesDropped, 2);
  assert.equal(sub.cursor, 'c4');
});

test('recovered: false on a resumption is surfaced as unrecovered, and the stale cursor dropped', async () => {
  const h = setup();
  const events: string[] = [];
  const sub = h.client.subscribe('News', {
    subscribed: (e) => events.push(`subscribed recovered=${e.recovered} wasRecovering=${e.wasRecovering}`),
    unrecovered: (e) => events.push(`unrecovered ${e.cursor}`),
  });
  let ws = await connected(h);
  confirm(ws, 'News', false);
  ws.push(msg('News', 5));
  ws.serverClose(1006);
  await h.clock.advance(1000);
  ws = FakeWebSocket.last();
  ws.accept();
  await flush();
  confirm(ws, 'News', false);
  assert.deepEqual(events, [
    // A first subscription without cursor is not a loss.
    'subscribed recovered=false wasRecovering=false',
    'subscribed recovered=false wasRecovering=true',
    'unrecovered c5',
  ]);
  assert.equal(sub.cursor, undefined);
  assert.equal(h.store.get('alice:News'), undefined);
});

test('a cursor restored from the store that the gateway rejects is reported too', async () => {
  const h = setup();
  h.store.set('alice:News', 'cursor-from-a-restored-database');
  const lost: (string | undefined)[] = [];
  h.client.subscribe('News', { unrecovered: (e) => lost.push(e.cursor) });
  const ws = await connected(h);
  assert.equal(confirm(ws, 'News', false).cursor, 'cursor-from-a-restored-database');
  assert.deepEqual(lost, ['cursor-from-a-restored-database']);
});

test('a refused subscription ends with a typed error; a busy one is retried', async () => {
  const h = setup();
  const ends: string[] = [];
  const refused = h.client.subscribe('Secret', {
    error: (e) => ends.push(`error ${e.code}`),
    unsubscribed: (e) => ends.push(`unsubscribed ${e.reason}`),
  });
  const busy = h.client.subscribe('News');
  const ws = await connected(h);
  const f = ws.sent.find((s) => s.type === 'subscribe' && s.topic === 'Secret') as Record<string, unknown>;
  ws.push({ type: 'error', id: f.id, code: 'forbidden', message: 'your entitlements give you no channel of topic "Secret"' });
  assert.equal(refused.state, 'unsubscribed');
  assert.deepEqual(ends, ['error forbidden', 'unsubscribed server']);
  assert.equal(h.client.getSubscription('Secret'), undefined);

  const b = ws.sent.find((s) => s.type === 'subscribe' && s.topic === 'News') as Record<string, unknown>;
  ws.push({ type: 'error', id: b.id, code: 'internal', message: 'the message log is unavailable; retry shortly' });
  assert.equal(busy.state, 'subscribing');
  await h.clock.advance(5_000);
  assert.equal(ws.sent.filter((s) => s.type === 'subscribe' && s.topic === 'News').length, 2);
});

test('a subscription the gateway ends after a refresh becomes unsubscribed', async () => {
  const h = setup();
  const sub = h.client.subscribe('News');
  const errors: SwitchyardError[] = [];
  sub.on('error', (e) => errors.push(e));
  const ws = await connected(h);
  confirm(ws, 'News');
  ws.push({ type: 'error', code: 'forbidden', message: 'subscription to News ended: your entitlements give you no channel of topic "News"' });
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(errors[0]?.code, 'forbidden');
  assert.equal(errors[0]?.topic, 'News');
});

test('unsubscribe stops delivery and tells the gateway; the topic can be subscribed again', async () => {
  const h = setup();
  const ids: string[] = [];
  const sub = h.client.subscribe('News', { message: (m) => ids.push(m.id) });
  const ws = await connected(h);
  confirm(ws, 'News');
  ws.push(msg('News', 1));
  sub.unsubscribe();
  assert.equal(ws.lastOfType('unsubscribe').topic, 'News');
  ws.push(msg('News', 2));
  assert.deepEqual(ids, ['e1']);
  assert.throws(() => h.client.subscribe('Chat') && h.client.subscribe('Chat'), /already subscribed to Chat/);
  const again = h.client.subscribe('News', { message: (m) => ids.push(m.id) });
  await flush();
  // The new subscription resumes where the old one stopped.
  assert.equal(ws.lastOfType('subscribe').cursor, 'c1');
  // Messages before its confirmation belong to the old one.
  ws.push(msg('News', 2));
  confirm(ws, 'News');
  ws.push(msg('News', 3));
  assert.deepEqual(ids, ['e1', 'e3']);
  assert.equal(again.state, 'subscribed');
});

test('a throwing handler is reported and delivery goes on', async () => {
  const h = setup();
  const ids: string[] = [];
  const sub = h.client.subscribe('News', {
    message: (m) => {
      if (m.id === 'e1') throw new Error('render failed');
      ids.push(m.id);
    },
  });
  const ws = await connected(h);
  confirm(ws, 'News');
  ws.push(msg('News', 1));
  ws.push(msg('News', 2));
  assert.deepEqual(ids, ['e2']);
  assert.equal(sub.cursor, 'c2');
  assert.match(h.errors[0] ?? '', /^handler: subscription News message listener threw: render failed/);
});
