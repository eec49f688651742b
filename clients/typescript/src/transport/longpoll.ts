/**
 * The long-poll transport, for networks that block WebSockets: one
 * `GET /v1/poll?topic=…&cursor=…` loop per subscription, each carrying its
 * own cursor, so the gateway node keeps no state and any node can answer
 * any poll. It emulates the WebSocket's frames (`subscribed`, `message`,
 * `error`, …), so the client core treats both transports alike.
 *
 * Invariants:
 * - A poll's cursor is the one the previous poll of the same loop returned,
 *   and a message is reported before the loop moves past it, so handling is
 *   complete, once and ordered as over the WebSocket.
 * - A failure that concerns the connection (network, 401) closes the whole
 *   transport, and the core reconnects with every subscription's cursor; a
 *   failure that concerns one subscription (400, 403) ends only it; a busy
 *   or unavailable node (503) is retried by the loop with backoff.
 */

import { Backoff } from '../backoff.js';
import type { Clock, TimerHandle } from '../clock.js';
import { CloseCode, toServerFrame, type ClientFrame, type ServerFrame } from '../protocol.js';
import type { FetchLike, Transport, TransportCallbacks } from './types.js';
import { withQuery } from './urls.js';

/** How a gateway answered `GET /v1/poll` without a topic. */
export type ProbeResult =
  /** HTTP works and the token is accepted (the gateway asked for a topic). */
  | { kind: 'ok' }
  | { kind: 'unauthorized'; message: string }
  | { kind: 'forbidden'; message: string }
  /** Reached, but busy or not ready (5xx): try again later. */
  | { kind: 'unavailable'; message: string }
  | { kind: 'unreachable'; message: string };

async function errorMessage(res: { text(): Promise<string> }): Promise<string> {
  try {
    const body = await res.text();
    try {
      const v = JSON.parse(body) as { message?: unknown };
      if (typeof v.message === 'string') return v.message;
    } catch {
      /* not JSON */
    }
    return body.slice(0, 200);
  } catch {
    return '';
  }
}

/** Runs `fetch` with a deadline; the signal aborts it either way. */
async function timedFetch(
  fetchFn: FetchLike,
  clock: Clock,
  url: string,
  headers: Record<string, string>,
  timeoutMs: number,
  outer?: AbortSignal,
): Promise<Awaited<ReturnType<FetchLike>>> {
  const ctl = new AbortController();
  const onAbort = () => ctl.abort();
  outer?.addEventListener('abort', onAbort);
  const timer = clock.setTimeout(() => ctl.abort(), timeoutMs);
  try {
    return await fetchFn(url, { method: 'GET', headers, signal: ctl.signal });
  } finally {
    clock.clearTimeout(timer);
    outer?.removeEventListener('abort', onAbort);
  }
}

/**
 * Asks a gateway over plain HTTP whether it is reachable and accepts the
 * token. Used to open the long-poll transport, and after a WebSocket failed
 * to open, to tell "token refused" from "WebSockets blocked" from "down"
 * (a browser's WebSocket API hides the HTTP status of a refused upgrade).
 */
export async function probe(
  httpBase: string,
  token: string,
  fetchFn: FetchLike,
  clock: Clock,
  timeoutMs: number,
): Promise<ProbeResult> {
  let res;
  try {
    res = await timedFetch(
      fetchFn,
      clock,
      withQuery(`${httpBase}/v1/poll`, { timeout_ms: '0' }),
      { authorization: `Bearer ${token}` },
      timeoutMs,
    );
  } catch (e) {
    return { kind: 'unreachable', message: e instanceof Error ? e.message : String(e) };
  }
  const message = await errorMessage(res);
  if (res.status === 400) return { kind: 'ok' };
  if (res.status === 401) return { kind: 'unauthorized', message };
  if (res.status === 403) return { kind: 'forbidden', message };
  return { kind: 'unavailable', message: `HTTP ${res.status} ${message}`.trim() };
}

interface Loop {
  id: number;
  topic: string;
  cursor: string | undefined;
  ctl: AbortController;
  stopped: boolean;
}

export interface LongPollOptions {
  pollTimeoutMs: number;
  /** Deadline of the opening probe. */
  connectTimeoutMs: number;
  random: () => number;
}

export class LongPollTransport implements Transport {
  readonly kind = 'longpoll' as const;
  private readonly loops = new Map<string, Loop>();
  private opened = false;
  private done = false;

  constructor(
    private readonly httpBase: string,
    private token: string,
    private readonly fetchFn: FetchLike,
    private readonly clock: Clock,
    private readonly options: LongPollOptions,
    private readonly cb: TransportCallbacks,
  ) {
    void this.open();
  }

  private async open(): Promise<void> {
    const r = await probe(this.httpBase, this.token, this.fetchFn, this.clock, this.options.connectTimeoutMs);
    if (this.done) return;
    switch (r.kind) {
      case 'ok':
        this.opened = true;
        this.cb.onOpen({});
        return;
      case 'unauthorized':
        return this.finish(CloseCode.Unauthorized, r.message);
      case 'forbidden':
        return this.finish(CloseCode.Forbidden, r.message);
      default:
        return this.finish(CloseCode.Abnormal, r.message);
    }
  }

  /** Reports a frame on a later turn, as a socket would. */
  private emit(frame: ServerFrame): void {
    queueMicrotask(() => {
      if (!this.done) this.cb.onFrame(frame);
    });
  }

  send(frame: ClientFrame): boolean {
    if (this.done || !this.opened) return false;
    switch (frame.type) {
      case 'subscribe': {
        this.loops.get(frame.topic)?.ctl.abort();
        const loop: Loop = {
          id: frame.id,
          topic: frame.topic,
          cursor: frame.cursor,
          ctl: new AbortController(),
          stopped: false,
        };
        const old = this.loops.get(frame.topic);
        if (old) old.stopped = true;
        this.loops.set(frame.topic, loop);
        void this.run(loop);
        return true;
      }
      case 'unsubscribe': {
        this.stop(frame.topic);
        this.emit({ type: 'unsubscribed', id: frame.id, topic: frame.topic });
        return true;
      }
      case 'ping':
        this.emit({ type: 'pong', id: frame.id });
        return true;
      case 'refresh':
        // The next poll of every loop carries the new token.
        this.token = frame.token;
        this.emit({ type: 'refreshed', id: frame.id });
        return true;
      case 'publish':
      case 'presence':
        return false;
    }
  }

  private stop(topic: string): void {
    const loop = this.loops.get(topic);
    if (!loop) return;
    loop.stopped = true;
    loop.ctl.abort();
    this.loops.delete(topic);
  }

  private sleep(ms: number, loop: Loop): Promise<void> {
    return new Promise((resolve) => {
      let timer: TimerHandle | undefined = undefined;
      const onAbort = () => {
        this.clock.clearTimeout(timer);
        resolve();
      };
      timer = this.clock.setTimeout(() => {
        loop.ctl.signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      loop.ctl.signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  private async run(loop: Loop): Promise<void> {
    const retry = new Backoff({ initialDelayMs: 1000, maxDelayMs: 15_000 }, this.options.random);
    let first = true;
    while (!loop.stopped && !this.done) {
      // The first poll returns at once, so `subscribed` is not held back
      // for a whole poll timeout when nothing is waiting.
      const timeout = first ? 0 : this.options.pollTimeoutMs;
      const url = withQuery(`${this.httpBase}/v1/poll`, {
        topic: loop.topic,
        cursor: loop.cursor,
        timeout_ms: String(timeout),
      });
      let res;
      try {
        res = await timedFetch(
          this.fetchFn,
          this.clock,
          url,
          { authorization: `Bearer ${this.token}` },
          timeout + this.options.connectTimeoutMs,
          loop.ctl.signal,
        );
      } catch (e) {
        if (loop.stopped || this.done) return;
        return this.finish(CloseCode.Abnormal, `long-poll failed: ${e instanceof Error ? e.message : String(e)}`);
      }
      if (loop.stopped || this.done) return;
      if (res.status === 200) {
        let body: { messages?: unknown; cursor?: unknown; recovered?: unknown };
        try {
          body = (await res.json()) as typeof body;
        } catch {
          if (loop.stopped || this.done) return;
          return this.finish(CloseCode.Abnormal, 'long-poll answer is not JSON');
        }
        if (loop.stopped || this.done) return;
        const recovered = body.recovered === true;
        if (first) {
          this.cb.onFrame({ type: 'subscribed', id: loop.id, topic: loop.topic, recovered });
          first = false;
        } else if (!recovered) {
          this.cb.onFrame({ type: 'subscribed', id: 0, topic: loop.topic, recovered: false, resync: true });
        }
        for (const m of Array.isArray(body.messages) ? body.messages : []) {
          if (loop.stopped || this.done) return;
          const f = toServerFrame(m);
          if (f && f.type === 'message') {
            this.cb.onFrame(f);
            loop.cursor = f.cursor;
          }
        }
        if (typeof body.cursor === 'string' && body.cursor) loop.cursor = body.cursor;
        retry.reset();
        continue;
      }
      const message = await errorMessage(res);
      if (loop.stopped || this.done) return;
      if (res.status === 401) return this.finish(CloseCode.Unauthorized, message);
      if (res.status === 400 || res.status === 403 || res.status === 404) {
        this.loops.delete(loop.topic);
        loop.stopped = true;
        this.cb.onFrame({
          type: 'error',
          ...(first ? { id: loop.id } : {}),
          topic: loop.topic,
          code: res.status === 403 ? 'forbidden' : 'bad_request',
          message,
        });
        return;
      }
      // 503 (busy, log unavailable) and anything else: this loop waits.
      await this.sleep(retry.next(), loop);
    }
  }

  close(code: number, reason: string): void {
    this.finish(code, reason);
  }

  private finish(code: number, reason: string): void {
    if (this.done) return;
    this.done = true;
    for (const topic of [...this.loops.keys()]) this.stop(topic);
    this.cb.onClose({ code, reason, wasOpen: this.opened });
  }
}
