import { SwitchyardClient, type ClientOptions } from '../../src/client.js';
import { MemoryCursorStore } from '../../src/store.js';
import type { WebSocketConstructor } from '../../src/transport/types.js';
import { FakeClock, FakeFetch, FakeWebSocket, flush, jwt } from './fakes.js';

export interface Harness {
  client: SwitchyardClient;
  clock: FakeClock;
  fetch: FakeFetch;
  store: MemoryCursorStore;
  /** Tokens handed out by getToken, in order. */
  tokens: string[];
  errors: string[];
}

/** A client wired to fakes: two gateways, jitter fixed at half the ceiling. */
export function setup(opts: Partial<ClientOptions> & { ttlSeconds?: number } = {}): Harness {
  FakeWebSocket.reset();
  const clock = new FakeClock();
  const fetch = new FakeFetch();
  const store = new MemoryCursorStore();
  const tokens: string[] = [];
  const errors: string[] = [];
  const ttl = opts.ttlSeconds ?? 3600;
  const client = new SwitchyardClient({
    url: ['http://gw-a:8080', 'http://gw-b:8080'],
    getToken: async () => {
      const t = jwt({ sub: 'alice', exp: Math.floor(clock.now() / 1000) + ttl, n: tokens.length + 1 });
      tokens.push(t);
      return t;
    },
    WebSocket: FakeWebSocket as unknown as WebSocketConstructor,
    fetch: fetch.fn,
    clock,
    random: () => 0.5,
    cursorStore: store,
    cursorFlushMs: 0,
    watchNetwork: false,
    // Pings are tested on their own; elsewhere an unanswered ping would end the connection.
    pingIntervalMs: 0,
    ...opts,
  });
  client.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
  return { client, clock, fetch, store, tokens, errors };
}

/** Connects and accepts the first WebSocket. */
export async function connected(h: Harness): Promise<FakeWebSocket> {
  h.client.connect();
  await flush();
  const ws = FakeWebSocket.last();
  ws.accept();
  await flush();
  return ws;
}

/** Answers the last subscribe frame for `topic`. */
export function confirm(ws: FakeWebSocket, topic: string, recovered = true): Record<string, unknown> {
  const f = ws.sent.filter((s) => s.type === 'subscribe' && s.topic === topic).pop();
  if (!f) throw new Error(`no subscribe for ${topic}; sent ${JSON.stringify(ws.sent)}`);
  ws.push({ type: 'subscribed', id: f.id, topic, recovered });
  return f;
}

export function msg(topic: string, n: number, cursor = `c${n}`): Record<string, unknown> {
  return { type: 'message', topic, id: `e${n}`, cursor, payload: { n }, created_at_ms: 1 };
}
