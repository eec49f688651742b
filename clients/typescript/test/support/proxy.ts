/**
 * An HTTP proxy in front of a gateway that can refuse WebSocket upgrades,
 * like the corporate proxies the long-poll fallback exists for. Plain HTTP
 * (long-polls) always passes.
 */

import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';

export class UpgradeBlockingProxy {
  blockUpgrades = false;
  private readonly server: Server;
  private readonly tunnels = new Set<Socket>();
  upgradesRefused = 0;

  constructor(private readonly target: URL) {
    this.server = createServer((req, res) => {
      const up = request(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        },
      );
      up.on('error', () => {
        if (!res.headersSent) res.writeHead(502);
        res.end();
      });
      req.pipe(up);
    });
    this.server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      if (this.blockUpgrades) {
        this.upgradesRefused++;
        socket.end('HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n');
        return;
      }
      const up = connect(Number(target.port), target.hostname, () => {
        const lines = [`${req.method} ${req.url} HTTP/1.1`];
        for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
        up.write(lines.join('\r\n') + '\r\n\r\n');
        if (head.length) up.write(head);
        socket.pipe(up).pipe(socket);
      });
      const drop = () => {
        socket.destroy();
        up.destroy();
        this.tunnels.delete(socket);
      };
      up.on('error', drop);
      socket.on('error', drop);
      up.on('close', drop);
      socket.on('close', drop);
      this.tunnels.add(socket);
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Cuts the WebSockets that are open through the proxy. */
  cutTunnels(): void {
    for (const s of this.tunnels) s.destroy();
    this.tunnels.clear();
  }

  async close(): Promise<void> {
    this.cutTunnels();
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}
