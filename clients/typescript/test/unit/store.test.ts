import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  cursorKey,
  defaultCursorStore,
  LocalStorageCursorStore,
  MemoryCursorStore,
  type StorageLike,
} from '../../src/store.js';
import { SwitchyardClient } from '../../src/client.js';
import type { WebSocketConstructor } from '../../src/transport/types.js';
import { FakeClock, FakeWebSocket, flush, jwt } from '../support/fakes.js';
import { confirm, msg } from '../support/setup.js';

class FakeStorage implements StorageLike {
  map = new Map<string, string>();
  failWrites = false;
  getItem(k: string): string | null {
    return this.map.get(k) ?? null;
  }
  setItem(k: string, v: string): void {
    if (this.failWrites) throw new Error('QuotaExceededError');
    this.map.set(k, v);
  }
  removeItem(k: string): void {
    this.map.delete(k);
  }
}

test('the memory store keeps, replaces and deletes cursors', () => {
  const s = new MemoryCursorStore();
  assert.equal(s.get('k'), undefined);
  s.set('k', 'a');
  s.set('k', 'b');
  assert.equal(s.get('k'), 'b');
  s.delete('k');
  assert.equal(s.get('k'), undefined);
});

test('the localStorage store prefixes keys and survives storage errors', () => {
  const storage = new FakeStorage();
  const s = new LocalStorageCursorStore(storage);
  s.set('alice:News', 'c1');
  assert.deepEqual([...storage.map.keys()], ['switchyard.cursor:alice:News']);
  assert.equal(s.get('alice:News'), 'c1');
  storage.failWrites = true;
  assert.doesNotThrow(() => s.set('alice:News', 'c2'));
  assert.equal(s.get('alice:News'), 'c1');
  s.delete('alice:News');
  assert.equal(s.get('alice:News'), null);
});

test('defaultCursorStore uses localStorage when the platform has one', () => {
  const g = globalThis as { localStorage?: StorageLike };
  assert.ok(defaultCursorStore() instanceof MemoryCursorStore);
  g.localStorage = new FakeStorage();
  try {
    assert.ok(defaultCursorStore() instanceof LocalStorageCursorStore);
  } finally {
    delete g.localStorage;
  }
});

test('keys keep users and topics apart, whatever characters they use', () => {
  assert.notEqual(cursorKey('a:b', 'c'), cursorKey('a', 'b:c'));
  assert.equal(cursorKey('alice', 'News'), 'alice:News');
});

test('a reloaded page resumes from the cursor its previous page stored, per user', async () => {
  const storage = new FakeStorage();
  const clock = new FakeClock();
  const page = (sub: string) =>
    new SwitchyardClient({
      url: 'http://gw:8080',
      token: jwt({ sub, exp: Math.floor(clock.now() / 1000) + 3600 }),
      WebSocket: FakeWebSocket as unknown as WebSocketConstructor,
      cursorStore: new LocalStorageCursorStore(storage),
      clock,
      watchNetwork: false,
    });
  FakeWebSocket.reset();
  const first = page('alice');
  first.subscribe('News');
  first.connect();
  await flush();
  let ws = FakeWebSocket.last();
  ws.accept('alice');
  await flush();
  assert.equal(confirm(ws, 'News', false).cursor, undefined);
  ws.push(msg('News', 1));
  ws.push(msg('News', 2));
  // Batched writes reach the store when the page goes away.
  first.disconnect();
  assert.equal(storage.getItem('switchyard.cursor:alice:News'), 'c2');

  const second = page('alice');
  second.subscribe('News');
  second.connect();
  await flush();
  ws = FakeWebSocket.last();
  ws.accept('alice');
  await flush();
  assert.equal(ws.lastOfType('subscribe').cursor, 'c2');
  second.disconnect();

  // Another user on the same browser starts from nothing.
  const bob = page('bob');
  bob.subscribe('News');
  bob.connect();
  await flush();
  ws = FakeWebSocket.last();
  ws.accept('bob');
  await flush();
  assert.equal(ws.lastOfType('subscribe').cursor, undefined);
  bob.disconnect();
});
