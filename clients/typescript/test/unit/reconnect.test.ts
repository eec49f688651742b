import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CloseCode } from '../../src/protocol.js';
import { FakeWebSocket, flush } from '../support/fakes.js';
import { confirm, connected, msg, setup } from '../support/setup.js';

test('the token travels as access_token with the JSON subprotocol', async () => {
  const h = setup();
  const ws = await connected(h);
  assert.equal(new URL(ws.url).pathname, '/v1/ws');
  assert.equal(ws.url.startsWith('ws://gw-a:8080/'), true);
  assert.equal(ws.token, h.tokens[0]);
  assert.equal(ws.protocols, 'switchyard.v1.json');
  assert.equal(h.client.state, 'connected');
  assert.equal(h.client.user, 'alice');
});

test('a lost connection is retried with growing, jittered delays, and each subscription resumes from its cursor', async () => {
  const h = setup({ reconnect: { initialDelayMs: 1000, maxDelayMs: 8000 } });
  const states: string[] = [];
  const sub = h.client.subscribe('News');
  sub.on('state', (e) => states.push(e.state));
  let ws = await connected(h);
  confirm(ws, 'News', false);
  ws.push(msg('News', 1));
  ws.push(msg('News', 2));
  ws.serverClose(1006);
  assert.equal(h.client.state, 'reconnecting');
  assert.equal(sub.state, 'recovering');
  await flush();

  // random() = 0.5: delays are half the ceiling: 500, 1000, 2000 ms.
  const created = () => FakeWebSocket.instances.length;
  await h.clock.advance(499);
  assert.equal(created(), 1);
  await h.clock.advance(1);
  assert.equal(created(), 2);
  // The next attempt goes to the other gateway.
  assert.ok(FakeWebSocket.last().url.startsWith('ws://gw-b:8080/'));
  h.fetch.rule = () => new Error('connection refused');
  FakeWebSocket.last().fail();
  await h.clock.advance(999);
  assert.equal(created(), 2);
  await h.clock.advance(1);
  assert.equal(created(), 3);
  FakeWebSocket.last().fail();
  await h.clock.advance(1999);
  assert.equal(created(), 3);
  await h.clock.advance(1);
  assert.equal(created(), 4);

  ws = FakeWebSocket.last();
  ws.accept();
  await flush();
  assert.equal(ws.lastOfType('subscribe').cursor, 'c2');
  confirm(ws, 'News', true);
  assert.deepEqual(states, ['subscribed', 'recovering', 'subscribed']);
  // A connection dropped right after it opened is one more failure…
  ws.serverClose(1006);
  await flush();
  await h.clock.advance(3999);
  assert.equal(created(), 4);
  await h.clock.advance(1);
  assert.equal(created(), 5);
  // …while one that lasted resets the delays.
  FakeWebSocket.last().accept();
  await h.clock.advance(5000);
  FakeWebSocket.last().serverClose(1006);
  await flush();
  await h.clock.advance(500);
  assert.equal(created(), 6);
});

test('reconnect.after_ms from a draining node wins over the backoff', async () => {
  const h = setup({ reconnect: { initialDelayMs: 100 } });
  const hints: boolean[] = [];
  h.client.on('reconnecting', (e) => hints.push(e.serverHint));
  const ws = await connected(h);
  ws.push({ type: 'reconnect', after_ms: 1234 });
  ws.serverClose(1001, 'server draining');
  await flush();
  await h.clock.advance(1233);
  assert.equal(FakeWebSocket.instances.length, 1, 'not before the server said');
  await h.clock.advance(1);
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.deepEqual(hints, [true]);
  // The hint is for that close only.
  FakeWebSocket.last().accept();
  await h.clock.advance(5000);
  FakeWebSocket.last().serverClose(1006);
  await flush();
  await h.clock.advance(50);
  assert.equal(FakeWebSocket.instances.length, 3);
});

test('close 4001 fetches a fresh token, then reconnects at once', async () => {
  const h = setup();
  const sub = h.client.subscribe('News');
  let ws = await connected(h);
  confirm(ws, 'News');
  ws.push(msg('News', 7));
  await h.clock.advance(20_000);
  ws.push({ type: 'error', code: 'unauthorized', message: 'token expired' });
  ws.serverClose(CloseCode.TokenExpired, 'token expired');
  await h.clock.advance(250);
  assert.equal(h.tokens.length, 2);
  ws = FakeWebSocket.last();
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.equal(ws.token, h.tokens[1]);
  ws.accept();
  await flush();
  assert.equal(ws.lastOfType('subscribe').cursor, 'c7');
  assert.equal(sub.state, 'recovering');
  // The "token expired" error frame is expected, not reported.
  assert.deepEqual(h.errors, []);
});

test('a refused token is retried with a fresh one, then the client stops and reports', async () => {
  const h = setup();
  h.fetch.rule = () => ({ status: 401, body: { type: 'error', code: 'unauthorized', message: 'token signature is invalid' } });
  const ended: unknown[] = [];
  h.client.on('disconnected', (e) => ended.push(e));
  h.client.connect();
  for (let i = 0; i < 10; i++) {
    await flush();
    FakeWebSocket.last().fail();
    await h.clock.advance(5_000);
  }
  assert.equal(h.client.state, 'disconnected');
  // One try with the first token, two with fresh ones, then stop.
  assert.equal(FakeWebSocket.instances.length, 3);
  assert.equal(h.tokens.length, 3);
  assert.deepEqual(h.errors, ['unauthorized: token signature is invalid']);
  assert.equal((ended.at(-1) as { willReconnect: boolean }).willReconnect, false);
});

test('forbidden (e.g. an Origin not allowed) stops at once', async () => {
  const h = setup();
  h.fetch.rule = () => ({ status: 403, body: { type: 'error', code: 'forbidden', message: 'origin not allowed' } });
  h.client.connect();
  await flush();
  FakeWebSocket.last().fail();
  await h.clock.advance(60_000);
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(h.client.state, 'disconnected');
  assert.deepEqual(h.errors, ['forbidden: origin not allowed']);
});

test('maxAttempts bounds the retries of an unreachable fleet', async () => {
  const h = setup({ reconnect: { maxAttempts: 3, initialDelayMs: 10, maxDelayMs: 10 } });
  h.fetch.rule = () => new Error('ECONNREFUSED');
  h.client.connect();
  for (let i = 0; i < 6; i++) {
    await flush();
    FakeWebSocket.last().fail();
    await h.clock.advance(100);
  }
  assert.equal(FakeWebSocket.instances.length, 4);
  assert.equal(h.client.state, 'disconnected');
  assert.match(h.errors.at(-1) ?? '', /^network: gave up after 3 attempts/);
});

test('a connection that answers no ping is presumed dead and replaced', async () => {
  const h = setup({ pingIntervalMs: 1000, pongTimeoutMs: 500 });
  const codes: number[] = [];
  h.client.on('disconnected', (e) => codes.push(e.code));
  const ws = await connected(h);
  await h.clock.advance(1000);
  const ping = ws.lastOfType('ping');
  ws.push({ type: 'pong', id: ping.id });
  await h.clock.advance(1000);
  assert.equal(ws.framesOfType('ping').length, 2);
  await h.clock.advance(500);
  assert.deepEqual(codes, [CloseCode.PingTimeout]);
  assert.equal(ws.closedByClient, true);
  assert.equal(h.client.state, 'reconnecting');
});

test('disconnect() stops reconnecting; connect() resumes the subscriptions', async () => {
  const h = setup();
  const sub = h.client.subscribe('News');
  let ws = await connected(h);
  confirm(ws, 'News');
  ws.push(msg('News', 3));
  h.client.disconnect();
  assert.equal(h.client.state, 'disconnected');
  assert.equal(sub.state, 'recovering');
  await h.clock.advance(60_000);
  assert.equal(FakeWebSocket.instances.length, 1);
  h.client.connect();
  await flush();
  ws = FakeWebSocket.last();
  ws.accept();
  await flush();
  assert.equal(ws.lastOfType('subscribe').cursor, 'c3');
});
