import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tokenExpiryMs } from '../../src/token.js';
import { FakeWebSocket, flush } from '../support/fakes.js';
import { connected, setup } from '../support/setup.js';

test('getToken is called the margin before exp and the token is sent in a refresh frame', async () => {
  const h = setup({ ttlSeconds: 120, tokenRefreshMarginMs: 30_000 });
  const ws = await connected(h);
  assert.equal(h.tokens.length, 1);
  await h.clock.advance(89_999);
  assert.equal(h.tokens.length, 1, 'not before exp - margin');
  await h.clock.advance(1);
  assert.equal(h.tokens.length, 2);
  const refresh = ws.lastOfType('refresh');
  assert.equal(refresh.token, h.tokens[1]);
  ws.push({ type: 'refreshed', id: refresh.id });
  // Still the same connection, and the next refresh follows the new token.
  assert.equal(FakeWebSocket.instances.length, 1);
  await h.clock.advance(90_000);
  assert.equal(h.tokens.length, 3);
  assert.equal(ws.framesOfType('refresh').length, 2);
});

test('a short-lived token is refreshed half-way through its life', async () => {
  const h = setup({ ttlSeconds: 20, tokenRefreshMarginMs: 30_000 });
  const ws = await connected(h);
  const exp = tokenExpiryMs(h.tokens[0] as string) as number;
  await h.clock.advance(exp - h.clock.now() - 10_001);
  assert.equal(h.tokens.length, 1);
  await h.clock.advance(1);
  assert.equal(h.tokens.length, 2);
  assert.equal(ws.framesOfType('refresh').length, 1);
});

test('tokenRefreshMarginMs: false leaves expiry to the 4001 close', async () => {
  const h = setup({ ttlSeconds: 60, tokenRefreshMarginMs: false });
  await connected(h);
  await h.clock.advance(120_000);
  assert.equal(h.tokens.length, 1);
});

test('a failing getToken is reported and retried before expiry', async () => {
  let calls = 0;
  const h = setup({ ttlSeconds: 60 });
  const base = (h.client as unknown as { getToken: () => Promise<string> }).getToken;
  (h.client as unknown as { getToken: () => Promise<string> }).getToken = async () => {
    calls++;
    if (calls === 2) throw new Error('auth server down');
    return base();
  };
  const ws = await connected(h);
  await h.clock.advance(30_000);
  assert.equal(calls, 2);
  assert.match(h.errors[0] ?? '', /^token: getToken\(\) failed: auth server down/);
  await h.clock.advance(1_000);
  assert.equal(calls, 3);
  assert.equal(ws.framesOfType('refresh').length, 1);
});

test('a refresh the gateway refuses as unauthorized is retried with another token', async () => {
  const h = setup({ ttlSeconds: 60 });
  const ws = await connected(h);
  await h.clock.advance(30_000);
  const r = ws.lastOfType('refresh');
  ws.push({ type: 'error', id: r.id, code: 'unauthorized', message: 'token signature is invalid' });
  await h.clock.advance(1_000);
  assert.equal(ws.framesOfType('refresh').length, 2);
  assert.equal(h.client.state, 'connected');
});

test('a refresh with a token for another user stops the client', async () => {
  const h = setup({ ttlSeconds: 60 });
  const ws = await connected(h);
  await h.clock.advance(30_000);
  const r = ws.lastOfType('refresh');
  ws.push({ type: 'error', id: r.id, code: 'forbidden', message: 'a refreshed token must be for the same user' });
  await flush();
  assert.equal(h.client.state, 'disconnected');
  assert.deepEqual(h.errors, ['forbidden: a refreshed token must be for the same user']);
  await h.clock.advance(60_000);
  assert.equal(FakeWebSocket.instances.length, 1);
});

test('without getToken an expired token stops the client instead of looping', async () => {
  const h = setup();
  const { SwitchyardClient } = await import('../../src/client.js');
  const { jwt } = await import('../support/fakes.js');
  const c = new SwitchyardClient({
    url: 'http://gw:8080',
    token: jwt({ sub: 'a', exp: Math.floor(h.clock.now() / 1000) - 1 }),
    WebSocket: FakeWebSocket as never,
    clock: h.clock,
    watchNetwork: false,
  });
  const errors: string[] = [];
  c.on('error', (e) => errors.push(e.code));
  c.connect();
  await flush();
  assert.equal(c.state, 'disconnected');
  assert.deepEqual(errors, ['unauthorized']);
});
