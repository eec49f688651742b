/**
 * The WebSocket transport: `GET /v1/ws` with the token as `access_token`
 * (browsers cannot set headers on a WebSocket), subprotocol
 * `switchyard.v1.json`. The transport counts as open once the gateway's
 * `welcome` arrives, not when the socket opens.
 *
 * Invariant: after `onClose` no handler of the socket can reach the client
 * (they are detached), so a late frame from a dead connection never mixes
 * with the next connection's.
 */

import type { Clock, TimerHandle } from '../clock.js';
import { CloseCode, parseServerFrame, SUBPROTOCOL, type ClientFrame } from '../protocol.js';
import type { Transport, TransportCallbacks, WebSocketConstructor, WebSocketLike } from './types.js';
import { withQuery } from './urls.js';

const OPEN = 1;

export class WebSocketTransport implements Transport {
  readonly kind = 'websocket' as const;
  private readonly ws: WebSocketLike;
  private opened = false;
  private done = false;
  private timer: TimerHandle | undefined;

  constructor(
    url: string,
    token: string,
    Ctor: WebSocketConstructor,
    private readonly clock: Clock,
    connectTimeoutMs: number,
    private readonly cb: TransportCallbacks,
  ) {
    this.ws = new Ctor(withQuery(url, { access_token: token }), SUBPROTOCOL) as WebSocketLike;
    this.timer = clock.setTimeout(() => {
      this.close(CloseCode.Abnormal, `no welcome within ${connectTimeoutMs} ms`);
    }, connectTimeoutMs);
    this.ws.onmessage = (ev) => this.onMessage(ev.data);
    this.ws.onclose = (ev) => this.finish(ev.code || CloseCode.Abnormal, ev.reason || '');
    // An error is always followed by a close; the close says what matters.
    this.ws.onerror = () => {};
  }

  private onMessage(data: unknown): void {
    if (this.done) return;
    const text =
      typeof data === 'string'
        ? data
        : data instanceof ArrayBuffer || ArrayBuffer.isView(data)
          ? new TextDecoder().decode(data as ArrayBuffer)
          : String(data);
    const frame = parseServerFrame(text);
    if (!frame) return;
    if (!this.opened) {
      if (frame.type !== 'welcome') return;
      this.opened = true;
      this.clock.clearTimeout(this.timer);
      this.cb.onOpen({ connectionId: frame.connection_id, user: frame.user });
      return;
    }
    this.cb.onFrame(frame);
  }

  send(frame: ClientFrame): boolean {
    if (this.done || this.ws.readyState !== OPEN) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  close(code: number, reason: string): void {
    if (this.done) return;
    try {
      this.ws.close(1000, reason.slice(0, 120));
    } catch {
      /* already closing */
    }
    this.finish(code, reason);
  }

  private finish(code: number, reason: string): void {
    if (this.done) return;
    this.done = true;
    this.clock.clearTimeout(this.timer);
    this.ws.onmessage = null;
    this.ws.onclose = null;
    this.ws.onopen = null;
    this.cb.onClose({ code, reason, wasOpen: this.opened });
  }
}
