/**
 * `@switchyard/client`: the Switchyard client SDK for browsers and Node ≥ 18.
 *
 * ```ts
 * import { SwitchyardClient } from '@switchyard/client';
 * const client = new SwitchyardClient({ url: 'https://push.example.com', getToken });
 * const news = client.subscribe('News', { message: (m) => render(m.payload), unrecovered: () => reload() });
 * client.connect();
 * ```
 *
 * The protocol it speaks is `docs/protocol.md` in the Switchyard repository.
 */

export {
  SwitchyardClient,
  type ClientOptions,
  type ClientState,
  type ClientEvents,
  type StateEvent,
  type ConnectedEvent,
  type DisconnectedEvent,
  type ReconnectingEvent,
  type TokenEvent,
  type PublishOptions,
  type SubscribeOptions,
  type PresenceOptions,
} from './client.js';
export type { ChannelPresence, PresenceMember } from './protocol.js';
export {
  Subscription,
  type SubscriptionState,
  type SubscriptionEvents,
  type SubscriptionHandlers,
  type Message,
  type SubscribedEvent,
  type UnrecoveredEvent,
  type UnsubscribedEvent,
  type SubscriptionStateEvent,
  type PresenceChange,
} from './subscription.js';
export {
  SwitchyardError,
  isSwitchyardError,
  type ErrorCode,
  type ServerErrorCode,
  type ClientErrorCode,
} from './errors.js';
export {
  MemoryCursorStore,
  LocalStorageCursorStore,
  defaultCursorStore,
  type CursorStore,
  type StorageLike,
} from './store.js';
export { Backoff, backoffDelay, backoffCeiling, type BackoffOptions } from './backoff.js';
export { CloseCode, SUBPROTOCOL } from './protocol.js';
export type { TransportKind, WebSocketConstructor, WebSocketLike, FetchLike } from './transport/types.js';
export type { Clock } from './clock.js';
