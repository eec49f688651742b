import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff, backoffCeiling, backoffDelay } from '../../src/backoff.js';

test('the ceiling grows exponentially and stops at the maximum', () => {
  const o = { initialDelayMs: 100, maxDelayMs: 1000, multiplier: 2 };
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 50].map((a) => backoffCeiling(a, o)),
    [100, 200, 400, 800, 1000, 1000, 1000],
  );
  // A huge attempt count does not overflow into NaN or Infinity.
  assert.equal(backoffCeiling(10_000, o), 1000);
});

test('full jitter spans the whole interval from zero to the ceiling', () => {
  const o = { initialDelayMs: 100, maxDelayMs: 1000 };
  assert.equal(backoffDelay(3, o, () => 0), 0);
  assert.equal(backoffDelay(3, o, () => 0.5), 400);
  assert.equal(backoffDelay(3, o, () => 0.999999), 799);
  // Out-of-range randoms are clamped rather than trusted.
  assert.equal(backoffDelay(3, o, () => 7), 800);
  assert.equal(backoffDelay(3, o, () => -1), 0);
});

test('with a real random source, delays are spread, not clustered', () => {
  const o = { initialDelayMs: 1000, maxDelayMs: 1000 };
  const samples = Array.from({ length: 2000 }, () => backoffDelay(0, o));
  assert.ok(samples.every((d) => d >= 0 && d <= 1000));
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  assert.ok(mean > 400 && mean < 600, `mean ${mean}`);
  const buckets = new Array(10).fill(0);
  for (const s of samples) buckets[Math.min(9, Math.floor(s / 100))]++;
  assert.ok(buckets.every((b) => b > 100), `buckets ${buckets}`);
});

test('Backoff counts failures, resets and gives up after maxAttempts', () => {
  const b = new Backoff({ initialDelayMs: 100, maxDelayMs: 10_000, maxAttempts: 3 }, () => 1);
  assert.deepEqual([b.next(), b.next()], [100, 200]);
  assert.equal(b.exhausted, false);
  b.count();
  assert.equal(b.attempts, 3);
  assert.equal(b.exhausted, true);
  b.reset();
  assert.equal(b.next(), 100);
});

test('invalid bounds are refused', () => {
  assert.throws(() => new Backoff({ initialDelayMs: -1 }), RangeError);
  assert.throws(() => new Backoff({ multiplier: 0.5 }), RangeError);
});
