/**
 * What the client core needs from a transport. Both transports speak the
 * same frames (`ClientFrame` in, `ServerFrame` out), so subscriptions,
 * cursors and recovery work identically over WebSocket and long-poll.
 *
 * Invariant: `onClose` is reported exactly once per transport, and nothing
 * is reported after it — the core can start the next connection at once.
 */

import type { ClientFrame, ServerFrame } from '../protocol.js';

export type TransportKind = 'websocket' | 'longpoll';

export interface OpenInfo {
  connectionId?: string;
  user?: string;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Whether the transport had opened (a WebSocket got its `welcome`). */
  wasOpen: boolean;
}

export interface TransportCallbacks {
  onOpen(info: OpenInfo): void;
  onFrame(frame: ServerFrame): void;
  onClose(info: CloseInfo): void;
}

export interface Transport {
  readonly kind: TransportKind;
  /** Sends a frame; false when the transport cannot send now. */
  send(frame: ClientFrame): boolean;
  /** Closes and reports `onClose` with this code, at once. */
  close(code: number, reason: string): void;
}

/** The part of the WebSocket API the SDK uses (browsers, Node 22+, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor: the global one, or e.g. `ws`'s default export. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => unknown;

export type FetchLike = (
  url: string,
  init: { method?: string; headers?: Record<string, string>; signal?: AbortSignal },
) => Promise<{ status: number; json(): Promise<unknown>; text(): Promise<string> }>;
