/**
 * Preloaded (`node --import`) into third-party test servers that call `listen(port)` with no host,
 * which binds every interface: a listen given only a port gets 127.0.0.1 as its host, so the server
 * is reachable from this machine only.
 */
import { Server } from "node:net";

const listen = Server.prototype.listen;

Server.prototype.listen = function listenOnLoopback(this: Server, ...args: unknown[]) {
  const [port, host] = args;
  const portOnly = typeof port === "number" || (typeof port === "string" && /^\d+$/.test(port));
  if (portOnly && typeof host !== "string") args.splice(1, 0, "127.0.0.1");
  return (listen as (...rest: unknown[]) => Server).apply(this, args);
} as typeof listen;
