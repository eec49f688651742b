#!/usr/bin/env node
// The live demo's dev-only server: serves the demo page and the built SDK,
// and a token endpoint for a few demo users. Tokens are minted by the
// developers' token tool (`switchyard-demo token`), so the HS256 secret
// stays in this process's environment and never reaches the page.
// Not for production: anyone who can reach it gets tokens.
//
//   DEMO_GATEWAYS   gateway base URLs, comma-separated (default :8080,:8081)
//   DEMO_TOKEN_BIN  path of the switchyard-demo binary
//   SWITCHYARD_JWT_HS256_SECRET  the gateways' secret (for the token tool)
//   DEMO_PORT       listen port (default 8090; 0 picks a free one)
//   DEMO_TOKEN_TTL  token lifetime in seconds (default 300)

import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const sdkDist = resolve(here, '../dist');
const gateways = (process.env.DEMO_GATEWAYS ?? 'http://127.0.0.1:8080,http://127.0.0.1:8081')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const tokenBin = process.env.DEMO_TOKEN_BIN ?? resolve(here, '../../../target/debug/switchyard-demo');
const ttl = Number(process.env.DEMO_TOKEN_TTL ?? 300);
const port = Number(process.env.DEMO_PORT ?? 8090);

// Demo users with different products (topology: News-[ScopeValue]).
const users = [
  { id: 'alice', name: 'Alice', products: ['CHLT', 'Sfc'] },
  { id: 'bob', name: 'Bob', products: ['Sfc'] },
  { id: 'carol', name: 'Carol', products: ['FullAccess'] },
];

const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json',
  '.json': 'application/json',
};

function mint(user) {
  return new Promise((ok, fail) => {
    execFile(
      tokenBin,
      ['token', '--sub', user.id, '--products', user.products.join(','), '--ttl', String(ttl)],
      { timeout: 5000 },
      (err, stdout, stderr) => (err ? fail(new Error(stderr || err.message)) : ok(stdout.trim())),
    );
  });
}

async function file(res, path) {
  try {
    const body = await readFile(path);
    res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    res.end(body);
  } catch {
    res.writeHead(404).end('not found');
  }
}

function json(res, status, v) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(v));
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url ?? '/', 'http://demo');
  const p = url.pathname;
  if (p === '/' || p === '/index.html') return file(res, join(here, 'index.html'));
  if (p === '/app.js' || p === '/style.css') return file(res, join(here, p));
  if (p.startsWith('/sdk/')) {
    const rel = normalize(p.slice('/sdk/'.length));
    if (rel.startsWith('..')) return json(res, 400, { error: 'bad path' });
    return file(res, join(sdkDist, rel));
  }
  if (p === '/config.json') return json(res, 200, { gateways, users, ttl });
  if (p === '/token') {
    const user = users.find((u) => u.id === url.searchParams.get('user'));
    if (!user) return json(res, 404, { error: 'unknown demo user' });
    try {
      return json(res, 200, { token: await mint(user) });
    } catch (e) {
      console.error(`token tool failed: ${e.message}`);
      return json(res, 500, { error: 'token tool failed; see the demo server log' });
    }
  }
  res.writeHead(404).end('not found');
});

server.listen(port, '127.0.0.1', () => {
  console.log(`demo: http://127.0.0.1:${server.address().port}/`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
