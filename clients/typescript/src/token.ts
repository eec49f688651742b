/**
 * What the SDK reads from a token: its expiry (to refresh it in time) and
 * its subject (to keep each user's cursors apart). Tokens are never
 * verified here — the gateway does that — only read.
 *
 * Invariant: an unreadable token is not an error here: it simply has no
 * known expiry (the gateway's close code 4001 then drives the refresh).
 */

function base64UrlDecode(s: string): string {
  let b = s.replace(/-/g, '+').replace(/_/g, '/');
  while (b.length % 4 !== 0) b += '=';
  const binary = atob(b);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/** The claims of a JWT, or undefined when it is not a readable JWT. */
export function readClaims(token: string): Record<string, unknown> | undefined {
  const parts = token.split('.');
  if (parts.length !== 3 || !parts[1]) return undefined;
  try {
    const claims: unknown = JSON.parse(base64UrlDecode(parts[1]));
    return claims && typeof claims === 'object' && !Array.isArray(claims)
      ? (claims as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/** `exp` in milliseconds since the epoch, when the token has one. */
export function tokenExpiryMs(token: string): number | undefined {
  const exp = readClaims(token)?.exp;
  return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : undefined;
}

/** `sub`, when the token has one. */
export function tokenSubject(token: string): string | undefined {
  const sub = readClaims(token)?.sub;
  return typeof sub === 'string' ? sub : undefined;
}

/**
 * When to fetch the next token: `marginMs` before expiry, but never later
 * than half-way through the token's remaining life (short-lived tokens
 * would otherwise be refreshed after they expire).
 */
export function refreshAt(expiryMs: number, obtainedAtMs: number, marginMs: number): number {
  const life = Math.max(0, expiryMs - obtainedAtMs);
  return expiryMs - Math.min(marginMs, life / 2);
}
