import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SwitchyardError } from '../../src/errors.js';
import type { PresenceChange } from '../../src/subscription.js';
import { connected, setup } from '../support/setup.js';

test('a subscription with presence asks for it and gets join and leave events', async () => {
  const h = setup();
  const ws = await connected(h);
  const changes: [string, PresenceChange][] = [];
  const sub = h.client.subscribe(
    'Chat',
    { join: (c) => changes.push(['join', c]), leave: (c) => changes.push(['leave', c]) },
    { presence: true },
  );
  const f = ws.lastOfType('subscribe');
  assert.equal(f.presence, true);
  ws.push({ type: 'subscribed', id: f.id, topic: 'Chat', recovered: false });
  ws.push({ type: 'join', topic: 'Chat', channel: 'Chat', user: 'bob', info: { name: 'Bob' } });
  ws.push({ type: 'leave', topic: 'Chat', channel: 'Chat', user: 'bob', expired: true });
  ws.push({ type: 'join', topic: 'Other', channel: 'Other', user: 'eve' });
  assert.deepEqual(changes, [
    ['join', { channel: 'Chat', user: 'bob', expired: false, info: { name: 'Bob' } }],
    ['leave', { channel: 'Chat', user: 'bob', expired: true }],
  ]);
  assert.equal(sub.presence, true);
  // Without the option, no presence flag is sent.
  h.client.subscribe('News');
  assert.equal(ws.lastOfType('subscribe').presence, undefined);
});

test('presence() resolves with the channels and rejects with the refusal', async () => {
  const h = setup();
  const ws = await connected(h);
  const p = h.client.presence('Chat');
  const f = ws.lastOfType('presence');
  assert.equal(f.topic, 'Chat');
  const channels = [
    { channel: 'Chat', users: 2, connections: 3, truncated: false, members: [{ user: 'a', connections: 1 }, { user: 'b', connections: 2 }] },
  ];
  ws.push({ type: 'presence', id: f.id, topic: 'Chat', channels });
  assert.deepEqual(await p, channels);
  const q = h.client.presence('News');
  ws.push({ type: 'error', id: ws.lastOfType('presence').id, code: 'bad_request', message: 'topic News has no presence' });
  await assert.rejects(q, (e: SwitchyardError) => e.code === 'bad_request' && e.topic === 'News');
  const r = h.client.presence('Chat');
  ws.serverClose(1006);
  await assert.rejects(r, (e: SwitchyardError) => e.code === 'connection_lost');
  await assert.rejects(h.client.presence('Chat'), (e: SwitchyardError) => e.code === 'closed');
});
