/**
 * Runs the demo's dev server against a test stack, and headless Chromium
 * (Debian's, driven by playwright-core: no browser download).
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium, type Browser } from 'playwright-core';
import { packageRoot, rustBinary, type Stack } from './stack.js';

export class DemoServer {
  private constructor(
    private readonly child: ChildProcess,
    readonly url: string,
  ) {}

  static async start(stack: Stack): Promise<DemoServer> {
    const child = spawn(process.execPath, [join(packageRoot, 'demo/server.mjs')], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: {
        ...process.env,
        DEMO_PORT: '0',
        DEMO_GATEWAYS: stack.gateways.map((g) => g.url).join(','),
        DEMO_TOKEN_BIN: rustBinary('switchyard-demo'),
        SWITCHYARD_JWT_HS256_SECRET: stack.secret,
        DEMO_TOKEN_TTL: '120',
      },
    });
    const url = await new Promise<string>((resolve, reject) => {
      const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
      lines.on('line', (l) => {
        const m = /^demo: (\S+)/.exec(l);
        if (m) resolve(m[1] as string);
      });
      child.on('exit', (c) => reject(new Error(`demo server exited (${c})`)));
    });
    return new DemoServer(child, url);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    await exited;
  }
}

export function chromiumPath(): string {
  const p = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
  if (!existsSync(p)) throw new Error(`${p} is missing: apt-get install -y chromium (clients/typescript/test.sh does)`);
  return p;
}

/** Playwright gives every launch a fresh temporary profile (its own --user-data-dir). */
export async function launchChromium(): Promise<{ browser: Browser; cleanup: () => Promise<void> }> {
  const browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return { browser, cleanup: () => browser.close() };
}
