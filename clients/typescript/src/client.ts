/**
 * The client: one logical connection to a Switchyard gateway fleet that
 * survives network drops, node drains, token expiry and WebSocket-hostile
 * networks, with any number of topic subscriptions on it.
 *
 * Where things are decided:
 * - `attempt()` opens a transport (WebSocket, or long-poll after WebSockets
 *   failed `fallbackAfter` times while plain HTTP worked);
 * - `afterClose()` decides what a closed connection means: a server hint
 *   (`reconnect.after_ms`) wins, 4001 fetches a fresh token first, refusals
 *   (401 twice, 403, a refresh for another user) stop the client, anything
 *   else waits an exponential, fully jittered delay;
 * - `opened()` resubscribes every subscription from its cursor.
 *
 * Invariants:
 * - At most one transport is current; frames and closes of any other are
 *   ignored, so a late event of a dead connection changes nothing.
 * - A subscription's cursor only advances past messages handed to the
 *   application, and every (re)subscribe sends it: nothing is skipped, and
 *   what is replayed twice is dropped by event id.
 * - A publish is sent at most once: if the connection drops before its
 *   answer it fails with `connection_lost` instead of being retried (the
 *   gateway would store it twice).
 */

import { Backoff, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
import { systemClock, type Clock, type TimerHandle } from './clock.js';
import { Emitter } from './emitter.js';
import { serverCode, SwitchyardError } from './errors.js';
import { CloseCode, endedSubscriptionTopic, type ClientFrame, type PresenceFrame, type ServerFrame } from './protocol.js';
import { cursorKey, defaultCursorStore, type CursorStore } from './store.js';
import { Subscription, type SubscriptionHandlers, type SubscriptionHost } from './subscription.js';
import { refreshAt, tokenExpiryMs, tokenSubject } from './token.js';
import { LongPollTransport, probe } from './transport/longpoll.js';
import type {
  CloseInfo,
  FetchLike,
  OpenInfo,
  Transport,
  TransportKind,
  WebSocketConstructor,
} from './transport/types.js';
import { endpoints, type Endpoints } from './transport/urls.js';
import { WebSocketTransport } from './transport/websocket.js';

export type ClientState = 'disconnected' | 'connecting' | 'connected' | 'reconnecting';

export interface ClientOptions {
  /** Gateway base URL(s), e.g. `https://push.example.com`; several are tried in turn. */
  url: string | string[];
  /** A token to start with. */
  token?: string;
  /**
   * Returns a fresh token. Called before the current one expires, after a
   * 4001 close and after a refusal. Without it the client stops when its
   * token expires.
   */
  getToken?: () => string | Promise<string>;
  /** WebSocket constructor; default `globalThis.WebSocket` (browsers, Node ≥ 22). In Node 18/20 pass `ws`. */
  WebSocket?: WebSocketConstructor;
  /** `fetch`, for long-poll; default `globalThis.fetch`. */
  fetch?: FetchLike;
  /** Transports to use, in order of preference. Default both. */
  transports?: TransportKind[];
  /** Reconnect delays (exponential, full jitter). */
  reconnect?: BackoffOptions;
  /** Consecutive WebSocket failures, while HTTP works, before long-poll is used. Default 2. */
  fallbackAfter?: number;
  /** On long-poll, try a WebSocket again this often. Default 30 000 ms; 0 never. */
  upgradeIntervalMs?: number;
  /** Where cursors are kept; default `localStorage` in browsers, memory elsewhere. */
  cursorStore?: CursorStore;
  /** Cursor writes are batched this long (flushed on disconnect and page hide). Default 250 ms. */
  cursorFlushMs?: number;
  /** Fetch a new token this long before `exp` (at most half its life); `false` waits for 4001. Default 30 000 ms. */
  tokenRefreshMarginMs?: number | false;
  /** Application ping period on WebSockets (detects dead connections). Default 25 000 ms; 0 off. */
  pingIntervalMs?: number;
  /** Time allowed for a pong. Default 10 000 ms. */
  pongTimeoutMs?: number;
  /** Time allowed to open a connection (WebSocket `welcome`, long-poll probe). Default 10 000 ms. */
  connectTimeoutMs?: number;
  /** Default time allowed for a publish, including waiting for a connection. Default 10 000 ms. */
  publishTimeoutMs?: number;
  /** Long-poll wait per request. Default 25 000 ms. */
  pollTimeoutMs?: number;
  /** Event ids remembered per subscription for de-duplication. Default 5 000. */
  dedupWindow?: number;
  /** Largest frame the client sends; the gateway closes connections over its limit. Default 65 536. */
  maxFrameBytes?: number;
  /** React to the browser's `online`/`offline` events. Default true where they exist. */
  watchNetwork?: boolean;
  /** Random numbers for jitter (tests). */
  random?: () => number;
  /** Time source and timers (tests). */
  clock?: Clock;
}

export interface StateEvent {
  state: ClientState;
  previous: ClientState;
}

export interface ConnectedEvent {
  transport: TransportKind;
  /** The gateway base URL in use. */
  url: string;
  connectionId?: string;
  user?: string;
}

export interface DisconnectedEvent {
  /** WebSocket close code, or the SDK's own (`CloseCode`). */
  code: number;
  reason: string;
  willReconnect: boolean;
  /** Set when the client stopped because of this error. */
  error?: SwitchyardError;
}

export interface ReconnectingEvent {
  /** Consecutive attempts that failed so far. */
  attempt: number;
  delayMs: number;
  /** Whether the delay is the gateway's (`reconnect.after_ms`). */
  serverHint: boolean;
  code: number;
  reason: string;
}

export interface TokenEvent {
  expiresAtMs?: number;
}

export interface ClientEvents {
  state: StateEvent;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  reconnecting: ReconnectingEvent;
  /** Errors not tied to a request: refusals, token failures, handler exceptions. */
  error: SwitchyardError;
  /** A new token is in use. */
  token: TokenEvent;
}

export interface PublishOptions {
  timeoutMs?: number;
}

export interface SubscribeOptions {
  /**
   * Receive `join`/`leave` events of the topic's presence channels (the
   * topic needs `Presence: true` in the topology; otherwise the gateway
   * refuses the subscription with `bad_request`).
   */
  presence?: boolean;
}

export interface PresenceOptions {
  /** Default: `publishTimeoutMs`. */
  timeoutMs?: number;
}

type Pending =
  | { kind: 'subscribe'; sub: Subscription<never> }
  | { kind: 'unsubscribe' }
  | { kind: 'ping' }
  | { kind: 'refresh'; attempt: number }
  | { kind: 'publish'; req: PublishRequest }
  | { kind: 'presence'; resolve(reply: PresenceFrame): void; reject(e: SwitchyardError): void };

interface PublishRequest {
  topic: string;
  payload: unknown;
  resolve(): void;
  reject(e: SwitchyardError): void;
  timer: TimerHandle;
  id?: number;
  done: boolean;
}

/** Refusals retried with a fresh token before the client gives up. */
const AUTH_RETRIES = 2;
/** A connection open this long resets the backoff and the refusal count. */
const STABLE_MS = 5_000;
/** A token with less life than this is replaced before connecting. */
const MIN_TOKEN_LIFE_MS = 5_000;

class Stop extends Error {
  constructor(readonly error: SwitchyardError) {
    super(error.message);
  }
}

export class SwitchyardClient {
  private readonly endpoints: Endpoints[];
  private urlIndex = 0;
  private readonly o: {
    transports: TransportKind[];
    fallbackAfter: number;
    upgradeIntervalMs: number;
    cursorFlushMs: number;
    tokenRefreshMarginMs: number | false;
    pingIntervalMs: number;
    pongTimeoutMs: number;
    connectTimeoutMs: number;
    publishTimeoutMs: number;
    pollTimeoutMs: number;
    dedupWindow: number;
    maxFrameBytes: number;
    watchNetwork: boolean;
  };
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly fetchFn: FetchLike | undefined;
  private readonly getToken: (() => string | Promise<string>) | undefined;
  private readonly store: CursorStore;
  private readonly events: Emitter<ClientEvents>;
  private readonly backoff: Backoff;

  private _state: ClientState = 'disconnected';
  private stopped = true;
  private connectedOnce = false;
  private transport: Transport | undefined;
  private transportUrl = '';
  private openedAt = 0;
  private generation = 0;
  private token: string | undefined;
  private tokenObtainedAt = 0;
  private forceFreshToken = false;
  private authRefusals = 0;
  private wsStrikes = 0;
  private useLongPoll = false;
  private serverHintMs: number | undefined;
  private _user: string | undefined;
  private _connectionId: string | undefined;

  private readonly subs = new Map<string, Subscription<never>>();
  private readonly pending = new Map<number, Pending>();
  private readonly queue: PublishRequest[] = [];
  private nextId = 1;

  private reconnectTimer: TimerHandle | undefined;
  private refreshTimer: TimerHandle | undefined;
  private pingTimer: TimerHandle | undefined;
  private pongTimer: TimerHandle | undefined;
  private upgradeTimer: TimerHandle | undefined;
  private flushTimer: TimerHandle | undefined;
  private readonly cursorWrites = new Map<string, string | undefined>();
  private readonly host: SubscriptionHost;
  private networkListeners: (() => void) | undefined;

  constructor(options: ClientOptions) {
    const urls = Array.isArray(options.url) ? options.url : [options.url];
    if (urls.length === 0) throw new TypeError('SwitchyardClient needs at least one gateway url');
    this.endpoints = urls.map(endpoints);
    if (!options.token && !options.getToken) throw new TypeError('SwitchyardClient needs a token or getToken');
    this.token = options.token;
    this.getToken = options.getToken;
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.tokenObtainedAt = this.clock.now();
    const g = globalThis as { WebSocket?: WebSocketConstructor; fetch?: FetchLike };
    this.WS = options.WebSocket ?? g.WebSocket;
    this.fetchFn = options.fetch ?? (g.fetch ? (g.fetch.bind(globalThis) as FetchLike) : undefined);
    let transports = options.transports ?? ['websocket', 'longpoll'];
    transports = transports.filter((t) => (t === 'websocket' ? !!this.WS : !!this.fetchFn));
    if (transports.length === 0) {
      throw new TypeError(
        'no usable transport: pass a WebSocket constructor (e.g. `ws` in Node < 22) or a fetch implementation',
      );
    }
    this.o = {
      transports,
      fallbackAfter: Math.max(1, options.fallbackAfter ?? 2),
      upgradeIntervalMs: options.upgradeIntervalMs ?? 30_000,
      cursorFlushMs: options.cursorFlushMs ?? 250,
      tokenRefreshMarginMs: options.tokenRefreshMarginMs ?? 30_000,
      pingIntervalMs: options.pingIntervalMs ?? 25_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      publishTimeoutMs: options.publishTimeoutMs ?? 10_000,
      pollTimeoutMs: options.pollTimeoutMs ?? 25_000,
      dedupWindow: options.dedupWindow ?? 5_000,
      maxFrameBytes: options.maxFrameBytes ?? 65_536,
      watchNetwork: options.watchNetwork ?? true,
    };
    this.store = options.cursorStore ?? defaultCursorStore();
    this.backoff = new Backoff({ ...DEFAULT_BACKOFF, ...options.reconnect }, this.random);
    this.events = new Emitter((e, ev) => this.reportListenerError(e, `client ${String(ev)} listener`));
    this.host = {
      unsubscribe: (sub) => this.unsubscribeSub(sub),
      saveCursor: (sub, cursor) => this.saveCursor(sub.topic, cursor),
      reportListenerError: (e, where) => this.reportListenerError(e, where),
    };
  }

  // ---- public API --------------------------------------------------------

  get state(): ClientState {
    return this._state;
  }

  /** The transport in use while connected. */
  get transportKind(): TransportKind | undefined {
    return this._state === 'connected' ? this.transport?.kind : undefined;
  }

  /** The user the gateway authenticated (WebSocket), or the token's `sub`. */
  get user(): string | undefined {
    return this._user ?? (this.token ? tokenSubject(this.token) : undefined);
  }

  get connectionId(): string | undefined {
    return this._connectionId;
  }

  on<K extends keyof ClientEvents>(event: K, listener: (e: ClientEvents[K]) => void): () => void {
    return this.events.on(event, listener);
  }

  once<K extends keyof ClientEvents>(event: K, listener: (e: ClientEvents[K]) => void): () => void {
    return this.events.once(event, listener);
  }

  off<K extends keyof ClientEvents>(event: K, listener: (e: ClientEvents[K]) => void): void {
    this.events.off(event, listener);
  }

  /** Starts connecting (and reconnecting until `disconnect()` or a refusal). */
  connect(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.connectedOnce = false;
    this.backoff.reset();
    this.authRefusals = 0;
    this.wsStrikes = 0;
    this.useLongPoll = false;
    this.watchNetwork(true);
    this.setState('connecting');
    void this.attempt();
  }

  /** Closes the connection and stops reconnecting. Subscriptions stay and resume on `connect()`. */
  disconnect(): void {
    if (this.stopped && this._state === 'disconnected') return;
    this.shutdown(new SwitchyardError('closed', 'the client was disconnected'));
    this.emitDisconnected({ code: CloseCode.Normal, reason: 'client disconnect', willReconnect: false });
  }

  /** Resolves once connected; rejects if the client stops first or after `timeoutMs`. */
  ready(timeoutMs?: number): Promise<void> {
    if (this._state === 'connected') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const offs: (() => void)[] = [];
      let timer: TimerHandle | undefined;
      const done = (err?: SwitchyardError) => {
        offs.forEach((f) => f());
        this.clock.clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      offs.push(this.on('connected', () => done()));
      offs.push(
        this.on('disconnected', (e) => {
          if (!e.willReconnect) done(e.error ?? new SwitchyardError('closed', 'the client stopped'));
        }),
      );
      if (timeoutMs !== undefined) {
        timer = this.clock.setTimeout(
          () => done(new SwitchyardError('timeout', `not connected within ${timeoutMs} ms`)),
          timeoutMs,
        );
      }
    });
  }

  /**
   * Subscribes to a topic. The subscription resumes from its stored cursor,
   * survives reconnects, and ends only with `unsubscribe()` or a refusal.
   */
  subscribe<T = unknown>(
    topic: string,
    handlers: SubscriptionHandlers<T> = {},
    options: SubscribeOptions = {},
  ): Subscription<T> {
    if (typeof topic !== 'string' || topic.length === 0) throw new TypeError('topic must be a non-empty string');
    if (this.subs.has(topic)) {
      throw new SwitchyardError('duplicate_subscription', `already subscribed to ${topic}`, { topic });
    }
    const sub = new Subscription<T>(topic, this.host, this.o.dedupWindow, options.presence === true);
    sub.attach(handlers);
    this.subs.set(topic, sub as unknown as Subscription<never>);
    if (this._state === 'connected') this.sendSubscribe(sub as unknown as Subscription<never>);
    return sub;
  }

  getSubscription<T = unknown>(topic: string): Subscription<T> | undefined {
    return this.subs.get(topic) as unknown as Subscription<T> | undefined;
  }

  subscriptions(): Subscription[] {
    return [...this.subs.values()] as unknown as Subscription[];
  }

  /**
   * Who is in this user's presence channels of `topic` (a topic with
   * `Presence: true`), over the whole fleet: per channel, the counts and the
   * members up to the gateway's cap. Needs an open WebSocket connection;
   * rejects with `closed` (not connected), `unsupported` (long-poll),
   * `connection_lost`, `timeout`, or the gateway's refusal (`bad_request`:
   * no presence on the topic; `forbidden`; `internal`).
   */
  presence(topic: string, options: PresenceOptions = {}): Promise<PresenceFrame['channels']> {
    return new Promise((resolve, reject) => {
      const t = this.transport;
      if (this.stopped || !t || this._state !== 'connected') {
        reject(new SwitchyardError('closed', 'the client is not connected', { topic }));
        return;
      }
      if (t.kind === 'longpoll') {
        reject(new SwitchyardError('unsupported', 'presence needs a WebSocket; the client is on long-poll', { topic }));
        return;
      }
      const id = this.nextId++;
      let done = false;
      const timer = this.clock.setTimeout(() => {
        if (done) return;
        done = true;
        this.pending.delete(id);
        reject(new SwitchyardError('timeout', 'no presence answer in time', { topic, requestId: id }));
      }, options.timeoutMs ?? this.o.publishTimeoutMs);
      this.pending.set(id, {
        kind: 'presence',
        resolve: (reply) => {
          if (done) return;
          done = true;
          this.clock.clearTimeout(timer);
          resolve(reply.channels);
        },
        reject: (e) => {
          if (done) return;
          done = true;
          this.clock.clearTimeout(timer);
          reject(new SwitchyardError(e.code, e.message, { topic, ...(e.requestId !== undefined ? { requestId: e.requestId } : {}) }));
        },
      });
      this.send(t, { type: 'presence', id, topic });
    });
  }

  /**
   * Publishes to a topic the gateway lets users publish to. Resolves when
   * the gateway has stored the event; rejects with a {@link SwitchyardError}
   * (`not_publishable`, `too_large`, `rate_limited`, `timeout`,
   * `connection_lost`, `unsupported` on long-poll, `closed`, …).
   */
  publish(topic: string, payload: unknown, options: PublishOptions = {}): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let encoded: string | undefined;
      try {
        encoded = JSON.stringify({ type: 'publish', id: 0, topic, payload });
      } catch (e) {
        reject(new SwitchyardError('bad_request', 'payload is not JSON-serialisable', { topic, cause: e }));
        return;
      }
      if (encoded === undefined || payload === undefined) {
        reject(new SwitchyardError('bad_request', 'payload is not JSON-serialisable', { topic }));
        return;
      }
      if (new TextEncoder().encode(encoded).length + 16 > this.o.maxFrameBytes) {
        reject(new SwitchyardError('too_large', `publish frame exceeds ${this.o.maxFrameBytes} bytes`, { topic }));
        return;
      }
      if (this.stopped) {
        reject(new SwitchyardError('closed', 'the client is not connected; call connect()', { topic }));
        return;
      }
      if (this._state === 'connected' && this.transport?.kind === 'longpoll') {
        reject(new SwitchyardError('unsupported', 'publish needs a WebSocket; the client is on long-poll', { topic }));
        return;
      }
      const timeoutMs = options.timeoutMs ?? this.o.publishTimeoutMs;
      const req: PublishRequest = {
        topic,
        payload,
        done: false,
        resolve: () => {
          if (req.done) return;
          req.done = true;
          this.clock.clearTimeout(req.timer);
          resolve();
        },
        reject: (e) => {
          if (req.done) return;
          req.done = true;
          this.clock.clearTimeout(req.timer);
          if (req.id !== undefined) this.pending.delete(req.id);
          const i = this.queue.indexOf(req);
          if (i >= 0) this.queue.splice(i, 1);
          reject(e);
        },
        timer: undefined,
      };
      req.timer = this.clock.setTimeout(
        () => req.reject(new SwitchyardError('timeout', `no answer to publish within ${timeoutMs} ms`, { topic })),
        timeoutMs,
      );
      if (this._state === 'connected') this.sendPublish(req);
      else this.queue.push(req);
    });
  }

  // ---- connection lifecycle -------------------------------------------

  private setState(state: ClientState): void {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this.events.emit('state', { state, previous });
  }

  private emitDisconnected(e: DisconnectedEvent): void {
    this.events.emit('disconnected', e);
  }

  private report(error: SwitchyardError): void {
    this.events.emit('error', error);
  }

  private reportListenerError(e: unknown, where: string): void {
    const err = new SwitchyardError('handler', `${where} threw: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
    if (where.startsWith('client error')) return; // never loop on a failing error listener
    this.report(err);
  }

  private pickTransport(): TransportKind {
    const [first] = this.o.transports;
    if (this.useLongPoll && this.o.transports.includes('longpoll')) return 'longpoll';
    return first ?? 'longpoll';
  }

  private async currentToken(): Promise<string> {
    const now = this.clock.now();
    const exp = this.token ? tokenExpiryMs(this.token) : undefined;
    const stale = !this.token || this.forceFreshToken || (exp !== undefined && exp - now < MIN_TOKEN_LIFE_MS);
    if (!stale && this.token) return this.token;
    if (!this.getToken) {
      if (this.token && !this.forceFreshToken && exp !== undefined && exp > now) return this.token;
      throw new Stop(new SwitchyardError('unauthorized', 'the token has expired and no getToken was given'));
    }
    const token = await this.fetchToken();
    this.forceFreshToken = false;
    return token;
  }

  private async fetchToken(): Promise<string> {
    if (!this.getToken) throw new SwitchyardError('token', 'no getToken');
    let token: unknown;
    try {
      token = await this.getToken();
    } catch (e) {
      throw new SwitchyardError('token', `getToken() failed: ${e instanceof Error ? e.message : String(e)}`, {
        cause: e,
      });
    }
    if (typeof token !== 'string' || token.length === 0) {
      throw new SwitchyardError('token', 'getToken() did not return a token string');
    }
    this.token = token;
    this.tokenObtainedAt = this.clock.now();
    const expiresAtMs = tokenExpiryMs(token);
    this.events.emit('token', expiresAtMs !== undefined ? { expiresAtMs } : {});
    return token;
  }

  private async attempt(): Promise<void> {
    this.clock.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const gen = ++this.generation;
    let token: string;
    try {
      token = await this.currentToken();
    } catch (e) {
      if (gen !== this.generation || this.stopped) return;
      if (e instanceof Stop) return this.fail(e.error);
      this.report(e as SwitchyardError);
      return this.scheduleReconnect(this.backoff.next(), false, 0, (e as Error).message);
    }
    if (gen !== this.generation || this.stopped) return;
    const ep = this.endpoints[this.urlIndex % this.endpoints.length] as Endpoints;
    this.transportUrl = ep.http;
    this.transport = this.createTransport(this.pickTransport(), ep, token, false);
  }

  private createTransport(kind: TransportKind, ep: Endpoints, token: string, candidate: boolean): Transport {
    let t: Transport | undefined = undefined;
    const callbacks = {
      onOpen: (info: OpenInfo) => {
        if (!t) return;
        if (candidate) this.upgradeTo(t, info);
        else if (t === this.transport) this.opened(t, info);
      },
      onFrame: (f: ServerFrame) => {
        if (t && t === this.transport) this.frame(t, f);
      },
      onClose: (info: CloseInfo) => {
        if (!t) return;
        if (t === this.transport) this.closed(t, info);
        else if (candidate) this.scheduleUpgrade();
      },
    };
    if (kind === 'websocket') {
      t = new WebSocketTransport(ep.ws, token, this.WS as WebSocketConstructor, this.clock, this.o.connectTimeoutMs, callbacks);
    } else {
      t = new LongPollTransport(
        ep.http,
        token,
        this.fetchFn as FetchLike,
        this.clock,
        { pollTimeoutMs: this.o.pollTimeoutMs, connectTimeoutMs: this.o.connectTimeoutMs, random: this.random },
        callbacks,
      );
    }
    return t;
  }

  private opened(t: Transport, info: OpenInfo): void {
    this.openedAt = this.clock.now();
    this.connectedOnce = true;
    if (info.user) this._user = info.user;
    this._connectionId = info.connectionId;
    if (t.kind === 'websocket') {
      this.wsStrikes = 0;
      this.useLongPoll = false;
      this.startPing(t);
    } else {
      this.scheduleUpgrade();
    }
    // Subscribes go out before anything the application sends once it
    // hears "connected", so its own publish is seen by its subscription.
    for (const sub of this.subs.values()) this.sendSubscribe(sub, t);
    const queued = this.queue.splice(0);
    for (const req of queued) this.sendPublish(req);
    this.setState('connected');
    this.events.emit('connected', {
      transport: t.kind,
      url: this.transportUrl,
      ...(info.connectionId ? { connectionId: info.connectionId } : {}),
      ...(info.user ? { user: info.user } : {}),
    });
    this.scheduleRefresh();
  }

  /** Drops everything tied to the connection that just ended. */
  private detach(): void {
    this.generation += 1;
    for (const timer of [this.pingTimer, this.pongTimer, this.upgradeTimer, this.refreshTimer]) {
      this.clock.clearTimeout(timer);
    }
    this.pingTimer = this.pongTimer = this.upgradeTimer = this.refreshTimer = undefined;
    for (const [, p] of this.pending) {
      if (p.kind === 'presence') {
        p.reject(new SwitchyardError('connection_lost', 'the connection dropped before the gateway answered'));
      } else if (p.kind === 'publish') {
        p.req.reject(
          new SwitchyardError('connection_lost', 'the connection dropped before the gateway answered; the publish may or may not have been stored', {
            topic: p.req.topic,
          }),
        );
      }
    }
    this.pending.clear();
    for (const sub of this.subs.values()) {
      sub.pendingId = undefined;
      sub.sentCursor = undefined;
      if (sub.state === 'subscribed') sub.setState('recovering');
    }
    this._connectionId = undefined;
    this.flushCursors();
  }

  private closed(t: Transport, info: CloseInfo): void {
    this.transport = undefined;
    const openFor = info.wasOpen ? this.clock.now() - this.openedAt : 0;
    this.detach();
    if (this.stopped) return;
    if (info.wasOpen) {
      this.emitDisconnected({ code: info.code, reason: info.reason, willReconnect: true });
    }
    void this.afterClose(t.kind, info, openFor);
  }

  private async afterClose(kind: TransportKind, info: CloseInfo, openFor: number): Promise<void> {
    const hint = this.serverHintMs;
    this.serverHintMs = undefined;
    const gen = this.generation;
    let code = info.code;
    let reason = info.reason;
    if (info.wasOpen && openFor >= STABLE_MS) {
      // A connection that lasted counts as a success; one dropped right
      // after it opened counts as another failed attempt, so a node that
      // accepts and drops at once does not get a tight reconnect loop.
      this.backoff.reset();
      this.authRefusals = 0;
    }
    if (code === CloseCode.Forbidden) {
      return this.fail(new SwitchyardError('forbidden', reason || 'the gateway refused this client', { status: 403 }));
    }
    if (!info.wasOpen && kind === 'websocket') {
      // A browser's WebSocket hides why an upgrade failed: ask over HTTP.
      const r = await probe(
        (this.endpoints[this.urlIndex % this.endpoints.length] as Endpoints).http,
        this.token ?? '',
        this.fetchFn ?? (() => Promise.reject(new Error('no fetch'))),
        this.clock,
        this.o.connectTimeoutMs,
      );
      if (gen !== this.generation || this.stopped) return;
      if (r.kind === 'unauthorized') {
        code = CloseCode.Unauthorized;
        reason = r.message;
      } else if (r.kind === 'forbidden') {
        return this.fail(new SwitchyardError('forbidden', r.message || 'the gateway refused this client', { status: 403 }));
      } else if (r.kind === 'ok') {
        this.wsStrikes += 1;
        if (this.o.transports.includes('longpoll') && this.wsStrikes >= this.o.fallbackAfter) {
          // HTTP works and the token is fine: WebSockets are what fails here.
          this.useLongPoll = true;
          this.backoff.count();
          return this.scheduleReconnect(0, false, code, `${reason || 'WebSocket failed'}; falling back to long-poll`);
        }
      }
    }
    if (code === CloseCode.TokenExpired || code === CloseCode.Unauthorized) {
      this.authRefusals += 1;
      if (!this.getToken || this.authRefusals > AUTH_RETRIES) {
        return this.fail(
          new SwitchyardError('unauthorized', reason || 'the gateway refused the token', {
            status: code === CloseCode.Unauthorized ? 401 : undefined,
          }),
        );
      }
      this.forceFreshToken = true;
      const delay = this.authRefusals === 1 ? Math.floor(this.random() * 250) : this.backoff.next();
      return this.scheduleReconnect(delay, false, code, reason);
    }
    if (hint !== undefined) {
      this.backoff.count();
      return this.scheduleReconnect(hint, true, code, reason);
    }
    if (this.backoff.exhausted) {
      return this.fail(new SwitchyardError('network', `gave up after ${this.backoff.attempts} attempts: ${reason}`));
    }
    this.scheduleReconnect(this.backoff.next(), false, code, reason);
  }

  private scheduleReconnect(delayMs: number, serverHint: boolean, code: number, reason: string): void {
    if (this.stopped) return;
    // The next attempt goes to the next gateway in the list.
    this.urlIndex = (this.urlIndex + 1) % this.endpoints.length;
    this.setState(this.connectedOnce ? 'reconnecting' : 'connecting');
    this.events.emit('reconnecting', { attempt: this.backoff.attempts, delayMs, serverHint, code, reason });
    this.clock.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = this.clock.setTimeout(() => void this.attempt(), delayMs);
  }

  /** Stops for good after a refusal. */
  private fail(error: SwitchyardError): void {
    this.shutdown(error);
    this.report(error);
    this.emitDisconnected({ code: 0, reason: error.message, willReconnect: false, error });
  }

  private shutdown(error: SwitchyardError): void {
    this.stopped = true;
    this.clock.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const t = this.transport;
    this.transport = undefined;
    this.detach();
    t?.close(CloseCode.Normal, 'client stopped');
    for (const req of this.queue.splice(0)) req.reject(error);
    this.watchNetwork(false);
    this.setState('disconnected');
  }

  // ---- frames ---------------------------------------------------------

  private send(t: Transport, frame: ClientFrame): boolean {
    return t.send(frame);
  }

  private frame(t: Transport, f: ServerFrame): void {
    switch (f.type) {
      case 'message':
        this.subs.get(f.topic)?.deliver(f);
        return;
      case 'subscribed': {
        if (f.resync) {
          const sub = this.subs.get(f.topic);
          sub?.unrecovered(sub.cursor);
          return;
        }
        const p = this.pending.get(f.id);
        if (p?.kind !== 'subscribe') return;
        this.pending.delete(f.id);
        if (this.subs.get(f.topic) !== p.sub || p.sub.state === 'unsubscribed') return;
        p.sub.confirmed(f.recovered, t.kind);
        return;
      }
      case 'published': {
        const p = this.pending.get(f.id);
        if (p?.kind === 'publish') {
          this.pending.delete(f.id);
          p.req.resolve();
        }
        return;
      }
      case 'pong':
        this.pending.delete(f.id);
        this.clock.clearTimeout(this.pongTimer);
        this.pongTimer = undefined;
        if (t.kind === 'websocket') this.startPing(t);
        return;
      case 'refreshed':
        this.pending.delete(f.id);
        this.authRefusals = 0;
        return;
      case 'unsubscribed':
        this.pending.delete(f.id);
        return;
      case 'reconnect':
        this.serverHintMs = f.after_ms;
        return;
      case 'error':
        return this.errorFrame(t, f);
      case 'welcome':
        return;
      case 'join':
      case 'leave':
        this.subs.get(f.topic)?.presenceChange(f);
        return;
      case 'presence': {
        const p = this.pending.get(f.id);
        if (p?.kind === 'presence') {
          this.pending.delete(f.id);
          p.resolve(f);
        }
        return;
      }
    }
  }

  private errorFrame(t: Transport, f: Extract<ServerFrame, { type: 'error' }>): void {
    const code = serverCode(f.code);
    const p = f.id !== undefined ? this.pending.get(f.id) : undefined;
    if (p && f.id !== undefined) {
      this.pending.delete(f.id);
      const err = new SwitchyardError(code, f.message, { requestId: f.id });
      switch (p.kind) {
        case 'publish':
          p.req.reject(new SwitchyardError(code, f.message, { requestId: f.id, topic: p.req.topic }));
          return;
        case 'subscribe':
          return this.subscribeRefused(t, p.sub, new SwitchyardError(code, f.message, { requestId: f.id, topic: p.sub.topic }));
        case 'refresh':
          return this.refreshRefused(err, p.attempt);
        case 'presence':
          p.reject(err);
          return;
        default:
          this.report(err);
          return;
      }
    }
    const topic = f.topic ?? endedSubscriptionTopic(f.message);
    const sub = topic !== undefined ? this.subs.get(topic) : undefined;
    if (sub) {
      // The gateway ended this subscription (a refresh or a topology
      // reload took the user's channels away).
      this.subs.delete(sub.topic);
      sub.ended('server', new SwitchyardError(code, f.message, { topic: sub.topic }));
      return;
    }
    // "token expired" precedes close 4001, which is handled on close.
    if (code === 'unauthorized') return;
    this.report(new SwitchyardError(code, f.message));
  }

  private subscribeRefused(t: Transport, sub: Subscription<never>, err: SwitchyardError): void {
    sub.pendingId = undefined;
    if (err.retryable) {
      // Busy or the log is briefly unavailable: try this one again.
      sub.fail(err);
      const delay = Math.max(1000, Math.floor(this.random() * 5000));
      this.clock.setTimeout(() => {
        if (this.transport === t && this.subs.get(sub.topic) === sub) this.sendSubscribe(sub, t);
      }, delay);
      return;
    }
    this.subs.delete(sub.topic);
    sub.ended('server', err);
  }

  /** The stored cursor; synchronous for synchronous stores, so frame order follows call order. */
  private loadCursor(topic: string): string | undefined | Promise<string | undefined> {
    const valid = (v: unknown) => (typeof v === 'string' && v ? v : undefined);
    try {
      const v = this.store.get(cursorKey(this.user ?? '_', topic));
      if (v && typeof (v as Promise<unknown>).then === 'function') {
        return (v as Promise<unknown>).then(valid, () => undefined);
      }
      return valid(v);
    } catch {
      return undefined;
    }
  }

  private sendSubscribe(sub: Subscription<never>, t: Transport | undefined = this.transport): void {
    if (!t || t !== this.transport || this.subs.get(sub.topic) !== sub || sub.state === 'unsubscribed') return;
    if (!sub.cursorLoaded) {
      const stored = this.loadCursor(sub.topic);
      if (typeof stored === 'object' && stored !== null) {
        void Promise.resolve(stored).then((c) => {
          sub.restoreCursor(c);
          this.sendSubscribe(sub, t);
        });
        return;
      }
      sub.restoreCursor(stored);
    }
    if (sub.pendingId !== undefined && this.pending.has(sub.pendingId)) return;
    const id = this.nextId++;
    const cursor = sub.cursor;
    sub.pendingId = id;
    sub.sentCursor = cursor;
    this.pending.set(id, { kind: 'subscribe', sub });
    this.send(t, {
      type: 'subscribe',
      id,
      topic: sub.topic,
      ...(cursor ? { cursor } : {}),
      ...(sub.presence ? { presence: true } : {}),
    });
  }

  private unsubscribeSub(sub: Subscription<never>): void {
    if (this.subs.get(sub.topic) !== sub) return;
    this.subs.delete(sub.topic);
    const t = this.transport;
    if (t && this._state === 'connected' && (sub.state === 'subscribed' || sub.pendingId !== undefined)) {
      const id = this.nextId++;
      this.pending.set(id, { kind: 'unsubscribe' });
      this.send(t, { type: 'unsubscribe', id, topic: sub.topic });
    }
    if (sub.pendingId !== undefined) this.pending.delete(sub.pendingId);
    sub.ended('client');
    this.flushCursors();
  }

  private sendPublish(req: PublishRequest): void {
    if (req.done) return;
    const t = this.transport;
    if (!t) {
      this.queue.push(req);
      return;
    }
    if (t.kind === 'longpoll') {
      req.reject(new SwitchyardError('unsupported', 'publish needs a WebSocket; the client is on long-poll', { topic: req.topic }));
      return;
    }
    const id = this.nextId++;
    req.id = id;
    this.pending.set(id, { kind: 'publish', req });
    if (!this.send(t, { type: 'publish', id, topic: req.topic, payload: req.payload })) {
      this.pending.delete(id);
      req.id = undefined;
      this.queue.push(req);
    }
  }

  // ---- token refresh --------------------------------------------------

  private scheduleRefresh(): void {
    this.clock.clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    const margin = this.o.tokenRefreshMarginMs;
    if (!this.getToken || margin === false || !this.token || !this.transport) return;
    const exp = tokenExpiryMs(this.token);
    if (exp === undefined) return;
    const at = refreshAt(exp, this.tokenObtainedAt, margin);
    this.refreshTimer = this.clock.setTimeout(() => void this.refreshNow(0), Math.max(0, at - this.clock.now()));
  }

  private async refreshNow(attempt: number): Promise<void> {
    const t = this.transport;
    if (!t || this.stopped) return;
    let token: string;
    try {
      token = await this.fetchToken();
    } catch (e) {
      if (this.stopped || t !== this.transport) return;
      this.report(e as SwitchyardError);
      return this.retryRefresh(attempt);
    }
    if (this.stopped || t !== this.transport) return;
    const id = this.nextId++;
    this.pending.set(id, { kind: 'refresh', attempt });
    this.send(t, { type: 'refresh', id, token });
    this.scheduleRefresh();
  }

  /** Tries again within the token's remaining life; at expiry the 4001 path takes over. */
  private retryRefresh(attempt: number): void {
    if (attempt >= 3) return;
    const exp = this.token ? tokenExpiryMs(this.token) : undefined;
    const left = exp !== undefined ? exp - this.clock.now() : 10_000;
    if (left <= 0) return;
    const delay = Math.min(left / 2, 1000 * 2 ** attempt);
    this.clock.clearTimeout(this.refreshTimer);
    this.refreshTimer = this.clock.setTimeout(() => void this.refreshNow(attempt + 1), delay);
  }

  private refreshRefused(err: SwitchyardError, attempt: number): void {
    if (err.code === 'forbidden') {
      // A token for another user: an application bug, not a network issue.
      return this.fail(err);
    }
    this.report(err);
    this.retryRefresh(attempt);
  }

  // ---- liveness --------------------------------------------------------

  /** One ping at a time: the next is scheduled when the pong arrives. */
  private startPing(t: Transport): void {
    if (this.o.pingIntervalMs <= 0) return;
    this.clock.clearTimeout(this.pingTimer);
    this.pingTimer = this.clock.setTimeout(() => {
      if (t !== this.transport) return;
      const id = this.nextId++;
      this.pending.set(id, { kind: 'ping' });
      this.send(t, { type: 'ping', id });
      this.pongTimer = this.clock.setTimeout(() => {
        if (t === this.transport) t.close(CloseCode.PingTimeout, `no pong within ${this.o.pongTimeoutMs} ms`);
      }, this.o.pongTimeoutMs);
    }, this.o.pingIntervalMs);
  }

  // ---- transport upgrade (long-poll → WebSocket) ------------------------

  private scheduleUpgrade(): void {
    this.clock.clearTimeout(this.upgradeTimer);
    this.upgradeTimer = undefined;
    const t = this.transport;
    if (!t || t.kind !== 'longpoll' || !this.o.transports.includes('websocket') || this.o.upgradeIntervalMs <= 0) return;
    this.upgradeTimer = this.clock.setTimeout(() => {
      if (this.transport !== t || this.stopped || !this.token) return;
      const ep = this.endpoints[this.urlIndex % this.endpoints.length] as Endpoints;
      this.createTransport('websocket', ep, this.token, true);
    }, this.o.upgradeIntervalMs);
  }

  private upgradeTo(candidate: Transport, info: OpenInfo): void {
    const lp = this.transport;
    if (!lp || lp.kind !== 'longpoll' || this.stopped) {
      candidate.close(CloseCode.Normal, 'not needed');
      return;
    }
    // The WebSocket takes over; the polls stop, and every subscription
    // resumes from its cursor on the WebSocket (overlap is de-duplicated).
    this.transport = candidate;
    this.detach();
    lp.close(CloseCode.Normal, 'upgraded to WebSocket');
    this.opened(candidate, info);
  }

  // ---- cursors -------------------------------------------------------------

  private saveCursor(topic: string, cursor: string | undefined): void {
    this.cursorWrites.set(cursorKey(this.user ?? '_', topic), cursor);
    if (this.o.cursorFlushMs <= 0) return this.flushCursors();
    if (this.flushTimer === undefined) {
      this.flushTimer = this.clock.setTimeout(() => this.flushCursors(), this.o.cursorFlushMs);
    }
  }

  /** Writes batched cursors to the store now. */
  flushCursors(): void {
    this.clock.clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const writes = [...this.cursorWrites];
    this.cursorWrites.clear();
    for (const [key, cursor] of writes) {
      try {
        const r = cursor === undefined ? this.store.delete(key) : this.store.set(key, cursor);
        if (r && typeof (r as Promise<void>).catch === 'function') (r as Promise<void>).catch(() => {});
      } catch {
        /* a failing store costs a replay, never a loss */
      }
    }
  }

  // ---- browser network events -------------------------------------------

  private watchNetwork(on: boolean): void {
    this.networkListeners?.();
    this.networkListeners = undefined;
    const w = globalThis as {
      addEventListener?: (t: string, f: () => void) => void;
      removeEventListener?: (t: string, f: () => void) => void;
    };
    if (!on || !this.o.watchNetwork || typeof w.addEventListener !== 'function') return;
    const offline = () => this.transport?.close(CloseCode.Offline, 'the browser went offline');
    const online = () => {
      if (this.stopped || this.transport || this.reconnectTimer === undefined) return;
      // Back online: try now instead of at the end of a long backoff.
      this.backoff.reset();
      void this.attempt();
    };
    const hide = () => this.flushCursors();
    w.addEventListener('offline', offline);
    w.addEventListener('online', online);
    w.addEventListener('pagehide', hide);
    this.networkListeners = () => {
      w.removeEventListener?.('offline', offline);
      w.removeEventListener?.('online', online);
      w.removeEventListener?.('pagehide', hide);
    };
  }
}


