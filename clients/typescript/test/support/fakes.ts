/**
 * Test doubles for the unit tests: a clock whose time only moves when the
 * test says so, a scripted WebSocket, and a scripted fetch.
 */

import type { Clock } from '../../src/clock.js';
import type { FetchLike } from '../../src/transport/types.js';

/** Lets every pending promise continuation run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
}

interface Timer {
  id: number;
  at: number;
  fn: () => void;
}

export class FakeClock implements Clock {
  t = 1_800_000_000_000;
  private timers: Timer[] = [];
  private seq = 0;
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.timers.push({ id, at: this.t + Math.max(0, ms), fn });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers = this.timers.filter((t) => t.id !== h);
  }
  /** Moves time forward, running due timers in order. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    await flush();
    for (;;) {
      const due = this.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.timers = this.timers.filter((t) => t !== due);
      this.t = due.at;
      due.fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

/** A WebSocket whose server side the test plays. */
export class FakeWebSocket {
  static instances: FakeWebSocket[] = [];
  static reset(): void {
    FakeWebSocket.instances = [];
  }
  static last(): FakeWebSocket {
    const ws = FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    if (!ws) throw new Error('no WebSocket was created');
    return ws;
  }

  readyState = 0;
  onopen: ((e: unknown) => void) | null = null;
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  onerror: ((e: unknown) => void) | null = null;
  readonly sent: Record<string, unknown>[] = [];
  closedByClient = false;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeWebSocket.instances.push(this);
  }

  get token(): string | null {
    return new URL(this.url).searchParams.get('access_token');
  }

  // --- client side ---
  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }
  close(): void {
    this.closedByClient = true;
    this.readyState = 3;
  }

  // --- server side ---
  /** Opens and sends `welcome`. */
  accept(user = 'alice'): void {
    this.readyState = 1;
    this.onopen?.({});
    this.push({ type: 'welcome', connection_id: 'c' + FakeWebSocket.instances.length, user });
  }
  push(frame: unknown): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** The connection could not be established (refused upgrade, network). */
  fail(): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: '' });
  }
  framesOfType(type: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f.type === type);
  }
  lastOfType(type: string): Record<string, unknown> {
    const f = this.framesOfType(type).pop();
    if (!f) throw new Error(`no ${type} frame sent; sent: ${JSON.stringify(this.sent)}`);
    return f;
  }
}

export interface FetchCall {
  url: URL;
  headers: Record<string, string>;
  signal?: AbortSignal;
  respond(status: number, body: unknown): void;
  failWith(e: Error): void;
}

/** A fetch whose answers the test gives, call by call (or with a default rule). */
export class FakeFetch {
  calls: FetchCall[] = [];
  /** Answers immediately when set; return undefined to leave the call pending. */
  rule: ((url: URL) => { status: number; body: unknown } | Error | undefined) | undefined;

  readonly fn: FetchLike = (url, init) =>
    new Promise((resolve, reject) => {
      const u = new URL(url);
      const call: FetchCall = {
        url: u,
        headers: init.headers ?? {},
        ...(init.signal ? { signal: init.signal } : {}),
        respond: (status, body) =>
          resolve({
            status,
            json: async () => body,
            text: async () => (typeof body === 'string' ? body : JSON.stringify(body)),
          }),
        failWith: (e) => reject(e),
      };
      init.signal?.addEventListener('abort', () => reject(new Error('aborted')));
      this.calls.push(call);
      const r = this.rule?.(u);
      if (r instanceof Error) call.failWith(r);
      else if (r) call.respond(r.status, r.body);
    });

  polls(): FetchCall[] {
    return this.calls.filter((c) => c.url.searchParams.has('topic'));
  }
}

/** An unsigned JWT with these claims (the SDK only reads tokens). */
export function jwt(claims: Record<string, unknown>): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.sig`;
}
