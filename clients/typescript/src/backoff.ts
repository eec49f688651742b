/**
 * Reconnect delays: exponential backoff with full jitter. The n-th retry
 * waits a uniformly random time between 0 and
 * `min(maxDelayMs, initialDelayMs * multiplier^n)`, so a fleet of clients
 * that lost the same node comes back spread over the window instead of in
 * one wave.
 *
 * Invariant: a delay is never negative and never exceeds `maxDelayMs`.
 */

export interface BackoffOptions {
  /** Upper bound of the first retry's delay. Default 500 ms. */
  initialDelayMs?: number;
  /** Upper bound of any delay. Default 20 000 ms. */
  maxDelayMs?: number;
  /** Growth of the bound per retry. Default 2. */
  multiplier?: number;
  /** Give up after this many consecutive failed attempts. Default: never. */
  maxAttempts?: number;
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = {
  initialDelayMs: 500,
  maxDelayMs: 20_000,
  multiplier: 2,
  maxAttempts: Infinity,
};

/** The upper bound of the delay before retry number `attempt` (0-based). */
export function backoffCeiling(attempt: number, options: BackoffOptions = {}): number {
  const o = { ...DEFAULT_BACKOFF, ...options };
  const exp = o.initialDelayMs * Math.pow(o.multiplier, Math.max(0, attempt));
  return Math.max(0, Math.min(o.maxDelayMs, Number.isFinite(exp) ? exp : o.maxDelayMs));
}

/** A full-jitter delay for retry number `attempt` (0-based). */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.floor(r * backoffCeiling(attempt, options));
}

/** Counts consecutive failures and hands out the next delay. */
export class Backoff {
  private attempt = 0;
  private readonly options: Required<BackoffOptions>;

  constructor(options: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.options = { ...DEFAULT_BACKOFF, ...options };
    if (!(this.options.initialDelayMs >= 0) || !(this.options.maxDelayMs >= 0)) {
      throw new RangeError('backoff delays must be non-negative numbers');
    }
    if (!(this.options.multiplier >= 1)) {
      throw new RangeError('backoff multiplier must be at least 1');
    }
  }

  /** Failed attempts since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** Whether `maxAttempts` consecutive attempts have failed. */
  get exhausted(): boolean {
    return this.attempt >= this.options.maxAttempts;
  }

  /** The delay before the next attempt; counts one more failure. */
  next(): number {
    const d = backoffDelay(this.attempt, this.options, this.random);
    this.attempt += 1;
    return d;
  }

  /** Counts a failure whose delay someone else (the server's hint) chose. */
  count(): void {
    this.attempt += 1;
  }

  reset(): void {
    this.attempt = 0;
  }
}
