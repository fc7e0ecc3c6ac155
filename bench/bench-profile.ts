/**
 * The settings `npm run bench` applies over tenantgate's defaults, in one place: the benchmark
 * (bench/gateway-overhead.ts) starts every gateway with them, and `npm run threats:bench` runs the
 * THREATS tests with them (tests/support/test-profile.ts), so the configuration that is measured is
 * the configuration whose isolation is proven.
 *
 * Everything else in the benchmarked config (listen address, store, master key, issuer, upstream) is
 * what any gateway needs and every test sets for itself.
 */
import { join } from "node:path";

/**
 * Production limits raised so that the benchmark's one principal, on one IP, sending as fast as the
 * generator can, is never refused: a refusal would measure the refusal path, not the gateway. The
 * caps and the token bucket are still on, so their checks (and the store operation the bucket costs)
 * run on every request. Body, header and batch limits and the stream caps stay at their defaults.
 */
export const BENCH_LIMITS = Object.freeze({
  inflight: Object.freeze({ global: 100_000, perIp: 100_000, perPrincipal: 100_000, perSession: 100_000 }),
  rate: Object.freeze({ perSecond: 1_000_000, burst: 1_000_000_000 }),
});

/** The access log at `info` (the default level, stated): one line per request, as operators run it. */
export const BENCH_LOG_LEVEL = "info";

/**
 * The top-level config sections the benchmark sets besides the ones every gateway needs: the raised
 * limits, security events on stdout, the access log at `info` to `<dir>/<name>.log` (a file, as in
 * production, not a terminal), and the admin API on loopback with a port the system picks (so
 * gateways started side by side do not collide on the default 8788).
 */
export function benchSettings(dir: string, name = "gateway") {
  return {
    limits: BENCH_LIMITS,
    audit: { stdout: true },
    log: { level: BENCH_LOG_LEVEL, file: join(dir, `${name}.log`) },
    admin: { listen: { host: "127.0.0.1", port: 0 } },
  };
}
