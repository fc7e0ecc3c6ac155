import { isIPv4 } from "node:net";

/**
 * Whether `host` (a name or address without a port) is a loopback host, read strictly.
 *
 * Accepted: `localhost` (any letter case), `::1` (also as `[::1]`), and dotted-decimal IPv4 in
 * 127.0.0.0/8 with four decimal parts and no leading zeros. Everything else is "not loopback",
 * including forms some resolvers read as loopback: `127.1`, `0x7f.0.0.1`, `0177.0.0.1`,
 * `::ffff:127.0.0.1`, `0:0:0:0:0:0:0:1`, `localhost.`, `a.localhost`, `127.0.0.1.nip.io`.
 *
 * Why strict: this answer relaxes a guard (loopback skips the exposure refusal and allows http
 * issuers), so a wrong "yes" exposes the gateway while a wrong "no" only asks the operator to write
 * the host in its plain form. Whether `getaddrinfo`, a URL parser or a proxy agrees on an odd form
 * varies; the accepted forms mean loopback to all of them.
 */
export function isLoopbackHost(host: string): boolean {
  if (typeof host !== "string") return false;
  if (host.toLowerCase() === "localhost") return true;
  if (host === "::1" || host === "[::1]") return true;
  // node:net's isIPv4 takes exactly four decimal parts of 0-255 without leading zeros.
  return isIPv4(host) && host.startsWith("127.");
}
