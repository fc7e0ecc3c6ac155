import { createHash, randomBytes } from "node:crypto";
import { createServer, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { hostname } from "node:os";
import { createChainedFileSink } from "../audit/audit-chain.ts";
import {
  createSecurityEvents,
  jsonLinesSink,
  type SecurityEventSink,
  type SecurityEvents,
  sessionDeniedEvent,
} from "../audit/security-events.ts";
import type { ConnectionCapsConfig, GatewayConfig } from "../config/gateway-config.ts";
import { type AssertionSigner, createAssertionSigner } from "../crypto/assertion-signer.ts";
import { createIdentifierTagger } from "../crypto/identifier-tag.ts";
import { loadKeyring, loadMasterKey } from "../crypto/keyring.ts";
import { GateError, isGateError, toWire } from "../errors.ts";
import { createApiKeyAuthenticator } from "../identity/api-key-authenticator.ts";
import { createAuthenticator } from "../identity/authenticate.ts";
import { createFailedAuthLimiter } from "../identity/failed-auth-limiter.ts";
import { createJwtAuthenticator } from "../identity/jwt-authenticator.ts";
import { type CapLedger, createLocalLedger } from "../limits/cap-ledger.ts";
import { createClusterLedger } from "../limits/cluster-cap-ledger.ts";
import {
  type ConnectionCapLimits,
  type ConnectionCaps,
  createConnectionCaps,
} from "../limits/connection-caps.ts";
import { createRateLimiter } from "../limits/rate-limiter.ts";
import { accessLogWriter } from "../log/access-log.ts";
import { createGatewayLogger } from "../log/logger.ts";
import { createClientFingerprinter } from "../sessions/client-binding.ts";
import { openRevocationBus } from "../sessions/open-revocation-bus.ts";
import { createRevocation, type Revocation } from "../sessions/revocation.ts";
import { createSessionRegistry, type SessionRegistry } from "../sessions/session-registry.ts";
import type { Store } from "../store/contract.ts";
import { leaseKey } from "../store/keys.ts";
import { openStore } from "../store/open-store.ts";
import { createTaskRegistry } from "../tasks/task-registry.ts";
import { createStdioUpstreamClient } from "../upstreams/stdio-upstream.ts";
import { createVault, observeVaultChanges } from "../vault/vault.ts";
import { type AdminActions, createAdminHandler } from "./admin-server.ts";
import { createAdmission } from "./admission.ts";
import { createClientAddressResolver } from "./client-address.ts";
import { checkExposure } from "./exposure-guard.ts";
import { createGatewayMetrics, type GatewayMetrics } from "./gateway-metrics.ts";
import { assertionAudience, createGatewayHandler } from "./gateway-server.ts";
import { GATEWAY_PROTOCOL_VERSIONS, type SupportedVersions } from "./protocol-era.ts";
import { createUpstreamClient, type UpstreamClient } from "./upstream-client.ts";
import { discoverUpstreamVersions } from "./upstream-discovery.ts";

export interface StartGatewayOptions {
  /** Where security events go as JSON lines when `audit.stdout` is on. Default: process.stdout. */
  readonly eventsOut?: NodeJS.WritableStream;
  /**
   * Where the gateway's log lines go, one JSON line per call (access lines and operator messages),
   * instead of `log.file` or stderr. Tests pass a sink (or `() => undefined` to silence them).
   */
  readonly log?: (line: string) => void;
  /** Extra sinks (tests collect events through one). */
  readonly sinks?: readonly SecurityEventSink[];
  /** An already-open store to use instead of opening `config.store` (it is not closed by `close`). */
  readonly store?: Store;
  /** The environment `env:` key references are read from. Default: process.env. */
  readonly env?: NodeJS.ProcessEnv;
}

export interface RunningGateway {
  /** The configuration in force (port 0 replaced by the bound port). */
  readonly config: GatewayConfig;
  /** `http://host:port` of the bound socket (not publicUrl). */
  readonly url: string;
  readonly address: AddressInfo;
  readonly events: SecurityEvents;
  readonly sessions: SessionRegistry;
  /** `http://host:port` of the admin listener, when `admin.enabled`. */
  readonly adminUrl: string | undefined;
  readonly metrics: GatewayMetrics;
  /**
   * Warnings an operator must see at start (the unauthenticated-exposure warning). They are in the
   * log too; `tenantgate serve` also prints them as plain lines, wherever the log goes.
   */
  readonly warnings: readonly string[];
  /**
   * Operator revocation, for the admin API: one session, everything a principal owns, or everything
   * (the kill switch). Each holds on every replica sharing the store, and ends the open streams it
   * names on every replica (the revocation bus).
   */
  readonly revocation: Revocation;
  /**
   * Graceful stop: refuse new requests (503), let in-flight POSTs finish for up to `graceMs`, end
   * open streams cleanly, then close every connection and the store. Resolves once all of it is done.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

const DEFAULT_GRACE_MS = 10_000;

/**
 * Builds and starts the gateway a configuration describes. Every failure at start (a key that does
 * not load, a store that does not answer, an unsafe exposure) rejects with a GateError naming the
 * setting, after releasing whatever was opened.
 */
export async function startGateway(
  configured: GatewayConfig,
  options: StartGatewayOptions = {},
): Promise<RunningGateway> {
  const cleanup: Array<() => Promise<void>> = [];
  let config = configured;
  try {
    for (const [index, upstream] of config.upstreams.entries()) {
      const declared = upstream.protocolVersions;
      const servable = [...GATEWAY_PROTOCOL_VERSIONS.legacy, ...GATEWAY_PROTOCOL_VERSIONS.modern];
      if (declared !== undefined && !servable.some((v) => declared.includes(v))) {
        // An upstream must speak a version the gateway can police to be reachable at all.
        throw new GateError(
          "ERR_CONFIG_INVALID",
          `upstreams[${index}].protocolVersions lists no version this gateway serves (${servable.join(", ")})`,
        );
      }
    }

    const keyring = await loadKeyring(config.secrets, {
      baseDir: config.configDir,
      ...(options.env ? { env: options.env } : {}),
    });
    const tagKey =
      config.secrets.tagKey === undefined
        ? keyring.purposeKey("log-tag")
        : await loadMasterKey(config.secrets.tagKey, {
            baseDir: config.configDir,
            ...(options.env ? { env: options.env } : {}),
          });
    const tagger = createIdentifierTagger(tagKey);

    const logger = await createGatewayLogger({
      level: config.log.level,
      ...(options.log !== undefined
        ? { lines: options.log }
        : config.log.file !== undefined
          ? { file: config.log.file }
          : {}),
    });
    // Pushed first, so closed last: every other step's last words are in the log.
    cleanup.push(() => logger.close());
    const log = (level: "info" | "warn" | "error", line: string) => logger.operator(level, line);

    let handler: ReturnType<typeof createGatewayHandler> | undefined;
    let events: SecurityEvents | undefined;
    let caps: ConnectionCaps | undefined;
    const metrics = createGatewayMetrics({
      events: () => events,
      idleTimeoutMs: config.sessions.idleTimeoutMs,
      openStreams: () => handler?.openStreamCount ?? 0,
      capOccupancy: () =>
        (caps?.occupancy() ?? []).map(
          (entry) => [{ pool: entry.pool, level: entry.level }, entry.held] as const,
        ),
    });
    const sinks: SecurityEventSink[] = [metrics.sink, ...(options.sinks ?? [])];
    if (config.audit.stdout) sinks.push(jsonLinesSink(options.eventsOut ?? process.stdout));
    if (config.audit.file !== undefined) {
      // The keyed, checkpointed chain (src/audit/audit-chain.ts); a file that does not continue
      // cleanly (tampered, truncated) refuses the start rather than being chained over.
      const file = await createChainedFileSink({
        path: config.audit.file,
        keyring,
        maxFileBytes: config.audit.maxFileBytes,
        onError: (error) =>
          log(
            "error",
            `audit.file: cannot write (${(error as NodeJS.ErrnoException).code ?? "error"}); retrying`,
          ),
      }).catch((error: unknown) => {
        throw isGateError(error)
          ? new GateError(error.code, `audit.file: ${error.message}`, { cause: error })
          : error;
      });
      // Closed after everything but the log: the shutdown's own events are in the trail before its
      // audit.stop.
      cleanup.push(() =>
        file.close().catch((error: unknown) => {
          log("error", `audit.file: not closed cleanly (${isGateError(error) ? error.message : "error"})`);
        }),
      );
      sinks.push(file);
    }
    events = createSecurityEvents({ tagger, sinks });
    const securityEvents = events;
    const configDigest = digestOfConfig(config);
    securityEvents.emit({ type: "gateway.started", configDigest });

    const openedStore = options.store ?? (await openStore(config.store));
    if (!options.store) cleanup.push(() => openedStore.close());
    const store = metrics.instrumentStore(openedStore);
    // Read from the same URL as the store, so it reaches the same replicas; closed before the store.
    const bus = await openRevocationBus(config.store, { store: openedStore });
    cleanup.push(() => bus.close());

    const jwt =
      config.auth.issuers.length > 0
        ? createJwtAuthenticator({
            issuers: config.auth.issuers.map((issuer) => ({
              issuer: issuer.issuer,
              algorithms: issuer.algorithms,
              clockSkewMs: issuer.clockSkewMs,
              ...(issuer.jwksUrl !== undefined ? { jwksUrl: issuer.jwksUrl } : {}),
              ...(issuer.jwksFile !== undefined ? { jwksFile: issuer.jwksFile } : {}),
              ...(issuer.tenantClaim !== undefined ? { tenantClaim: issuer.tenantClaim } : {}),
            })),
          })
        : undefined;
    const apiKeys =
      config.auth.apiKeys.length > 0 ? createApiKeyAuthenticator(config.auth.apiKeys) : undefined;
    const authenticator = createAuthenticator({
      ...(jwt ? { jwt } : {}),
      ...(apiKeys ? { apiKeys } : {}),
      anonymous: config.auth.anonymous,
      failedAuthLimiter: createFailedAuthLimiter(),
    });

    const sessions = createSessionRegistry({
      store,
      keyring,
      absoluteTimeoutMs: config.sessions.absoluteTimeoutMs,
      idleTimeoutMs: config.sessions.idleTimeoutMs,
      maxPerPrincipal: config.sessions.maxPerPrincipal,
      onLimit: config.sessions.onLimit,
      ...(config.sessions.maxPerTenant === undefined ? {} : { maxPerTenant: config.sessions.maxPerTenant }),
      onDenied: (denial) => securityEvents.emit(sessionDeniedEvent(denial)),
    });

    const upstreamClients = new Map<string, UpstreamClient>();
    // Every write through this gateway (enrollment, admin API) reaches the stdio processes holding
    // the old value, on this replica: they end rather than keep acting with it.
    const vault = observeVaultChanges(createVault({ store, keyring }), (owner, entry) => {
      for (const client of upstreamClients.values()) client.credentialsChanged?.(owner, entry);
    });
    for (const upstream of config.upstreams) {
      if (upstream.transport === "stdio") {
        upstreamClients.set(
          upstream.name,
          metrics.instrumentUpstream(
            upstream.name,
            createStdioUpstreamClient(upstream, {
              vault,
              ...upstream.stdio,
              // A process lives as long as its session may: the gateway's idle timeout, not a shorter
              // one of the bridge's (which would end sessions as "upstream gone").
              idleTimeoutMs: config.sessions.idleTimeoutMs,
              onStderr: (line, context) =>
                log("info", `upstreams ${context.upstream} process ${context.processRef}: ${line}`),
            }),
          ),
        );
      } else
        upstreamClients.set(
          upstream.name,
          metrics.instrumentUpstream(
            upstream.name,
            createUpstreamClient(upstream.url, {
              // Every open stream holds an upstream connection: the connection caps, not the pool,
              // bound how many there are (a smaller pool would stall streams past its size).
              connections: config.limits.streams.global + config.limits.inflight.global,
            }),
          ),
        );
    }
    cleanup.push(async () => {
      await Promise.all([...upstreamClients.values()].map((client) => client.close()));
    });

    const server = createServer(
      {
        maxHeaderSize: config.limits.maxHeaderBytes,
        // Slow senders of headers or bodies are cut off; responses (streams) are not bounded here.
        headersTimeout: 30_000,
        requestTimeout: 120_000,
        keepAliveTimeout: 5_000,
      },
      (request, response) => {
        trackResponse(request.socket, response);
        // Between the bind and the exposure check nothing is served.
        if (handler) handler.handle(request, response);
        else response.writeHead(503, { connection: "close" }).end();
      },
    );
    // Before the handler exists there is no open stream for a notice to end.
    bus.subscribe((signal) => handler?.applyRevocation(signal));
    // Responses still being written, per connection: a parse error on a pipelined request must not
    // write its answer into the middle of one (Node's own clientError handler has the same guard).
    const openResponses = new WeakMap<Socket, number>();
    const trackResponse = (socket: Socket, response: ServerResponse): void => {
      openResponses.set(socket, (openResponses.get(socket) ?? 0) + 1);
      let open = true;
      const done = () => {
        if (!open) return;
        open = false;
        openResponses.set(socket, (openResponses.get(socket) ?? 1) - 1);
      };
      response.once("finish", done);
      response.once("close", done);
    };
    server.on("clientError", (error: NodeJS.ErrnoException, socket: Socket) => {
      answerClientError(error, socket, securityEvents, (openResponses.get(socket) ?? 0) > 0);
    });
    await listen(server, config.listen.host, config.listen.port);
    cleanup.push(() => closeServer(server));

    const address = server.address() as AddressInfo;
    // On the address actually bound, before the first request is accepted (THREATS L3).
    const verdict = checkExposure({
      boundAddress: address.address,
      auth: {
        anonymous: config.auth.anonymous,
        hasIssuers: config.auth.issuers.length > 0,
        hasApiKeys: config.auth.apiKeys.length > 0,
      },
      allowUnauthenticatedExposure: config.listen.allowUnauthenticatedExposure,
    });
    const warnings = verdict.warning === null ? [] : [verdict.warning];
    for (const warning of warnings) log("warn", warning);
    config = withBoundPort(config, address.port);
    const signer = createAssertionSigner({ keyring, issuer: config.publicUrl });
    const upstreamVersions = await discoverUndeclared(config, upstreamClients, signer, log);
    const tasks = createTaskRegistry({ store });
    const writeAccessLine = accessLogWriter(logger, tagger);
    const ledger = createCapLedger(config, store, log);
    cleanup.push(() => ledger.close());
    caps = createConnectionCaps({ ledger, limits: capLimits(config) });
    const rate = config.limits.rate;
    const rateLimiter = rate.enabled
      ? createRateLimiter({
          store,
          capacity: rate.burst,
          refillPerSecond: rate.perSecond,
          fallbackFactor: rate.fallbackFactor,
          onFallback: () =>
            log(
              "warn",
              "limits.rate: the store does not answer; each replica limits alone at the reduced rate",
            ),
        })
      : undefined;
    handler = createGatewayHandler({
      admission: createAdmission({ caps, rateLimiter }),
      clientBinding: {
        policy: config.sessions.clientBinding,
        fingerprinter: createClientFingerprinter(keyring),
      },
      config,
      keyring,
      authenticator,
      signer,
      sessions,
      tasks,
      store,
      events: securityEvents,
      upstreamClients,
      upstreamVersions,
      vault,
      publishRevocation: (notice) => bus.publish(notice),
      clientAddressOf: createClientAddressResolver(config.listen.trustedProxies),
      onRequestDone: (record) => {
        writeAccessLine(record);
        metrics.requestDone(record);
      },
    });

    const host = address.family === "IPv6" ? `[${address.address}]` : address.address;
    let closing: Promise<void> | undefined;
    const running = handler;
    const revocation = createRevocation({
      sessions,
      tasks,
      bus,
      events,
      applyLocally: (signal) => running.applyRevocation(signal),
    });

    const actions: AdminActions = {
      describeSessions: (principal) => sessions.describe(principal),
      revokeSession: (sessionDigest) => revocation.revokeSession(sessionDigest),
      revokePrincipal: (principal) => revocation.revokePrincipal(principal),
      killSwitch: () => revocation.killSwitch(),
      vault,
    };
    let adminUrl: string | undefined;
    if (config.admin.enabled) {
      const admin = await startAdminListener(config, {
        actions,
        events: securityEvents,
        metrics: () => metrics.registry.render(),
        ready: async () => closing === undefined && (await pingWithin(store, READY_PING_TIMEOUT_MS)),
      });
      cleanup.push(() => {
        admin.server.closeAllConnections();
        return closeServer(admin.server);
      });
      adminUrl = admin.url;
    }

    return {
      config,
      url: `http://${host}:${address.port}`,
      address,
      events: securityEvents,
      sessions,
      adminUrl,
      revocation,
      metrics,
      warnings: Object.freeze(warnings),
      close({ graceMs = DEFAULT_GRACE_MS } = {}) {
        closing ??= (async () => {
          securityEvents.emit({ type: "gateway.stopped", configDigest });
          running.drain();
          const stopped = closeServer(server);
          server.closeIdleConnections();
          // Streams have no natural end: they are ended now, and clients resume elsewhere.
          running.endStreams();
          const deadline = Date.now() + graceMs;
          while (running.inFlight > 0 && Date.now() < deadline) {
            await new Promise((resolve) => setTimeout(resolve, 25));
            server.closeIdleConnections();
          }
          server.closeAllConnections();
          await stopped;
          for (const step of cleanup.reverse()) await step().catch(() => undefined);
        })();
        return closing;
      },
    };
  } catch (error) {
    for (const step of cleanup.reverse()) await step().catch(() => undefined);
    throw error;
  }
}

/**
 * The versions of every upstream that does not declare `protocolVersions`, asked with
 * `server/discover` (in parallel, bounded). Each result is logged; an upstream that speaks nothing
 * the gateway serves is refused at start rather than answering every request with an empty list.
 */
async function discoverUndeclared(
  config: GatewayConfig,
  clients: ReadonlyMap<string, UpstreamClient>,
  signer: AssertionSigner,
  log: (level: "info" | "warn", line: string) => void,
): Promise<Map<string, SupportedVersions>> {
  const found = new Map<string, SupportedVersions>();
  await Promise.all(
    config.upstreams.map(async (upstream, index) => {
      const client = clients.get(upstream.name);
      // A command upstream is legacy-only (checked at start): nothing to discover, and its bridge
      // starts processes only for a principal's initialize.
      if (upstream.protocolVersions !== undefined || client === undefined || upstream.transport === "stdio")
        return;
      const { versions, how } = await discoverUpstreamVersions(client, signer, assertionAudience(upstream));
      if (versions.legacy.length === 0 && versions.modern.length === 0) {
        throw new GateError(
          "ERR_CONFIG_INVALID",
          `upstreams[${index}] (${upstream.name}) speaks no protocol version this gateway serves`,
        );
      }
      const listed = [...versions.modern, ...versions.legacy].join(", ");
      const note =
        how === "unreachable"
          ? "did not answer server/discover; serving it as legacy-only (set protocolVersions to declare it)"
          : `speaks ${listed} (${how})`;
      log(how === "unreachable" ? "warn" : "info", `upstreams[${index}] (${upstream.name}) ${note}`);
      found.set(upstream.name, versions);
    }),
  );
  return found;
}

/**
 * Port 0 asks the OS for a port (tests, side-by-side runs). Every value the config layer derived
 * from the port (publicUrl, the loopback Host and Origin allowlists, default audiences) then names
 * port 0, which no client can use: they are rewritten to the port actually bound. Values the
 * operator wrote with another port are left alone.
 */
function withBoundPort(config: GatewayConfig, port: number): GatewayConfig {
  if (config.listen.port !== 0) return config;
  const zero = /:0$/;
  const publicUrl = config.publicUrl.replace(zero, `:${port}`);
  return Object.freeze({
    ...config,
    publicUrl,
    listen: Object.freeze({
      ...config.listen,
      port,
      allowedHosts: config.listen.allowedHosts.map((host) => host.replace(zero, `:${port}`)),
      allowedOrigins: config.listen.allowedOrigins.map((origin) => origin.replace(zero, `:${port}`)),
    }),
    upstreams: config.upstreams.map((upstream) =>
      upstream.audience.startsWith(`${config.publicUrl}/`)
        ? Object.freeze({
            ...upstream,
            audience: `${publicUrl}${upstream.audience.slice(config.publicUrl.length)}`,
          })
        : upstream,
    ),
  });
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      reject(
        new GateError(
          "ERR_CONFIG_INVALID",
          `listen: cannot bind ${host}:${port} (${error.code ?? "error"})`,
          {
            cause: error,
          },
        ),
      );
    };
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
  });
}

/**
 * What Node's HTTP parser refused before a request existed: oversized headers (431), and every
 * framing the gateway will not read, including `Content-Length` with `Transfer-Encoding` (THREATS
 * L5: smuggling). Answered with the same generic bodies the gateway uses elsewhere, then closed.
 */
function answerClientError(
  error: NodeJS.ErrnoException,
  socket: Socket,
  events: SecurityEvents,
  responseInFlight: boolean,
): void {
  const tooLarge = error.code === "HPE_HEADER_OVERFLOW";
  // With a response in flight on this connection, bytes written now would land inside it (a
  // desynchronised or spliced response): the connection is closed without an answer.
  if (error.code === "ECONNRESET" || !socket.writable || responseInFlight) {
    socket.destroy();
    return;
  }
  const wire = toWire(tooLarge ? "ERR_HEADERS_TOO_LARGE" : "ERR_REQUEST_INVALID");
  events.emit({
    type: "request.refused",
    reason: tooLarge ? "headers-too-large" : "request-invalid",
    status: wire.status,
    ...(socket.remoteAddress !== undefined ? { clientAddress: socket.remoteAddress } : {}),
  });
  const body = JSON.stringify({
    jsonrpc: "2.0",
    id: null,
    error: { code: -32600, message: wire.message, data: { code: wire.code } },
  });
  socket.end(
    `HTTP/1.1 ${wire.status} ${tooLarge ? "Request Header Fields Too Large" : "Bad Request"}\r\n` +
      "content-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\n" +
      `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

/** How long /readyz waits for the store before answering not ready. */
const READY_PING_TIMEOUT_MS = 2_000;

async function pingWithin(store: Store, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([
      store.ping().then(
        () => true,
        () => false,
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * SHA-256 of the configuration in force, for gateway.started / gateway.stopped: an operator can tell
 * which configuration a replica ran with. The configuration holds no secret values (keys are
 * referenced by `env:` or `file:`; tokens and API keys by digest).
 */
function digestOfConfig(config: GatewayConfig): string {
  return createHash("sha256").update(JSON.stringify(config)).digest("hex");
}

/**
 * The admin listener on `admin.listen`. Without a token it is on loopback (config refuses otherwise)
 * and only Host values naming this listener are accepted (DNS rebinding, src/gateway/admin-server.ts).
 */
async function startAdminListener(
  config: GatewayConfig,
  options: {
    actions: AdminActions;
    events: SecurityEvents;
    metrics: () => string;
    ready: () => Promise<boolean>;
  },
): Promise<{ server: Server; url: string }> {
  const allowedHosts = new Set<string>();
  let listener: ReturnType<typeof createAdminHandler> | undefined;
  const server = createServer({ headersTimeout: 10_000, requestTimeout: 30_000 }, (request, response) => {
    if (listener) listener(request, response);
    else response.writeHead(503, { connection: "close" }).end();
  });
  await listen(server, config.admin.listen.host, config.admin.listen.port).catch((error: unknown) => {
    throw isGateError(error) ? new GateError(error.code, `admin.${error.message}`, { cause: error }) : error;
  });
  const address = server.address() as AddressInfo;
  const host = address.family === "IPv6" ? `[${address.address}]` : address.address;
  for (const name of [host, config.admin.listen.host, "localhost", "127.0.0.1", "[::1]"]) {
    allowedHosts.add(`${name.toLowerCase()}:${address.port}`);
  }
  listener = createAdminHandler({
    tokenDigest: config.admin.tokenDigest,
    allowedHosts: config.admin.tokenDigest === undefined ? allowedHosts : null,
    actions: options.actions,
    metrics: options.metrics,
    ready: options.ready,
    events: options.events,
  });
  return { server, url: `http://${host}:${address.port}` };
}

/** The cap limits of both pools from `limits.streams` and `limits.inflight`. */
function capLimits(config: GatewayConfig): ConnectionCapLimits {
  const pool = (caps: ConnectionCapsConfig) => ({
    global: caps.global,
    perIp: caps.perIp,
    perPrincipal: caps.perPrincipal,
    perSession: caps.perSession,
  });
  return { streams: pool(config.limits.streams), inflight: pool(config.limits.inflight) };
}

/**
 * `limits.scope: local` counts in this process; `cluster` holds leases in the shared store, so caps
 * hold across replicas while the store answers and a dead replica's slots come back after the lease
 * TTL. The replica id is unique per process start (a restart never reuses a previous life's members).
 */
function createCapLedger(
  config: GatewayConfig,
  store: Store,
  log: (level: "warn" | "error", message: string) => void,
): CapLedger {
  if (config.limits.scope === "local") return createLocalLedger();
  let warned = false;
  return createClusterLedger({
    store,
    leaseKey,
    replicaId: `${
      hostname()
        .replace(/[^A-Za-z0-9._-]/g, "-")
        .slice(0, 64) || "replica"
    }-${process.pid}-${randomBytes(6).toString("hex")}`,
    onRenewal: (report) => {
      if (report.missing > 0 && !warned) {
        warned = true;
        log(
          "warn",
          "limits: connection-cap leases expired while the store did not answer; caps undercount until those streams end",
        );
      }
    },
  });
}
