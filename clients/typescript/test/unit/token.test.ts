import assert from 'node:assert/strict';
import { test } from 'node:test';
import { refreshAt, tokenExpiryMs, tokenSubject } from '../../src/token.js';
import { jwt } from '../support/fakes.js';

test('expiry and subject are read from a JWT', () => {
  const t = jwt({ sub: 'alice', exp: 1_900_000_000, products: ['CHLT'] });
  assert.equal(tokenExpiryMs(t), 1_900_000_000_000);
  assert.equal(tokenSubject(t), 'alice');
});

test('claims with non-ASCII text decode as UTF-8', () => {
  assert.equal(tokenSubject(jwt({ sub: 'zoë', exp: 1 })), 'zoë');
});

test('an unreadable token has no expiry, and is not an error', () => {
  for (const t of ['', 'opaque-token', 'a.b', 'a.!!!.c', `x.${Buffer.from('[1]').toString('base64url')}.y`]) {
    assert.equal(tokenExpiryMs(t), undefined, t);
    assert.equal(tokenSubject(t), undefined, t);
  }
  assert.equal(tokenExpiryMs(jwt({ sub: 'a', exp: 'soon' })), undefined);
});

test('refresh happens the margin before expiry, but within the first half of a short life', () => {
  const now = 1_000_000;
  // One hour token, 30 s margin: 30 s before expiry.
  assert.equal(refreshAt(now + 3_600_000, now, 30_000), now + 3_570_000);
  // 20 s token: half-way, not 10 s after it expired.
  assert.equal(refreshAt(now + 20_000, now, 30_000), now + 10_000);
  // Already expired: now.
  assert.equal(refreshAt(now - 5_000, now, 30_000), now - 5_000);
});
