import { createServer, type Server, Socket } from "node:net";

/**
 * A TCP proxy on loopback that can misbehave on demand, to put a store connection through an outage
 * without touching the machine's shared Redis or PostgreSQL.
 *
 * Modes:
 * - `pass`:   forwards both ways.
 * - `refuse`: the listener closes (connects get ECONNREFUSED); existing connections are reset.
 * - `hang`:   accepts and holds connections, forwards nothing either way (existing ones stall too).
 * - `reset`:  resets every existing and new connection (TCP RST).
 *
 * Switching back to `pass` re-listens on the same port, so clients reconnect to the same address.
 */

export type FaultMode = "pass" | "refuse" | "hang" | "reset";

interface Pair {
  client: Socket;
  upstream: Socket | null;
}

export class FaultProxy {
  readonly #targetHost: string;
  readonly #targetPort: number;
  readonly #pairs = new Set<Pair>();
  #server: Server | null = null;
  #mode: FaultMode = "pass";
  #port = 0;

  private constructor(targetHost: string, targetPort: number) {
    this.#targetHost = targetHost;
    this.#targetPort = targetPort;
  }

  static async start(targetHost: string, targetPort: number): Promise<FaultProxy> {
    const proxy = new FaultProxy(targetHost, targetPort);
    await proxy.#listen(0);
    return proxy;
  }

  get port(): number {
    return this.#port;
  }

  get mode(): FaultMode {
    return this.#mode;
  }

  async setMode(mode: FaultMode): Promise<void> {
    const previous = this.#mode;
    this.#mode = mode;
    if (mode === "refuse" || mode === "reset") {
      for (const pair of this.#pairs) this.#destroy(pair, true);
    }
    if (mode === "hang") {
      for (const pair of this.#pairs) {
        // Unpipe first: a pipe would resume a paused source on the next drain.
        pair.client.unpipe();
        pair.upstream?.unpipe();
        pair.client.pause();
        pair.upstream?.pause();
      }
    }
    if (mode === "refuse" && this.#server) await this.#closeListener();
    if (mode !== "refuse" && !this.#server) await this.#listen(this.#port);
    if (mode === "pass" && previous === "hang") {
      // Connections that were held are beyond repair for a protocol client: reset them so the
      // client reconnects instead of waiting on a half-delivered exchange.
      for (const pair of this.#pairs) this.#destroy(pair, true);
    }
  }

  async close(): Promise<void> {
    for (const pair of this.#pairs) this.#destroy(pair, true);
    if (this.#server) await this.#closeListener();
  }

  async #listen(port: number): Promise<void> {
    const server = createServer((client) => this.#accept(client));
    await new Promise<void>((resolveListen, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => {
        server.off("error", reject);
        resolveListen();
      });
    });
    const address = server.address();
    if (address && typeof address === "object") this.#port = address.port;
    this.#server = server;
  }

  async #closeListener(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    if (server) await new Promise<void>((done) => server.close(() => done()));
  }

  #accept(client: Socket): void {
    const pair: Pair = { client, upstream: null };
    this.#pairs.add(pair);
    client.on("error", () => this.#destroy(pair, false));
    client.on("close", () => this.#destroy(pair, false));
    if (this.#mode === "reset" || this.#mode === "refuse") {
      this.#destroy(pair, true);
      return;
    }
    if (this.#mode === "hang") {
      client.pause();
      return;
    }
    const upstream = new Socket();
    pair.upstream = upstream;
    upstream.on("error", () => this.#destroy(pair, true));
    upstream.on("close", () => this.#destroy(pair, false));
    upstream.connect(this.#targetPort, this.#targetHost, () => {
      if (this.#mode !== "pass") return;
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  #destroy(pair: Pair, reset: boolean): void {
    if (!this.#pairs.delete(pair)) return;
    for (const socket of [pair.client, pair.upstream]) {
      if (!socket || socket.destroyed) continue;
      // A socket whose write side has already ended (a graceful QUIT went through the pipe) cannot be
      // reset: Node raises an error and leaks the handle, which keeps the test process alive.
      if (reset && !socket.writableEnded) socket.resetAndDestroy();
      else socket.destroy();
    }
  }
}
