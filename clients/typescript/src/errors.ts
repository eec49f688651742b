/**
 * Typed errors. Every failure the SDK reports — a refused publish, a
 * refused token, a subscription the server ended — is a {@link SwitchyardError}
 * whose `code` says what the application can do about it.
 *
 * Invariant: `code` is either one of the protocol's error codes, exactly as
 * the gateway sent it, or one of the client-side codes below; never free text.
 */

/** Error codes a gateway sends in `error` frames and HTTP refusals. */
export type ServerErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_publishable'
  | 'rate_limited'
  | 'too_large'
  | 'internal';

/** Error codes the SDK itself produces. */
export type ClientErrorCode =
  /** No reply within the time allowed (`publishTimeoutMs`). */
  | 'timeout'
  /** The connection dropped after a request was sent: its outcome is unknown. */
  | 'connection_lost'
  /** The client was disconnected (`disconnect()`) or has stopped after a refusal. */
  | 'closed'
  /** The operation needs a WebSocket and the client is on long-poll. */
  | 'unsupported'
  /** `getToken()` failed or returned something that is not a token. */
  | 'token'
  /** A gateway could not be reached. */
  | 'network'
  /** The gateway sent something the SDK does not understand. */
  | 'protocol'
  /** `subscribe()` for a topic that already has a subscription on this client. */
  | 'duplicate_subscription'
  /** An application handler threw; the SDK carried on. */
  | 'handler';

export type ErrorCode = ServerErrorCode | ClientErrorCode;

const SERVER_CODES: ReadonlySet<string> = new Set([
  'bad_request',
  'unauthorized',
  'forbidden',
  'not_publishable',
  'rate_limited',
  'too_large',
  'internal',
]);

/** Codes after which the same request may succeed when retried later. */
const RETRYABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'rate_limited',
  'internal',
  'timeout',
  'connection_lost',
  'network',
]);

export interface SwitchyardErrorDetails {
  /** The request id the error answers, when it answers one. */
  requestId?: number;
  /** The topic concerned, when there is one. */
  topic?: string;
  /** HTTP status, for refusals of an HTTP request (upgrade or long-poll). */
  status?: number;
  cause?: unknown;
}

export class SwitchyardError extends Error {
  readonly code: ErrorCode;
  readonly requestId?: number;
  readonly topic?: string;
  readonly status?: number;
  /** Whether retrying the same thing later may succeed. */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, details: SwitchyardErrorDetails = {}) {
    super(message);
    this.name = 'SwitchyardError';
    this.code = code;
    this.retryable = RETRYABLE.has(code);
    if (details.requestId !== undefined) this.requestId = details.requestId;
    if (details.topic !== undefined) this.topic = details.topic;
    if (details.status !== undefined) this.status = details.status;
    if (details.cause !== undefined) (this as { cause?: unknown }).cause = details.cause;
  }
}

/** Narrows an unknown value (e.g. a rejection) to a {@link SwitchyardError}. */
export function isSwitchyardError(e: unknown): e is SwitchyardError {
  return e instanceof SwitchyardError;
}

/** Maps a code from the wire to an {@link ErrorCode}; unknown codes become `protocol`. */
export function serverCode(code: unknown): ErrorCode {
  return typeof code === 'string' && SERVER_CODES.has(code) ? (code as ServerErrorCode) : 'protocol';
}
