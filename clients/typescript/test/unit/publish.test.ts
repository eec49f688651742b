import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SwitchyardError } from '../../src/errors.js';
import { FakeWebSocket, flush } from '../support/fakes.js';
import { connected, setup } from '../support/setup.js';

const codeOf = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    assert.ok(e instanceof SwitchyardError, String(e));
    return e.code;
  }
};

test('publish resolves when the gateway has stored the event', async () => {
  const h = setup();
  const ws = await connected(h);
  const p = h.client.publish('Chat', { text: 'hi' });
  const f = ws.lastOfType('publish');
  assert.deepEqual([f.topic, f.payload], ['Chat', { text: 'hi' }]);
  ws.push({ type: 'published', id: f.id });
  assert.equal(await codeOf(p), 'resolved');
});

test('refusals reject with the protocol code', async () => {
  const h = setup();
  const ws = await connected(h);
  const p = h.client.publish('News', {});
  const f = ws.lastOfType('publish');
  ws.push({ type: 'error', id: f.id, code: 'not_publishable', message: 'topic "News" does not accept publishes from you' });
  await assert.rejects(p, (e: SwitchyardError) => e.code === 'not_publishable' && e.topic === 'News' && !e.retryable);
  const q = h.client.publish('Chat', {});
  ws.push({ type: 'error', id: ws.lastOfType('publish').id, code: 'rate_limited', message: 'slow down' });
  await assert.rejects(q, (e: SwitchyardError) => e.code === 'rate_limited' && e.retryable);
});

test('a publish sent before the connection dropped fails as connection_lost and is not resent', async () => {
  const h = setup();
  const ws = await connected(h);
  const p = h.client.publish('Chat', { n: 1 });
  ws.serverClose(1006);
  assert.equal(await codeOf(p), 'connection_lost');
  await h.clock.advance(1000);
  const next = FakeWebSocket.last();
  next.accept();
  await flush();
  assert.equal(next.framesOfType('publish').length, 0);
});

test('a publish while reconnecting waits for the connection, within its timeout', async () => {
  const h = setup({ publishTimeoutMs: 5_000 });
  let ws = await connected(h);
  ws.serverClose(1006);
  const p = h.client.publish('Chat', { n: 2 });
  await h.clock.advance(1000);
  ws = FakeWebSocket.last();
  ws.accept();
  await flush();
  ws.push({ type: 'published', id: ws.lastOfType('publish').id });
  assert.equal(await codeOf(p), 'resolved');

  ws.serverClose(1006);
  h.fetch.rule = () => new Error('down');
  const late = codeOf(h.client.publish('Chat', { n: 3 }));
  for (let i = 0; i < 10; i++) {
    await h.clock.advance(600);
    const last = FakeWebSocket.last();
    if (last.readyState === 0) last.fail();
  }
  assert.equal(await late, 'timeout');
});

test('oversized and unserialisable payloads are refused locally, before they cost the connection', async () => {
  const h = setup({ maxFrameBytes: 1024 });
  const ws = await connected(h);
  assert.equal(await codeOf(h.client.publish('Chat', 'x'.repeat(2000))), 'too_large');
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  assert.equal(await codeOf(h.client.publish('Chat', cyclic)), 'bad_request');
  assert.equal(ws.framesOfType('publish').length, 0);
});

test('publish before connect() or after disconnect() is refused as closed', async () => {
  const h = setup();
  assert.equal(await codeOf(h.client.publish('Chat', {})), 'closed');
  await connected(h);
  h.client.disconnect();
  assert.equal(await codeOf(h.client.publish('Chat', {})), 'closed');
});
