import type { SecurityEventRecord, SecurityEventSink, SecurityEvents } from "../audit/security-events.ts";
import { isGateError } from "../errors.ts";
import type { Store } from "../store/contract.ts";
import { createMetricsRegistry, LATENCY_BUCKETS, type MetricsRegistry } from "./metrics-registry.ts";
import type { RequestRecord } from "./request-record.ts";
import type { UpstreamClient } from "./upstream-client.ts";

/**
 * What `/metrics` shows (issue: requests by upstream and status, denials by reason, active sessions
 * and streams, cap occupancy, rate-limited count, upstream and store latency histograms, store
 * errors). Every label value comes from a closed set: configured upstream names, HTTP status codes,
 * event types and reasons from their closed lists, store operation names, error codes.
 *
 * Counts are this replica's own (Prometheus sums replicas); "active sessions" is the sessions this
 * replica created or served within the idle timeout and has not seen end, which is what a replica
 * can know without a store-wide scan.
 */
export interface GatewayMetrics {
  readonly registry: MetricsRegistry;
  /** Feeds the security-event counters and the session gauge. */
  readonly sink: SecurityEventSink;
  /**
   * A request the public listener answered (or that ended without an answer: status 0). Its session,
   * if it used one successfully, counts as active; a successful DELETE ends it.
   */
  requestDone(record: RequestRecord): void;
  /** The same store, every call timed and every failure counted by operation. */
  instrumentStore(store: Store): Store;
  /** The same upstream client, the time to response headers observed. */
  instrumentUpstream(name: string, client: UpstreamClient): UpstreamClient;
}

export interface GatewayMetricsOptions {
  readonly events: () => SecurityEvents | undefined;
  readonly idleTimeoutMs: number;
  readonly openStreams: () => number;
  /** Cap occupancy by pool and level, when caps are in force. */
  readonly capOccupancy?: () => Iterable<readonly [{ pool: string; level: string }, number]>;
  readonly now?: () => number;
}

/** Sessions remembered for the active gauge; beyond this the oldest are forgotten (the gauge undercounts). */
const MAX_TRACKED_SESSIONS = 200_000;

const STORE_OPERATIONS = [
  "get",
  "getMany",
  "put",
  "claim",
  "take",
  "takeIfEquals",
  "replaceIfEquals",
  "delete",
  "increment",
  "indexAdd",
  "indexRemove",
  "indexList",
  "ping",
  "takeTokens",
  "leaseAcquire",
  "leaseRenew",
  "leaseRelease",
  "leaseCount",
] as const;

export function createGatewayMetrics(options: GatewayMetricsOptions): GatewayMetrics {
  const registry = createMetricsRegistry();
  const now = options.now ?? Date.now;
  const startedAt = now();

  const requests = registry.counter(
    "tenantgate_requests_total",
    "Requests answered on the public listener, by upstream and HTTP status (0: the client left first).",
    ["upstream", "status"],
  );
  const requestSeconds = registry.histogram(
    "tenantgate_request_duration_seconds",
    "Time from request to the end of the answer (streams excluded: they end with the session).",
    ["upstream"],
    LATENCY_BUCKETS,
  );
  const upstreamSeconds = registry.histogram(
    "tenantgate_upstream_duration_seconds",
    "Time from sending a request upstream to its response headers.",
    ["upstream"],
    LATENCY_BUCKETS,
  );
  const upstreamErrors = registry.counter(
    "tenantgate_upstream_errors_total",
    "Upstream calls that failed before response headers.",
    ["upstream"],
  );
  const storeSeconds = registry.histogram(
    "tenantgate_store_duration_seconds",
    "Store call latency by operation.",
    ["operation"],
    LATENCY_BUCKETS,
  );
  const storeErrors = registry.counter(
    "tenantgate_store_errors_total",
    "Store calls that failed, by operation and error code.",
    ["operation", "code"],
  );
  // Store calls that began with no other call in flight: on a replica serving one request at a time
  // (the benchmark's store-cost measurement), the round trips each request waited for; calls made
  // together (Promise.all, a concurrent take) count once.
  const storeWaits = registry.counter(
    "tenantgate_store_waits_total",
    "Store calls that began while no other store call was in flight.",
    [],
  );
  let storeCallsInFlight = 0;
  const securityEvents = new Map<string, { type: string; reason: string; count: number }>();
  registry.counterFrom(
    "tenantgate_security_events_total",
    "Security events by type and reason (denials, sessions created and ended, admin actions).",
    () => [...securityEvents.values()].map((e) => [{ type: e.type, reason: e.reason }, e.count] as const),
  );
  registry.counterFrom("tenantgate_denials_total", "Requests denied, by event type and reason.", () =>
    Object.entries(options.events()?.denials() ?? {}).map(([key, count]) => {
      const [type = "", reason = ""] = key.split(":");
      return [{ type, reason }, count] as const;
    }),
  );
  registry.counterFrom(
    "tenantgate_rate_limited_total",
    "Requests refused by the per-principal rate limit.",
    () => [[{}, options.events()?.denials()["request.refused:rate-limited"] ?? 0] as const],
  );
  registry.counterFrom(
    "tenantgate_audit_sink_failures_total",
    "Security events a sink failed to take.",
    () => [[{}, options.events()?.sinkFailures() ?? 0] as const],
  );

  const activeSessions = new Map<string, number>();
  function pruneSessions(at: number): void {
    for (const [tag, seenAt] of activeSessions) {
      if (at - seenAt <= options.idleTimeoutMs) break; // insertion order is last-seen order
      activeSessions.delete(tag);
    }
  }
  registry.gauge(
    "tenantgate_sessions_active",
    "Sessions used on this replica within the idle timeout and not ended by a DELETE here.",
    () => {
      pruneSessions(now());
      return [[{}, activeSessions.size] as const];
    },
  );
  registry.gauge(
    "tenantgate_streams_open",
    "Open response streams (GET streams, streamed POST answers and listen streams).",
    () => [[{}, options.openStreams()] as const],
  );
  if (options.capOccupancy) {
    const occupancy = options.capOccupancy;
    registry.gauge("tenantgate_cap_occupancy", "Connection-cap slots held, by pool and level.", () =>
      [...occupancy()].map(([labels, value]) => [labels, value] as const),
    );
  }
  registry.gauge("tenantgate_process_resident_memory_bytes", "Resident set size.", () => [
    [{}, process.memoryUsage.rss()] as const,
  ]);
  registry.gauge(
    "tenantgate_process_start_time_seconds",
    "When this replica started (epoch seconds).",
    () => [[{}, Math.floor(startedAt / 1000)] as const],
  );

  /** Keyed by the session id's digest (already in the request record: no tag to compute). */
  function sessionSeen(sessionDigest: string): void {
    // Delete then set: the map stays in last-seen order, so pruning stops at the first live one.
    activeSessions.delete(sessionDigest);
    if (activeSessions.size >= MAX_TRACKED_SESSIONS) {
      const oldest = activeSessions.keys().next();
      if (!oldest.done) activeSessions.delete(oldest.value);
    }
    activeSessions.set(sessionDigest, now());
  }

  const sink: SecurityEventSink = {
    write(record: SecurityEventRecord) {
      const reason = record.reason ?? record.by ?? "";
      const key = `${record.type}\u0000${reason}`;
      const entry = securityEvents.get(key);
      if (entry) entry.count += 1;
      else securityEvents.set(key, { type: record.type, reason, count: 1 });
    },
  };

  return {
    registry,
    sink,
    requestDone(record) {
      const name = record.upstream ?? "";
      const status = record.status ?? 0;
      requests.inc({ upstream: name, status: String(status) });
      requestSeconds.observe({ upstream: name }, record.durationMs / 1000);
      if (record.sessionDigest === undefined || status === 0 || status >= 400) return;
      if (record.httpMethod === "DELETE") activeSessions.delete(record.sessionDigest);
      else sessionSeen(record.sessionDigest);
    },
    instrumentStore(store) {
      const timed = new Map<PropertyKey, unknown>();
      for (const operation of STORE_OPERATIONS) {
        const original: unknown = (store as unknown as Record<string, unknown>)[operation];
        if (typeof original !== "function") continue;
        timed.set(operation, async (...args: unknown[]) => {
          const started = performance.now();
          if (storeCallsInFlight++ === 0) storeWaits.inc({});
          try {
            return await (original as (...a: unknown[]) => Promise<unknown>).apply(store, args);
          } catch (error) {
            storeErrors.inc({ operation, code: isGateError(error) ? error.code : "ERR_INTERNAL" });
            throw error;
          } finally {
            storeCallsInFlight--;
            storeSeconds.observe({ operation }, (performance.now() - started) / 1000);
          }
        });
      }
      // A proxy, so every other member (backend, close, methods added later) is the store's own.
      return new Proxy(store, {
        get(target, property) {
          const wrapped = timed.get(property);
          if (wrapped !== undefined) return wrapped;
          const value: unknown = Reflect.get(target, property, target);
          return typeof value === "function" ? value.bind(target) : value;
        },
      });
    },
    instrumentUpstream(name, client) {
      return {
        url: client.url,
        close: () => client.close(),
        // Revocations must reach an in-process upstream through the wrapper too.
        ...(client.bindSession ? { bindSession: client.bindSession.bind(client) } : {}),
        ...(client.applyRevocation ? { applyRevocation: client.applyRevocation.bind(client) } : {}),
        ...(client.credentialsChanged ? { credentialsChanged: client.credentialsChanged.bind(client) } : {}),
        async request(request) {
          const started = performance.now();
          try {
            const answer = await client.request(request);
            upstreamSeconds.observe({ upstream: name }, (performance.now() - started) / 1000);
            return answer;
          } catch (error) {
            upstreamErrors.inc({ upstream: name });
            throw error;
          }
        },
      };
    },
  };
}
