import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SwitchyardError } from '../../src/errors.js';
import { FakeWebSocket, flush } from '../support/fakes.js';
import { setup } from '../support/setup.js';

test('when WebSockets fail but HTTP works, the client falls back to long-poll with the same API', async () => {
  const h = setup({ fallbackAfter: 2, upgradeIntervalMs: 0 });
  const got: string[] = [];
  const states: string[] = [];
  const sub = h.client.subscribe('News', { message: (m) => got.push(`${m.id}@${m.cursor}`) });
  sub.on('state', (e) => states.push(e.state));
  const transports: string[] = [];
  h.client.on('connected', (e) => transports.push(e.transport));
  // The gateway answers HTTP (400: a topic is missing) but upgrades fail.
  h.fetch.rule = (u) => (u.searchParams.has('topic') ? undefined : { status: 400, body: { code: 'bad_request' } });
  h.client.connect();
  await flush();
  FakeWebSocket.last().fail();
  await h.clock.advance(1000);
  FakeWebSocket.last().fail();
  await h.clock.advance(10);
  assert.equal(FakeWebSocket.instances.length, 2, 'no third WebSocket');
  assert.deepEqual(transports, ['longpoll']);
  assert.equal(h.client.transportKind, 'longpoll');

  // The first poll asks for an immediate answer and sends the bearer token.
  let poll = h.fetch.polls()[0];
  assert.ok(poll);
  assert.equal(poll.url.searchParams.get('timeout_ms'), '0');
  assert.equal(poll.url.searchParams.get('topic'), 'News');
  assert.equal(poll.headers.authorization, `Bearer ${h.tokens[0]}`);
  poll.respond(200, {
    messages: [
      { type: 'message', topic: 'News', id: 'e1', cursor: 'c1', payload: {} },
      { type: 'message', topic: 'News', id: 'e2', cursor: 'c2', payload: {} },
    ],
    cursor: 'c2b',
    recovered: false,
  });
  await flush();
  assert.equal(sub.state, 'subscribed');
  poll = h.fetch.polls()[1];
  assert.ok(poll);
  assert.equal(poll.url.searchParams.get('cursor'), 'c2b');
  assert.equal(poll.url.searchParams.get('timeout_ms'), '25000');
  poll.respond(200, { messages: [{ type: 'message', topic: 'News', id: 'e3', cursor: 'c3', payload: {} }], cursor: 'c3', recovered: true });
  await flush();
  assert.deepEqual(got, ['e1@c1', 'e2@c2', 'e3@c3']);
  assert.deepEqual(states, ['subscribed']);

  // Publishing needs a WebSocket: a typed, immediate refusal.
  await assert.rejects(h.client.publish('Chat', {}), (e: SwitchyardError) => e.code === 'unsupported');

  // A network failure of a poll is a lost connection: reconnect, resume from the cursor.
  h.fetch.polls()[2]?.failWith(new Error('socket hang up'));
  await flush();
  assert.equal(h.client.state, 'reconnecting');
  assert.equal(sub.state, 'recovering');
  await h.clock.advance(1000);
  const resumed = h.fetch.polls().at(-1);
  assert.equal(resumed?.url.searchParams.get('cursor'), 'c3');
  assert.equal(FakeWebSocket.instances.length, 2, 'stays on long-poll');
});

test('on long-poll, a 401 fetches a fresh token and a 403 ends only its subscription', async () => {
  const h = setup({ transports: ['longpoll'] });
  h.fetch.rule = (u) => (u.searchParams.has('topic') ? undefined : { status: 400, body: {} });
  const secret = h.client.subscribe('Secret');
  h.client.subscribe('News');
  h.client.connect();
  await flush();
  const secretPoll = h.fetch.polls().find((c) => c.url.searchParams.get('topic') === 'Secret');
  secretPoll?.respond(403, { type: 'error', code: 'forbidden', message: 'no channel' });
  await flush();
  assert.equal(secret.state, 'unsubscribed');
  assert.equal(h.client.state, 'connected');
  const newsPoll = h.fetch.polls().find((c) => c.url.searchParams.get('topic') === 'News');
  newsPoll?.respond(401, { type: 'error', code: 'unauthorized', message: 'token has expired' });
  await h.clock.advance(300);
  assert.equal(h.tokens.length, 2);
  const again = h.fetch.polls().at(-1);
  assert.equal(again?.headers.authorization, `Bearer ${h.tokens[1]}`);
});

test('a busy node (503) makes the poll wait and retry, without dropping the connection', async () => {
  const h = setup({ transports: ['longpoll'] });
  h.fetch.rule = (u) => (u.searchParams.has('topic') ? undefined : { status: 400, body: {} });
  h.client.subscribe('News');
  h.client.connect();
  await flush();
  h.fetch.polls()[0]?.respond(503, { code: 'rate_limited', message: 'too many long-polls' });
  await flush();
  assert.equal(h.fetch.polls().length, 1);
  await h.clock.advance(500);
  assert.equal(h.fetch.polls().length, 2);
  assert.equal(h.client.state, 'connected');
});

test('on long-poll the client tries WebSockets again and moves over with its cursors', async () => {
  const h = setup({ fallbackAfter: 1, upgradeIntervalMs: 30_000 });
  h.fetch.rule = (u) => (u.searchParams.has('topic') ? undefined : { status: 400, body: {} });
  const ids: string[] = [];
  h.client.subscribe('News', { message: (m) => ids.push(m.id) });
  h.client.connect();
  await flush();
  FakeWebSocket.last().fail();
  await h.clock.advance(10);
  assert.equal(h.client.transportKind, 'longpoll');
  h.fetch.polls()[0]?.respond(200, { messages: [{ type: 'message', topic: 'News', id: 'e1', cursor: 'c1', payload: {} }], cursor: 'c1', recovered: true });
  await flush();
  const inflight = h.fetch.polls()[1];
  await h.clock.advance(30_000);
  const ws = FakeWebSocket.last();
  assert.equal(FakeWebSocket.instances.length, 2);
  ws.accept();
  await flush();
  assert.equal(h.client.transportKind, 'websocket');
  assert.equal(inflight?.signal?.aborted, true, 'the long-poll stopped');
  const f = ws.lastOfType('subscribe');
  assert.equal(f.cursor, 'c1');
  ws.push({ type: 'subscribed', id: f.id, topic: 'News', recovered: true });
  ws.push({ type: 'message', topic: 'News', id: 'e1', cursor: 'c1', payload: {} });
  ws.push({ type: 'message', topic: 'News', id: 'e2', cursor: 'c2', payload: {} });
  assert.deepEqual(ids, ['e1', 'e2']);
});
