/**
 * Gateway addresses. Applications give a base URL per gateway (or load
 * balancer) — `https://push.example.com`, `ws://127.0.0.1:8080`, or with a
 * path prefix behind a proxy — and the SDK derives the WebSocket and
 * long-poll endpoints from it.
 */

export interface Endpoints {
  ws: string;
  http: string;
}

export function endpoints(base: string): Endpoints {
  let b = base.trim().replace(/\/+$/, '');
  b = b.replace(/\/v1\/(ws|poll)$/, '');
  let http: string;
  if (/^wss:\/\//i.test(b)) http = 'https://' + b.slice(6);
  else if (/^ws:\/\//i.test(b)) http = 'http://' + b.slice(5);
  else if (/^https?:\/\//i.test(b)) http = b;
  else throw new TypeError(`gateway URL must start with http(s):// or ws(s)://, got ${JSON.stringify(base)}`);
  const ws = http.replace(/^http/i, 'ws');
  return { ws: `${ws}/v1/ws`, http };
}

export function withQuery(url: string, params: Record<string, string | undefined>): string {
  const q = Object.entries(params)
    .filter((e): e is [string, string] => e[1] !== undefined)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&');
  if (!q) return url;
  return url + (url.includes('?') ? '&' : '?') + q;
}
