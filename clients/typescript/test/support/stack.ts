/**
 * A real Switchyard stack for the end-to-end and browser tests: runs the
 * testkit's `switchyard-stack` binary (tansu, a fresh database, a unique
 * Redis prefix, the bridge and the gateways) and drives it over stdin.
 * The stack dies with this process (its stdin closes), so a crashed test
 * run leaves nothing behind.
 */

import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** clients/typescript, from build-test/test/support. */
export const packageRoot = resolve(here, '../../..');
export const repoRoot = resolve(packageRoot, '../..');

export function targetDir(): string {
  const t = process.env.CARGO_TARGET_DIR;
  return t ? resolve(repoRoot, t) : join(repoRoot, 'target');
}

export function rustBinary(name: string): string {
  const p = join(targetDir(), 'debug', name);
  if (!existsSync(p)) {
    throw new Error(`${p} is missing: run \`cargo build -p switchyard-bridge -p switchyard-gateway -p switchyard-testkit --bins\` (clients/typescript/test.sh does)`);
  }
  return p;
}

export interface GatewayInfo {
  index: number;
  url: string;
  ws: string;
  admin: string;
}

interface Reply {
  ok: boolean;
  error?: string;
  [k: string]: unknown;
}

export class Stack {
  gateways: GatewayInfo[] = [];
  secret = '';
  private readonly replies: ((r: Reply) => void)[] = [];
  private chain: Promise<unknown> = Promise.resolve();
  private readonly log: string[] = [];

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {}

  static async start(opts: { gateways?: number; env?: Record<string, string> } = {}): Promise<Stack> {
    const args = ['--gateways', String(opts.gateways ?? 2)];
    for (const [k, v] of Object.entries(opts.env ?? {})) args.push('--env', `${k}=${v}`);
    const child = spawn(rustBinary('switchyard-stack'), args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn', RUST_BACKTRACE: '0' },
    });
    const stack = new Stack(child);
    child.stderr.on('data', (d: Buffer) => {
      stack.log.push(d.toString());
      if (stack.log.length > 200) stack.log.shift();
    });
    const lines = createInterface({ input: child.stdout });
    const ready = new Promise<Record<string, unknown>>((resolveReady, reject) => {
      let first = true;
      lines.on('line', (line) => {
        let v: Record<string, unknown>;
        try {
          v = JSON.parse(line) as Record<string, unknown>;
        } catch {
          return;
        }
        if (first) {
          first = false;
          resolveReady(v);
          return;
        }
        stack.replies.shift()?.(v as Reply);
      });
      child.on('exit', (code) => reject(new Error(`switchyard-stack exited (${code}) before it was ready:\n${stack.log.join('')}`)));
      setTimeout(() => reject(new Error(`switchyard-stack not ready after 120 s:\n${stack.log.join('')}`)), 120_000).unref();
    });
    const info = await ready;
    stack.gateways = info.gateways as GatewayInfo[];
    stack.secret = info.secret as string;
    return stack;
  }

  /** Runs one command; commands are answered in order. */
  command(cmd: Record<string, unknown>): Promise<Reply> {
    const run = () =>
      new Promise<Reply>((resolveReply, reject) => {
        this.replies.push((r) => (r.ok ? resolveReply(r) : reject(new Error(`${cmd.cmd}: ${r.error}`))));
        this.child.stdin.write(JSON.stringify(cmd) + '\n');
      });
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  produce(events: unknown[]): Promise<Reply> {
    return this.command({ cmd: 'produce', events });
  }

  async term(gateway: number): Promise<void> {
    await this.command({ cmd: 'term', gateway });
  }

  async waitExit(gateway: number): Promise<void> {
    await this.command({ cmd: 'wait_exit', gateway });
  }

  async startGateway(): Promise<GatewayInfo> {
    const r = await this.command({ cmd: 'start_gateway' });
    const g = r.gateway as GatewayInfo;
    this.gateways[g.index] = g;
    return g;
  }

  /** Mints an HS256 token the stack's gateways accept. */
  token(claims: Record<string, unknown>, ttlSeconds: number): string {
    return mintHs256({ ...claims, exp: Math.floor(Date.now() / 1000) + ttlSeconds }, this.secret);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.stdin.end();
    await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }

  recentLog(): string {
    return this.log.join('');
  }
}

export function mintHs256(claims: Record<string, unknown>, secret: string): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/** A News event in the Kafka JSON envelope, scoped to products. */
export function news(id: string, products: string[], n: number): Record<string, unknown> {
  return {
    id,
    topic: 'News',
    scopes: [{ type: 'Product Codes', values: products }],
    payload: { n, headline: `news ${n}` },
    created_at_ms: Date.now(),
  };
}

/**
 * The same cursor as if it came from another log (a database restored from
 * a backup): the epoch — field 1 of the cursor's protobuf — is replaced.
 */
export function foreignCursor(cursor: string): string {
  const bytes = Buffer.from(cursor, 'base64url');
  if (bytes[0] !== 0x0a || (bytes[1] ?? 128) >= 128) throw new Error('unexpected cursor layout');
  const len = bytes[1] as number;
  for (let i = 2; i < 2 + len; i++) bytes[i] = bytes[i] === 0x66 ? 0x65 : 0x66;
  return bytes.toString('base64url');
}

export async function waitFor(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
