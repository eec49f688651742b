/**
 * A subscription to one topic: its state, its cursor, the messages it has
 * seen, and the events the application listens to.
 *
 * States:
 * - `subscribing`: asked for, not yet confirmed by the gateway;
 * - `subscribed`: confirmed; messages flow;
 * - `recovering`: the connection was lost; the subscription will be resumed
 *   from its cursor on the next connection;
 * - `unsubscribed`: ended, by the application or by a refusal (final).
 *
 * Invariants:
 * - A message is handed to the application at most once per subscription
 *   (event ids are remembered across reconnects, within `dedupWindow`).
 * - The cursor moves only past messages that were handed over, in arrival
 *   order, so resuming from it never skips one.
 */

import { Emitter } from './emitter.js';
import { SwitchyardError } from './errors.js';
import type { MessageFrame, PresenceChangeFrame } from './protocol.js';
import type { TransportKind } from './transport/types.js';

export type SubscriptionState = 'subscribing' | 'subscribed' | 'recovering' | 'unsubscribed';

/** A message delivered on a subscription. */
export interface Message<T = unknown> {
  topic: string;
  /** The event id (unique in the log; the de-duplication key). */
  id: string;
  /** JSON payloads as values; other payloads as base64 text with `contentType`. */
  payload: T;
  /** Position after this message; resuming from it continues after it. */
  cursor: string;
  /** The producer's timestamp, when it set one (milliseconds since the epoch). */
  createdAtMs?: number;
  /** Set for non-JSON payloads (the payload is then base64). */
  contentType?: string;
}

export interface SubscribedEvent {
  /** Whether every message after the cursor that is still retained follows. */
  recovered: boolean;
  /** Whether this was a resumption (a cursor was sent, or the subscription had been active). */
  wasRecovering: boolean;
  transport: TransportKind;
}

export interface UnrecoveredEvent {
  /** The cursor the gateway could not resume from (none: the subscription had no position yet). */
  cursor: string | undefined;
}

export interface SubscriptionStateEvent {
  state: SubscriptionState;
  previous: SubscriptionState;
}

export interface UnsubscribedEvent {
  reason: 'client' | 'server';
  error?: SwitchyardError;
}

/** A presence change in one of the subscription's channels. */
export interface PresenceChange {
  /** The concrete channel, e.g. `Room-CHLT`. */
  channel: string;
  user: string;
  /** The user's client info (their token's `info` claim), on joins. */
  info?: unknown;
  /** A leave found after the user's node stopped heartbeating (after its TTL). */
  expired: boolean;
}

export interface SubscriptionEvents<T = unknown> {
  state: SubscriptionStateEvent;
  message: Message<T>;
  subscribed: SubscribedEvent;
  /**
   * The gateway could not continue from where this subscription was
   * (`recovered: false` on a resumption: cursor too old, from another log,
   * or no position yet). Messages may have been missed: refetch state.
   */
  unrecovered: UnrecoveredEvent;
  error: SwitchyardError;
  unsubscribed: UnsubscribedEvent;
  /** A user's first connection arrived in a presence channel (subscribed with `presence: true`). */
  join: PresenceChange;
  /** A user's last connection left a presence channel. */
  leave: PresenceChange;
}

/** Listeners to attach when subscribing, by event name. */
export type SubscriptionHandlers<T = unknown> = {
  [K in keyof SubscriptionEvents<T>]?: (event: SubscriptionEvents<T>[K]) => void;
};

/** What a subscription needs from its client. @internal */
export interface SubscriptionHost {
  unsubscribe(sub: Subscription<never>): void;
  saveCursor(sub: Subscription<never>, cursor: string | undefined): void;
  reportListenerError(error: unknown, where: string): void;
}

/** Remembers the last `capacity` ids. */
class RecentIds {
  private readonly set = new Set<string>();
  private readonly ring: (string | undefined)[];
  private next = 0;
  constructor(private readonly capacity: number) {
    this.ring = new Array(Math.max(1, capacity));
  }
  has(id: string): boolean {
    return this.set.has(id);
  }
  add(id: string): void {
    if (this.capacity <= 0 || this.set.has(id)) return;
    const evicted = this.ring[this.next];
    if (evicted !== undefined) this.set.delete(evicted);
    this.ring[this.next] = id;
    this.next = (this.next + 1) % this.ring.length;
    this.set.add(id);
  }
}

export class Subscription<T = unknown> {
  private _state: SubscriptionState = 'subscribing';
  private _cursor: string | undefined;
  private readonly events: Emitter<SubscriptionEvents<T>>;
  private readonly seen: RecentIds;
  private _duplicates = 0;
  /** @internal Whether the stored cursor was loaded. */
  cursorLoaded = false;
  /** @internal Whether the subscription was ever confirmed (a resumption is a recovery). */
  everSubscribed = false;
  /** @internal Cursor sent with the pending subscribe request. */
  sentCursor: string | undefined;
  /** @internal Request id of the pending subscribe. */
  pendingId: number | undefined;

  /** @internal Created by `SwitchyardClient.subscribe`. */
  constructor(
    readonly topic: string,
    private readonly host: SubscriptionHost,
    dedupWindow: number,
    /** Whether the gateway sends this subscription `join`/`leave` frames. */
    readonly presence = false,
  ) {
    this.events = new Emitter((e, ev) => host.reportListenerError(e, `subscription ${topic} ${String(ev)} listener`));
    this.seen = new RecentIds(dedupWindow);
  }

  get state(): SubscriptionState {
    return this._state;
  }

  /** The position after the last message handed to the application. */
  get cursor(): string | undefined {
    return this._cursor;
  }

  /** Messages dropped because they had been delivered already. */
  get duplicatesDropped(): number {
    return this._duplicates;
  }

  on<K extends keyof SubscriptionEvents<T>>(event: K, listener: (e: SubscriptionEvents<T>[K]) => void): () => void {
    return this.events.on(event, listener);
  }

  once<K extends keyof SubscriptionEvents<T>>(event: K, listener: (e: SubscriptionEvents<T>[K]) => void): () => void {
    return this.events.once(event, listener);
  }

  off<K extends keyof SubscriptionEvents<T>>(event: K, listener: (e: SubscriptionEvents<T>[K]) => void): void {
    this.events.off(event, listener);
  }

  /** Ends the subscription; its cursor stays stored for a later `subscribe`. */
  unsubscribe(): void {
    if (this._state === 'unsubscribed') return;
    this.host.unsubscribe(this as unknown as Subscription<never>);
  }

  /** @internal */
  attach(handlers: SubscriptionHandlers<T>): void {
    for (const [event, fn] of Object.entries(handlers)) {
      if (typeof fn === 'function') this.events.on(event as keyof SubscriptionEvents<T>, fn as never);
    }
  }

  /** @internal */
  setState(state: SubscriptionState): void {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this.events.emit('state', { state, previous });
  }

  /** @internal Restores the stored cursor (before the first subscribe). */
  restoreCursor(cursor: string | undefined): void {
    this.cursorLoaded = true;
    if (this._cursor === undefined && cursor) this._cursor = cursor;
  }

  /** @internal The gateway confirmed a (re)subscription. */
  confirmed(recovered: boolean, transport: TransportKind): void {
    const wasRecovering = this.sentCursor !== undefined || this.everSubscribed;
    const lostCursor = this.sentCursor;
    this.everSubscribed = true;
    this.pendingId = undefined;
    this.sentCursor = undefined;
    this.setState('subscribed');
    this.events.emit('subscribed', { recovered, wasRecovering, transport });
    if (wasRecovering && !recovered) this.unrecovered(lostCursor);
  }

  /** @internal Continuity is lost: forget the unusable cursor, tell the app. */
  unrecovered(cursor: string | undefined): void {
    if (this._cursor === cursor) {
      this._cursor = undefined;
      this.host.saveCursor(this as unknown as Subscription<never>, undefined);
    }
    this.events.emit('unrecovered', { cursor });
  }

  /** @internal */
  deliver(frame: MessageFrame): void {
    if (this._state !== 'subscribed') return;
    if (this.seen.has(frame.id)) {
      this._duplicates += 1;
      return;
    }
    this.seen.add(frame.id);
    const msg: Message<T> = {
      topic: frame.topic,
      id: frame.id,
      payload: frame.payload as T,
      cursor: frame.cursor,
      ...(frame.created_at_ms !== undefined ? { createdAtMs: frame.created_at_ms } : {}),
      ...(frame.content_type !== undefined ? { contentType: frame.content_type } : {}),
    };
    this.events.emit('message', msg);
    this._cursor = frame.cursor;
    this.host.saveCursor(this as unknown as Subscription<never>, frame.cursor);
  }

  /** @internal A join or leave of one of its channels. */
  presenceChange(frame: PresenceChangeFrame): void {
    if (this._state !== 'subscribed') return;
    const change: PresenceChange = {
      channel: frame.channel,
      user: frame.user,
      expired: frame.expired === true,
      ...(frame.info !== undefined ? { info: frame.info } : {}),
    };
    this.events.emit(frame.type, change);
  }

  /** @internal */
  fail(error: SwitchyardError): void {
    this.events.emit('error', error);
  }

  /** @internal Final: by the app or a refusal. */
  ended(reason: 'client' | 'server', error?: SwitchyardError): void {
    if (this._state === 'unsubscribed') return;
    this.pendingId = undefined;
    this.setState('unsubscribed');
    if (error) this.events.emit('error', error);
    this.events.emit('unsubscribed', error ? { reason, error } : { reason });
  }
}
