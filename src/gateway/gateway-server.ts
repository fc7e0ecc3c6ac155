import { once } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import { Readable } from "node:stream";
import {
  authDenialOf,
  type RequestRefusalReason,
  type SecurityEvents,
  type UpstreamFailureReason,
} from "../audit/security-events.ts";
import type { GatewayConfig, UpstreamConfig } from "../config/gateway-config.ts";
import type { AssertionSigner } from "../crypto/assertion-signer.ts";
import type { Keyring } from "../crypto/keyring.ts";
import { GateError, isGateError } from "../errors.ts";
import { ANONYMOUS_TENANT, anonymousPrincipal } from "../identity/anonymous.ts";
import type { Authenticator } from "../identity/authenticate.ts";
import { ANONYMOUS_ISSUER, ownerScope, type Principal } from "../identity/principal.ts";
import type { ClientBindingPolicy, ClientFingerprinter } from "../sessions/client-binding.ts";
import { principalDigest, type RevocationNotice, type RevocationSignal } from "../sessions/revocation-bus.ts";
import type { ResolvedSession, SessionRegistry } from "../sessions/session-registry.ts";
import type { Store } from "../store/contract.ts";
import { capabilityOwner, createTaskCapabilities } from "../tasks/task-capabilities.ts";
import {
  LEGACY_ONLY_TASK_METHODS,
  listedTasks,
  TASK_METHODS,
  taskCreatedBy,
  tasksNamedBy,
} from "../tasks/task-policy.ts";
import { isPoliceableTaskId, type TaskRegistry } from "../tasks/task-registry.ts";
import {
  environmentVaultReference,
  type InjectionPlan,
  planInjection,
  renderInjection,
} from "../vault/injection.ts";
import type { Vault } from "../vault/vault.ts";
import { type Admission, type AdmissionTicket, RETRY_AFTER_DETAIL_PREFIX } from "./admission.ts";
import { challengeHeaders } from "./auth-challenge.ts";
import { clientResponseHeaders, upstreamRequestHeaders } from "./forward-headers.ts";
import { createHostOriginPolicy } from "./host-origin-policy.ts";
import { asGateError, type EchoedId, mediaTypeOf, sendError, sendJson } from "./http-responses.ts";
import { readInitializeResult } from "./initialize-result.ts";
import {
  DUPLICATE_KEY_DETAIL,
  firstRequestId,
  type JsonRpcPayload,
  parseJsonRpcBody,
  readRequestBody,
} from "./json-rpc-body.ts";
import { checkModernRequest, encodeMirrored } from "./modern-request.ts";
import { metadataUrl, protectedResourceMetadata, resourceUrl } from "./protected-resource-metadata.ts";
import {
  classifyProtocolVersion,
  DEFAULT_PROTOCOL_VERSION,
  GATEWAY_PROTOCOL_VERSIONS,
  type SupportedVersions,
  UNSUPPORTED_PROTOCOL_VERSION_STATUS,
  unsupportedVersionError,
} from "./protocol-era.ts";
import { mcpMethodOf, type RequestRecord, type RequestRecordDraft, trackRequest } from "./request-record.ts";
import { openRequestState, type RequestStateBinding, sealRequestState } from "./request-state.ts";
import { DROP, inspectJson, inspectSse, type MessageHook } from "./response-inspector.ts";
import { createEventIdCodec, rewriteSseEventIds } from "./sse-event-ids.ts";
import type { UpstreamClient, UpstreamResponse } from "./upstream-client.ts";
import { createUpstreamRoutes } from "./upstream-routes.ts";
import {
  MAX_VAULT_BODY_BYTES,
  matchVaultPath,
  VAULT_PREFIX,
  type VaultRoute,
  vaultValueOf,
} from "./vault-endpoint.ts";

/** Where the gateway publishes its assertion keys (DESIGN, Authorization). */
export const JWKS_PATH = "/.well-known/jwks.json";
/** Liveness for load balancers and replicas; says nothing but "ok". */
export const HEALTH_PATH = "/.tenantgate/health";
/**
 * `GET /.tenantgate/session<upstream path>` with the session's `Mcp-Session-Id` and the caller's
 * credential: the caller's own session metadata (never the id, nor the upstream's).
 */
export const SESSION_INFO_PREFIX = "/.tenantgate/session";

/** The initialize response is read whole (it must be, to learn the negotiated version): this bounds it. */
const MAX_INITIALIZE_RESPONSE_BYTES = 1024 * 1024;
const INITIALIZE_RESPONSE_TIMEOUT_MS = 30_000;
const SESSION_HEADER = "mcp-session-id";
const VERSION_HEADER = "mcp-protocol-version";
const EVENT_ID_PURPOSE = "sse-event-id";
/** A JSON answer up to this size is inspected for task ids before it is relayed. */
const MAX_INSPECTED_JSON_BYTES = 16 * 1024 * 1024;
/** Re-checking a stream after the bus reconnected: tries, spaced 250, 500, 750… ms, before it ends. */
const REVALIDATE_ATTEMPTS = 5;
const REVALIDATE_RETRY_MS = 250;
/**
 * Revocation signals remembered per request until its stream is registered; past this many, the
 * stream is re-checked against the store instead (as after a lost bus connection).
 */
const MAX_MISSED_SIGNALS = 16;
/** MCP transports: a session id is visible ASCII; the registry bounds its length. */
const UPSTREAM_SESSION_ID = /^[\x21-\x7e]{1,1024}$/;

export interface GatewayDependencies {
  readonly config: GatewayConfig;
  readonly keyring: Keyring;
  readonly authenticator: Authenticator;
  readonly signer: AssertionSigner;
  readonly sessions: SessionRegistry;
  readonly tasks: TaskRegistry;
  /** The store task capabilities (anonymous modern clients) are kept in. */
  readonly store: Store;
  readonly events: SecurityEvents;
  /** The upstream client for each upstream, by name. */
  readonly upstreamClients: ReadonlyMap<string, UpstreamClient>;
  /** Versions per upstream name as discovered at start; upstreams not in it use their declared list. */
  readonly upstreamVersions?: ReadonlyMap<string, SupportedVersions>;
  /**
   * Tells every replica that a session ended here (client DELETE, upstream 404), so its streams open
   * elsewhere end too (the revocation bus). Not awaited; a failure is the bus's to report.
   */
  readonly publishRevocation?: (notice: RevocationNotice) => Promise<void>;
  /** The client's address (socket peer, or the nearest untrusted hop behind trusted proxies). */
  readonly clientAddressOf: (
    socketAddress: string | undefined,
    forwardedFor: readonly string[] | undefined,
  ) => string | undefined;
  /**
   * Called exactly once per request handled, when its response finished or its connection closed,
   * with what the pipeline learned about it (the access log, metrics). A throw is ignored.
   */
  readonly onRequestDone?: (record: RequestRecord) => void;
  /** sessions.clientBinding and the fingerprint it compares; absent: off. */
  readonly clientBinding?: {
    readonly policy: ClientBindingPolicy;
    readonly fingerprinter: ClientFingerprinter;
  };
  /** Connection caps and rate limits (limits.*); absent: none. */
  readonly admission?: Admission;
  /** The credential vault: enrollment under /.tenantgate/vault and upstreams[].inject. */
  readonly vault?: Vault;
}

export interface GatewayHandler {
  handle(request: IncomingMessage, response: ServerResponse): void;
  /** Stop admitting requests (each new one gets 503); requests already admitted run to their end. */
  drain(): void;
  /** Requests admitted and not yet finished (POSTs, DELETEs and open GET streams). */
  readonly inFlight: number;
  /** Ends every open GET stream now (shutdown): clients reconnect, with Last-Event-ID, elsewhere. */
  endStreams(): void;
  /** Open streams on this replica (for metrics). */
  readonly openStreamCount: number;
  /**
   * Acts on what the revocation bus heard: ends the open streams a notice names (a session's, a
   * principal's, or, for the kill switch, every stream but those of sessions created after it); on
   * `resync` re-checks every open stream against the store and ends those it cannot vouch for. Every
   * signal is also handed to the upstream clients that hold something per session (stdio processes).
   */
  applyRevocation(signal: RevocationSignal): void;
}

/** An open stream this replica can end when a revocation names it. */
interface OpenStream {
  /** Legacy GET streams belong to a session; modern answers streamed as SSE to a principal only. */
  readonly sessionDigest: string | null;
  readonly principalDigest: string;
  /** The session's kill generation (legacy), or null (modern: no session, so nothing to compare). */
  readonly killGeneration: number | null;
  /** Whether the stream's session still resolves; null for modern streams, which have no session. */
  readonly stillValid: (() => Promise<boolean>) | null;
  /**
   * GET streams end at shutdown (their clients reconnect elsewhere); streamed answers to a POST are
   * requests in flight, which shutdown lets finish.
   */
  readonly endsAtShutdown: boolean;
  readonly end: () => void;
}

/** Whether a revocation notice names an open stream. */
function revokedBy(stream: OpenStream, notice: RevocationNotice): boolean {
  switch (notice.kind) {
    case "session":
      return stream.sessionDigest === notice.sessionDigest;
    case "principal":
      return stream.principalDigest === notice.principalDigest;
    case "all":
      // Streams of sessions created after this kill switch are left alone: a late notice must not
      // cut them. Every modern stream ends (there is no session to tell its age by).
      return stream.killGeneration === null || stream.killGeneration < notice.generation;
  }
}

/** Everything one request carries through the pipeline once it has been routed. */
interface McpContext {
  readonly request: IncomingMessage;
  readonly response: ServerResponse;
  readonly upstream: UpstreamConfig;
  readonly client: UpstreamClient;
  readonly clientAddress: string | undefined;
}

/**
 * The gateway's request pipeline (DESIGN "a request flows one way"): Host/Origin, route, era,
 * authentication, session ownership, forward, claim what the upstream minted, respond, audit.
 * Every refusal leaves a security event and a generic answer whose body depends only on its code.
 *
 * Each request is placed in its era by `MCP-Protocol-Version`: legacy (2025-03-26 .. 2025-11-25,
 * `initialize` + `Mcp-Session-Id`) or modern (2026-07-28, self-contained). A version the upstream
 * does not speak through the gateway, or an unknown one, is answered with -32022 listing those it
 * does, which makes SDK v2 clients fall back to `initialize`.
 */
export function createGatewayHandler(deps: GatewayDependencies): GatewayHandler {
  const { config, authenticator, signer, sessions, tasks, events } = deps;
  const capabilities = createTaskCapabilities({ store: deps.store, keyring: deps.keyring });
  const routes = createUpstreamRoutes(config);
  const hostOrigin = createHostOriginPolicy(config.listen);
  const issuers = config.auth.issuers.map((issuer) => issuer.issuer);
  const eventIdKey = deps.keyring.purposeKey(EVENT_ID_PURPOSE);
  const supportedByUpstream = new Map<string, SupportedVersions>();
  /** upstreams[].inject, parsed once: the upstreams that inject at least one vault entry. */
  const injectionPlans = new Map<string, InjectionPlan>();
  /**
   * The entries each upstream uses (its inject templates, a command's `vault:NAME` env values): the
   * only ones enrollable at its path, so a token for one upstream (its audience, its scopes) can
   * never replace or remove the credential another upstream injects.
   */
  const enrollable = new Map<string, ReadonlySet<string>>();
  for (const upstream of config.upstreams) {
    supportedByUpstream.set(upstream.name, deps.upstreamVersions?.get(upstream.name) ?? versionsOf(upstream));
    const plan = planInjection(upstream.inject);
    if (plan.entries.length > 0) injectionPlans.set(upstream.name, plan);
    const used = new Set(plan.entries);
    if (upstream.transport === "stdio") {
      for (const value of Object.values(upstream.env)) {
        const entry = environmentVaultReference(value);
        if (entry !== undefined) used.add(entry);
      }
    }
    enrollable.set(upstream.name, used);
  }

  let draining = false;
  let inFlight = 0;
  /** Each request's admission ticket: its cap slots, and the owner stage still to pass. */
  const tickets = new WeakMap<ServerResponse, AdmissionTicket>();
  /** Each request's record while it is in flight, filled in as the pipeline learns. */
  const drafts = new WeakMap<ServerResponse, RequestRecordDraft>();
  const draftOf = (response: ServerResponse): Partial<RequestRecordDraft> => drafts.get(response) ?? {};
  /**
   * Open streams (legacy GET streams, legacy POSTs answered with a stream, modern SSE answers), each
   * with the way to end it cleanly.
   */
  const openStreams = new Map<ServerResponse, OpenStream>();
  /**
   * Signals heard while a request was between its checks (the session resolved, the token verified)
   * and its stream's registration: a notice that arrives while the upstream has not answered yet
   * finds no open stream to end, so each request keeps what it missed and replays it on its stream.
   */
  const missedSignals = new Map<ServerResponse, RevocationSignal[]>();

  function endStreamsWhere(matches: (stream: OpenStream) => boolean): void {
    for (const [response, stream] of openStreams) {
      if (!matches(stream)) continue;
      openStreams.delete(response);
      stream.end();
    }
  }

  /** The session a request acts on, and its owner, for the request's record (digest, never the id). */
  function noteSession(
    response: ServerResponse,
    session: { readonly sessionDigest: string },
    principal: Principal,
  ): void {
    const draft = draftOf(response);
    draft.sessionDigest = session.sessionDigest;
    draft.principal = principal;
  }

  /**
   * The owner stage of admission: per-session and per-principal caps, then the rate limit. Pass
   * null where there is no principal beyond the request (an anonymous initialize or modern request):
   * the client's address stands in. An anonymous session's own throwaway principal does count.
   */
  async function admitOwner(
    context: McpContext,
    principal: Principal | null,
    sessionDigest?: string,
    exempt = false,
  ): Promise<void> {
    const ticket = tickets.get(context.response);
    if (ticket === undefined) return;
    await ticket.admitOwner({
      principal,
      sessionDigest,
      clientAddress: context.clientAddress,
      exempt,
    });
  }

  /**
   * An authenticated caller's rate-limit take, started alongside the session's owner check so both
   * reach the store in one round trip (see AdmissionTicket.takeRateEarly). An anonymous caller's
   * bucket is its session's throwaway principal, known only after the check.
   */
  function takeRateEarly(context: McpContext, caller: Principal | "anonymous"): void {
    if (caller !== "anonymous") tickets.get(context.response)?.takeRateEarly(caller);
  }

  /** Whether a path names an endpoint of this gateway (any other path is client text, never logged). */
  function servesPath(path: string): boolean {
    if (path === JWKS_PATH || path === HEALTH_PATH) return true;
    if (path.startsWith(`${SESSION_INFO_PREFIX}/`)) {
      return routes.match(path.slice(SESSION_INFO_PREFIX.length)) !== undefined;
    }
    return routes.match(path) !== undefined || routes.matchMetadata(path) !== undefined;
  }

  /**
   * A revocation on this replica (heard on the bus, made by an operator here, or a session the cap
   * evicted here): the open streams it names end, and so does what in-process upstreams hold for it.
   */
  function revokeHere(signal: RevocationSignal): void {
    for (const client of deps.upstreamClients.values()) {
      try {
        client.applyRevocation?.(signal);
      } catch {
        // One upstream's failure must not keep the revocation from the others or from the streams.
      }
    }
    for (const [response, missed] of missedSignals) {
      if (missed.length < MAX_MISSED_SIGNALS) missed.push(signal);
      else missedSignals.set(response, [Object.freeze({ kind: "resync" })]);
    }
    if (signal.kind === "resync") revalidateStreams();
    else endStreamsWhere((stream) => revokedBy(stream, signal));
  }

  function endStreamsOf(sessionDigest: string): void {
    endStreamsWhere((stream) => stream.sessionDigest === sessionDigest);
  }

  /** The session ended here; its streams on other replicas end through the bus. */
  function announceSessionEnd(sessionDigest: string): void {
    deps.publishRevocation?.({ kind: "session", sessionDigest }).catch(() => undefined);
  }

  /**
   * After the bus lost its connection, notices sent meanwhile are gone: each legacy stream's session is
   * resolved again and the stream ends unless it still resolves. The store's own connection may come
   * back a moment after the bus's, so a store that cannot answer is asked again a few times; one that
   * still cannot ends the stream (fail closed). A modern stream has no session to re-check, so it
   * ends; its client asks again and is judged afresh.
   */
  function revalidateStreams(): void {
    for (const [response, stream] of openStreams) revalidate(response, stream);
  }

  function revalidate(response: ServerResponse, stream: OpenStream): void {
    const check = stream.stillValid;
    if (check === null) {
      openStreams.delete(response);
      stream.end();
      return;
    }
    const judge = async (): Promise<boolean> => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await check();
        } catch {
          if (attempt >= REVALIDATE_ATTEMPTS || !openStreams.has(response)) return false;
          await new Promise((resolve) => setTimeout(resolve, REVALIDATE_RETRY_MS * attempt));
        }
      }
    };
    void judge().then((valid) => {
      if (valid || !openStreams.delete(response)) return;
      stream.end();
    });
  }

  /**
   * Called once a stream is registered and its head written: applies what the request missed
   * between its checks and the registration (see missedSignals), so a revocation racing the
   * upstream's answer still ends the stream.
   */
  function catchUpOnRevocations(response: ServerResponse): void {
    const missed = missedSignals.get(response);
    missedSignals.delete(response);
    const stream = openStreams.get(response);
    if (missed === undefined || stream === undefined) return;
    for (const signal of missed) {
      if (!openStreams.has(response)) return;
      if (signal.kind === "resync") revalidate(response, stream);
      else if (revokedBy(stream, signal)) {
        openStreams.delete(response);
        stream.end();
      }
    }
  }

  function refuse(
    response: ServerResponse,
    error: unknown,
    context: { upstream?: UpstreamConfig; clientAddress?: string | undefined; id?: EchoedId },
  ): void {
    const gateError = asGateError(error);
    draftOf(response).errorCode = gateError.code;
    const { upstream, clientAddress } = context;
    const common = {
      ...(upstream ? { upstream: upstream.name } : {}),
      ...(clientAddress !== undefined ? { clientAddress } : {}),
      status: gateError.toWire().status,
    };
    let headers: Readonly<Record<string, string>> = {};
    const auth = authDenialOf(gateError);
    if (auth) {
      events.emit({ type: "auth.denied", code: auth.code, reason: auth.reason, ...common });
      if (upstream) {
        headers = challengeHeaders(gateError, {
          metadataUrl: metadataUrl(config.publicUrl, upstream.path),
          requiredScopes: upstream.scopes,
        }).headers;
      }
    } else {
      switch (gateError.code) {
        case "ERR_UPSTREAM_REFUSED":
          events.emit({
            type: "upstream.refused",
            reason: gateError.detail === "upstream-403" ? "forbidden" : "unauthorized",
            ...common,
          });
          break;
        case "ERR_UPSTREAM_UNAVAILABLE":
          events.emit({ type: "upstream.unavailable", reason: upstreamFailureOf(gateError), ...common });
          break;
        case "ERR_STORE_UNAVAILABLE":
        case "ERR_STORE_FULL":
          events.emit({ type: "store.unavailable", ...common });
          break;
        case "ERR_SESSION_NOT_FOUND":
          // The registry already reported why (session.denied); this is the answer only.
          break;
        default:
          events.emit({ type: "request.refused", reason: refusalReason(gateError), ...common });
      }
    }
    if (gateError.code === "ERR_METHOD_NOT_ALLOWED") headers = { ...headers, allow: "GET, POST, DELETE" };
    if (gateError.code === "ERR_SHUTTING_DOWN") headers = { ...headers, connection: "close" };
    const retryAfter =
      gateError.code === "ERR_RATE_LIMITED" && gateError.detail?.startsWith(RETRY_AFTER_DETAIL_PREFIX)
        ? gateError.detail.slice(RETRY_AFTER_DETAIL_PREFIX.length)
        : undefined;
    // RFC 6585 §4: how long to wait, in seconds (RFC 9110 §10.2.3: delay-seconds is digits only, so
    // nothing else is ever written into the header).
    if (retryAfter !== undefined && /^[0-9]{1,9}$/.test(retryAfter)) {
      headers = { ...headers, "retry-after": retryAfter };
    }
    sendError(response, gateError, { id: context.id ?? null, headers });
  }

  async function route(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const clientAddress = deps.clientAddressOf(
      request.socket.remoteAddress,
      request.headersDistinct["x-forwarded-for"],
    );
    const draft = draftOf(response);
    draft.clientAddress = clientAddress;
    try {
      if (draining) throw new GateError("ERR_SHUTTING_DOWN", "shutting down");
      const target = request.url ?? "";
      // Origin-form only (RFC 9112 §3.2.1): absolute-form and `*` are for proxies and OPTIONS.
      if (!target.startsWith("/")) {
        throw new GateError("ERR_REQUEST_INVALID", "request target refused", { detail: "request-target" });
      }
      const queryAt = target.indexOf("?");
      const path = queryAt < 0 ? target : target.slice(0, queryAt);

      if (deps.admission !== undefined) {
        // Global and per-IP caps come before any other work (DESIGN invariant 7). A GET at an MCP
        // path is a stream; anything else a request in flight.
        const pool = request.method === "GET" && routes.match(path) !== undefined ? "streams" : "inflight";
        const closed = new Promise<void>((resolve) => response.once("close", () => resolve()));
        tickets.set(response, await deps.admission.enter(pool, clientAddress, closed));
      }
      if (servesPath(path)) draft.path = path;

      // Before anything is routed, so every endpoint (metadata and keys too) is behind the allowlists.
      hostOrigin.check(request.headersDistinct);

      if (path === JWKS_PATH || path === HEALTH_PATH) {
        if (request.method !== "GET") throw new GateError("ERR_METHOD_NOT_ALLOWED", "method not allowed");
        if (path === HEALTH_PATH) return sendJson(response, 200, { status: "ok" });
        // Public keys: caching them briefly is harmless and spares the gateway a request per verify.
        return sendJson(response, 200, signer.jwks(), { "cache-control": "public, max-age=300" });
      }

      if (path.startsWith(`${SESSION_INFO_PREFIX}/`)) {
        const upstream = routes.match(path.slice(SESSION_INFO_PREFIX.length));
        if (!upstream) throw new GateError("ERR_NOT_FOUND", "no such route", { detail: "no-route" });
        draft.upstream = upstream.name;
        if (request.method !== "GET") throw new GateError("ERR_METHOD_NOT_ALLOWED", "method not allowed");
        // Authenticated like an MCP path, so refused like one when a query comes along (THREATS T4).
        if (queryAt >= 0) {
          throw new GateError("ERR_REQUEST_INVALID", "query string refused", { detail: "query-string" });
        }
        return await serveSessionInfo(request, response, upstream, clientAddress);
      }

      if (path.startsWith(`${VAULT_PREFIX}/`)) {
        const vaultRoute = deps.vault === undefined ? undefined : matchVaultPath(path, routes);
        if (!vaultRoute) throw new GateError("ERR_NOT_FOUND", "no such route", { detail: "no-route" });
        draft.upstream = vaultRoute.upstream.name;
        // The entry's name is the caller's text: the access log gets the route, not the name.
        draft.path = `${VAULT_PREFIX}${vaultRoute.upstream.path}`;
        if (queryAt >= 0) {
          throw new GateError("ERR_REQUEST_INVALID", "query string refused", { detail: "query-string" });
        }
        return await serveVault(request, response, vaultRoute, clientAddress);
      }

      const described = routes.matchMetadata(path);
      if (described) {
        if (request.method !== "GET") throw new GateError("ERR_METHOD_NOT_ALLOWED", "method not allowed");
        return sendJson(
          response,
          200,
          protectedResourceMetadata(described, {
            resource: resourceUrl(config.publicUrl, described.path),
            issuers,
          }),
          { "cache-control": "public, max-age=300" },
        );
      }

      const upstream = routes.match(path);
      const client = upstream ? deps.upstreamClients.get(upstream.name) : undefined;
      if (!upstream || !client) throw new GateError("ERR_NOT_FOUND", "no such route", { detail: "no-route" });
      draft.upstream = upstream.name;
      // Nothing the gateway accepts travels in a query string (bearer tokens never do: RFC 6750 §5.3,
      // THREATS T4), and the upstream's URL is configured: a query is refused, never forwarded.
      if (queryAt >= 0) {
        throw new GateError("ERR_REQUEST_INVALID", "query string refused", { detail: "query-string" });
      }
      await serveMcp({ request, response, upstream, client, clientAddress });
    } catch (error) {
      refuse(response, error, { clientAddress });
    }
  }

  /**
   * A principal reads its own session's metadata: the same authentication and ownership checks as any
   * request on the session (a foreign or unknown id is the same 404), then created, expires, upstream
   * and version. Never the session id, the upstream's id, or anything of another principal.
   */
  async function serveSessionInfo(
    request: IncomingMessage,
    response: ServerResponse,
    upstream: UpstreamConfig,
    clientAddress: string | undefined,
  ): Promise<void> {
    let caller: Principal | "anonymous";
    try {
      caller = await authenticator.authenticate(request.headersDistinct, {
        audience: upstream.audience,
        requiredScopes: upstream.scopes,
        clientAddress,
      });
    } catch (error) {
      return refuse(response, error, { upstream, clientAddress });
    }
    if (caller !== "anonymous") draftOf(response).principal = caller;
    const presented = request.headersDistinct[SESSION_HEADER];
    if (presented === undefined || presented.length !== 1 || presented[0] === undefined) {
      throw new GateError("ERR_SESSION_REQUIRED", "session id required", { detail: "no-session-id" });
    }
    const { session, principal } = await resolveSession(presented[0], caller, upstream, {
      request,
      clientAddress,
    });
    noteSession(response, session, principal);
    sendJson(response, 200, {
      upstream: upstream.name,
      protocolVersion: session.protocolVersion,
      createdAt: new Date(session.createdAt).toISOString(),
      expiresAt: new Date(session.expiresAt).toISOString(),
    });
  }

  /**
   * Enrollment (src/gateway/vault-endpoint.ts): the caller's own entries, write-only. Authenticated as
   * a request to the route's upstream; the owner is the verified principal, never anything sent.
   */
  async function serveVault(
    request: IncomingMessage,
    response: ServerResponse,
    route: VaultRoute,
    clientAddress: string | undefined,
  ): Promise<void> {
    const vault = deps.vault;
    if (vault === undefined) throw new GateError("ERR_NOT_FOUND", "no such route", { detail: "no-route" });
    const allowed = route.name === undefined ? ["GET"] : ["PUT", "DELETE"];
    if (!allowed.includes(request.method ?? "")) {
      throw new GateError("ERR_METHOD_NOT_ALLOWED", "method not allowed");
    }
    const caller = await authenticator.authenticate(request.headersDistinct, {
      audience: route.upstream.audience,
      requiredScopes: route.upstream.scopes,
      clientAddress,
    });
    // An anonymous caller has no principal that outlives its session: nothing to enroll for.
    if (caller === "anonymous") throw new GateError("ERR_AUTH_REQUIRED", "authentication required");
    draftOf(response).principal = caller;
    // The principal's caps and rate limit, as for any request of its own.
    await tickets.get(response)?.admitOwner({ principal: caller, clientAddress });
    // After authentication, so which names an upstream uses is not told to whoever asks.
    if (route.name !== undefined && !enrollable.get(route.upstream.name)?.has(route.name)) {
      throw new GateError("ERR_NOT_FOUND", "no such route", { detail: "no-route" });
    }
    const owner = ownerScope(caller);
    if (route.name === undefined) {
      const entries = await vault.list(owner);
      return sendJson(response, 200, {
        entries: entries.map((entry) => ({
          name: entry.name,
          updatedAt: new Date(entry.updatedAt).toISOString(),
        })),
      });
    }
    if (request.method === "DELETE") {
      const removed = await vault.delete(owner, route.name);
      if (!removed) throw new GateError("ERR_NOT_FOUND", "not found", { detail: "vault-entry" });
      events.emit({
        type: "vault.changed",
        reason: "entry-deleted",
        principal: owner,
        upstream: route.upstream.name,
      });
      response.writeHead(204, { "cache-control": "no-store" }).end();
      return;
    }
    const value = vaultValueOf(await readRequestBody(request, MAX_VAULT_BODY_BYTES), request);
    let created: boolean;
    try {
      ({ created } = await vault.put(owner, route.name, value));
    } catch (error) {
      // The vault names the argument it refused (never the value); to the client it is one 400.
      if (isGateError(error, "ERR_ARGUMENT_INVALID")) {
        throw new GateError("ERR_REQUEST_INVALID", "invalid request", {
          detail: "vault-value",
          cause: error,
        });
      }
      throw error;
    }
    events.emit({
      type: "vault.changed",
      reason: "entry-put",
      principal: owner,
      upstream: route.upstream.name,
    });
    response.writeHead(created ? 201 : 204, { "cache-control": "no-store" }).end();
  }

  async function serveMcp(context: McpContext): Promise<void> {
    const { request, upstream, clientAddress } = context;
    const method = request.method;
    if (method !== "POST" && method !== "GET" && method !== "DELETE") {
      throw new GateError("ERR_METHOD_NOT_ALLOWED", "method not allowed");
    }

    const draft = draftOf(context.response);
    const supported = supportedByUpstream.get(upstream.name) ?? versionsOf(upstream);
    let era = classifyProtocolVersion(request.headersDistinct[VERSION_HEADER], supported);
    if (
      era.era === "unsupported" &&
      request.headersDistinct[VERSION_HEADER] === undefined &&
      supported.legacy.length > 0
    ) {
      // No header reads as 2025-03-26 (transports, backwards compatibility), but an initialize
      // negotiates its version in the body (the answer must name one this upstream speaks) and a
      // session request speaks its session's version (the version lock): both are judged there, so
      // an upstream that dropped 2025-03-26 still admits clients that initialize without the header.
      era = { era: "legacy", version: DEFAULT_PROTOCOL_VERSION };
    }
    draft.era = era.era;
    if (era.era === "unsupported") {
      // A version this upstream does not speak through the gateway (a modern one for a legacy-only
      // upstream, an unknown or future one): -32022 listing what it does speak, newest first, which
      // makes SDK v2 clients retry with a listed version or fall back to initialize (THREATS M2).
      const id = method === "POST" ? await readIdForEcho(request) : null;
      const requested = era.requested;
      events.emit({
        type: "request.refused",
        reason: "protocol-version",
        upstream: upstream.name,
        ...(clientAddress !== undefined ? { clientAddress } : {}),
        status: UNSUPPORTED_PROTOCOL_VERSION_STATUS,
      });
      sendJson(
        context.response,
        UNSUPPORTED_PROTOCOL_VERSION_STATUS,
        unsupportedVersionError(id, era.supported, requested),
      );
      return;
    }

    let caller: Principal | "anonymous";
    try {
      caller = await authenticator.authenticate(request.headersDistinct, {
        audience: upstream.audience,
        requiredScopes: upstream.scopes,
        clientAddress,
      });
    } catch (error) {
      return refuse(context.response, error, { upstream, clientAddress });
    }
    if (caller !== "anonymous") draft.principal = caller;

    if (era.era === "modern") {
      try {
        return await serveModern(context, caller, era.version);
      } catch (error) {
        return refuse(context.response, error, { upstream, clientAddress });
      }
    }

    const presented = request.headersDistinct[SESSION_HEADER];
    if (presented !== undefined && presented.length !== 1) {
      // Two session ids: the gateway and the upstream could each pick a different one (THREATS L5).
      throw new GateError("ERR_REQUEST_INVALID", "repeated session header", {
        detail: "session-header-repeated",
      });
    }
    const sessionId = presented?.[0];

    try {
      if (method === "POST") return await servePost(context, caller, sessionId, era.version);
      if (sessionId === undefined) {
        throw new GateError("ERR_SESSION_REQUIRED", "session id required", { detail: "no-session-id" });
      }
      // DELETE is exempt from the rate limit (a client can always clean up): nothing to take early.
      if (method === "GET") takeRateEarly(context, caller);
      const session = await resolveSession(sessionId, caller, upstream, context);
      noteSession(context.response, session.session, session.principal);
      checkVersionLock(request, session.session, era.version);
      await admitOwner(context, session.principal, session.session.sessionDigest, method === "DELETE");
      if (method === "GET") return await serveStream(context, session, sessionId);
      return await endSession(context, session, sessionId);
    } catch (error) {
      refuse(context.response, error, { upstream, clientAddress });
    }
  }

  /**
   * The session the caller may use, or ERR_SESSION_NOT_FOUND for every reason it may not (unknown,
   * expired, ended, foreign, another upstream: THREATS S1, S3, S4, S11). An anonymous caller is
   * judged as the throwaway principal the session was created for; an authenticated caller as itself.
   */
  async function resolveSession(
    sessionId: string,
    caller: Principal | "anonymous",
    upstream: UpstreamConfig,
    client: { readonly request: IncomingMessage; readonly clientAddress: string | undefined },
  ): Promise<{ session: ResolvedSession; principal: Principal }> {
    const principal =
      caller === "anonymous" ? await sessions.anonymousOwner(sessionId, upstream.name) : caller;
    // The registry already reported why (session.denied), as resolve does.
    if (principal === null) throw new GateError("ERR_SESSION_NOT_FOUND", "session not found");
    const session = await sessions.resolve(sessionId, principal, upstream.name);
    // A session created expecting an upstream id is refused by the registry while it has none, so a
    // null upstream id here means the upstream does not use sessions.
    if (session === null) throw new GateError("ERR_SESSION_NOT_FOUND", "session not found");
    checkClientBinding(session, client, upstream);
    return { session, principal };
  }

  /**
   * sessions.clientBinding (defence in depth, never the isolation itself): the request's coarse
   * fingerprint against the one recorded when the session was created. A session created while
   * binding was off has none and is not compared.
   */
  function checkClientBinding(
    session: ResolvedSession,
    client: { readonly request: IncomingMessage; readonly clientAddress: string | undefined },
    upstream: UpstreamConfig,
  ): void {
    const binding = deps.clientBinding;
    if (binding === undefined || binding.policy === "off" || session.clientBinding === undefined) return;
    // Recomputed under the key the recorded fingerprint names (decision 103), so a master-key
    // rotation does not unbind every session, and compared in constant time.
    if (
      binding.fingerprinter.matches(
        session.clientBinding,
        client.request.headers["user-agent"],
        client.clientAddress,
      )
    ) {
      return;
    }
    const context = {
      upstream: upstream.name,
      principal: session.owner,
      sessionDigest: session.sessionDigest,
      ...(client.clientAddress !== undefined ? { clientAddress: client.clientAddress } : {}),
    };
    if (binding.policy === "audit") {
      events.emit({ type: "session.binding-mismatch", ...context });
      return;
    }
    events.emit({ type: "session.denied", reason: "client-binding", operation: "resolve", ...context });
    // The same answer as an unknown session: the client learns nothing about why.
    throw new GateError("ERR_SESSION_NOT_FOUND", "session not found");
  }

  function checkVersionLock(request: IncomingMessage, session: ResolvedSession, headerVersion: string): void {
    // A request without the header is read as the session's own version (the header is how clients
    // repeat what was negotiated); one naming another version is refused, so the upstream only ever
    // sees the version it negotiated.
    if (request.headersDistinct[VERSION_HEADER] === undefined) return;
    if (headerVersion !== session.protocolVersion) {
      throw new GateError("ERR_PROTOCOL_VERSION_MISMATCH", "protocol version mismatch", {
        detail: "protocol-version-mismatch",
      });
    }
  }

  async function upstreamHeaders(
    context: McpContext,
    principal: Principal,
    own: Readonly<Record<string, string>>,
  ): Promise<Record<string, string>> {
    const [injected, assertion] = await Promise.all([
      injectedHeaders(context.upstream, principal),
      signer.sign(principal, { audience: assertionAudience(context.upstream) }),
    ]);
    return upstreamRequestHeaders(context.request.headers, {
      ...injected,
      ...own,
      "tenantgate-assertion": assertion,
    });
  }

  /**
   * upstreams[].inject: the caller's own vault entries in the upstream's headers. The owner is the
   * verified principal of this request and nothing else: no argument or header chooses whose entries
   * are read (THREATS C1). A missing entry refuses the request, naming the entry to enroll; nothing is
   * forwarded without it.
   */
  async function injectedHeaders(
    upstream: UpstreamConfig,
    principal: Principal,
  ): Promise<Record<string, string>> {
    const plan = injectionPlans.get(upstream.name);
    if (plan === undefined) return {};
    if (deps.vault === undefined) throw new GateError("ERR_INTERNAL", "injection without a vault");
    const { values, missing } = await deps.vault.reveal(ownerScope(principal), plan.entries);
    const [first] = missing;
    if (first !== undefined) {
      throw new GateError("ERR_CREDENTIAL_REQUIRED", "credential required", {
        detail: `credential-missing:${first}`,
        credential: first,
      });
    }
    return renderInjection(plan, values);
  }

  async function servePost(
    context: McpContext,
    caller: Principal | "anonymous",
    sessionId: string | undefined,
    version: string,
  ): Promise<void> {
    const { request, upstream } = context;
    if (!isJsonContentType(request.headers["content-type"])) {
      throw new GateError("ERR_MEDIA_TYPE_UNSUPPORTED", "content type refused", { detail: "content-type" });
    }
    const body = await readRequestBody(request, config.limits.maxBodyBytes);
    let payload: JsonRpcPayload;
    try {
      // 2025-03-26 is the only version with JSON-RPC batches; later ones refuse them (2025-06-18).
      payload = parseJsonRpcBody(body, {
        maxBatchSize: config.limits.maxBatchSize,
        allowBatch: version === "2025-03-26",
      });
    } catch (error) {
      return refuse(context.response, error, { upstream, clientAddress: context.clientAddress });
    }
    const id = firstRequestId(payload);
    draftOf(context.response).mcpMethod = mcpMethodOf(payload);
    const initializes = payload.messages.filter((m) => m.kind === "request" && m.method === "initialize");

    try {
      if (initializes.length > 0) {
        // MCP lifecycle: initialize is never part of a batch. A session id presented with it is
        // ignored, never adopted (THREATS S3): the new session gets a fresh id of the gateway's.
        if (payload.messages.length !== 1) {
          throw new GateError("ERR_BATCH_REFUSED", "initialize in a batch", {
            detail: "initialize-in-batch",
          });
        }
        return await initializeSession(context, caller, body, id);
      }
      if (sessionId === undefined) {
        // THREATS S2: never "the most recent session"; a request without an id belongs to none.
        throw new GateError("ERR_SESSION_REQUIRED", "session id required", { detail: "no-session-id" });
      }
      takeRateEarly(context, caller);
      const resolved = await resolveSession(sessionId, caller, upstream, context);
      noteSession(context.response, resolved.session, resolved.principal);
      checkVersionLock(request, resolved.session, version);
      await admitOwner(context, resolved.principal, resolved.session.sessionDigest);
      await guardTasks(context, resolved.principal, payload, "legacy");
      // Without the header the body was parsed as 2025-03-26 (batches allowed), but the request speaks
      // the session's version: a batch is refused unless that version is 2025-03-26 too.
      if (payload.batch && resolved.session.protocolVersion !== "2025-03-26") {
        throw new GateError("ERR_BATCH_REFUSED", "batch refused", { detail: "batches not allowed" });
      }
      const answer = await context.client.request({
        principal: resolved.principal,
        method: "POST",
        body: openListCursors(resolved.principal, upstream.name, body, payload),
        headers: await upstreamHeaders(context, resolved.principal, sessionHeaders(resolved.session)),
      });
      await relay(context, answer, resolved.session, sessionId, {
        cancelOnClientClose: false,
        hook: answerHook(context, resolved.principal, payload),
        // A tasks/list answer must be filtered: one too large to read is refused, never passed.
        mustInspect: payload.messages.some((m) => m.kind === "request" && m.method === "tasks/list"),
        principal: resolved.principal,
      });
    } catch (error) {
      refuse(context.response, error, { upstream, clientAddress: context.clientAddress, id });
    }
  }

  async function initializeSession(
    context: McpContext,
    caller: Principal | "anonymous",
    body: Buffer,
    id: EchoedId,
  ): Promise<void> {
    const { upstream } = context;
    // Anonymous mode: every new session gets its own throwaway principal (DESIGN invariant 2).
    const principal = caller === "anonymous" ? anonymousPrincipal() : caller;
    await admitOwner(context, caller === "anonymous" ? null : principal);
    const answer = await context.client.request({
      principal,
      method: "POST",
      body,
      headers: await upstreamHeaders(context, principal, {}),
    });
    if (answer.status === 401 || answer.status === 403) {
      answer.body.resume();
      throw new GateError("ERR_UPSTREAM_REFUSED", "upstream refused the gateway", {
        detail: `upstream-${answer.status}`,
      });
    }
    const contentType = headerText(answer.headers["content-type"]);
    // Not a successful initialize (an error status, or a JSON-RPC error below): relayed as it is, and
    // no session exists, so nothing names one.
    if (answer.status !== 200) return relayWithoutSession(context, answer);
    const upstreamSessionId = headerText(answer.headers[SESSION_HEADER]);
    // An upstream session the gateway turns down (below) belongs to no gateway session: nobody can
    // reach it again, so it is ended now, not left to the upstream's idle timeout (for a stdio
    // upstream, a process holding the principal's cap slot and credentials).
    const abandon = (protocolVersion: string | null): void => {
      if (upstreamSessionId === undefined || !UPSTREAM_SESSION_ID.test(upstreamSessionId)) return;
      endUpstreamSession(context, principal, upstreamSessionId, protocolVersion ?? DEFAULT_PROTOCOL_VERSION);
    };
    let result: Awaited<ReturnType<typeof readInitializeResult>>;
    try {
      result = await readInitializeResult(answer.body, {
        contentType,
        id,
        maxBytes: MAX_INITIALIZE_RESPONSE_BYTES,
        timeoutMs: INITIALIZE_RESPONSE_TIMEOUT_MS,
      });
    } catch (error) {
      abandon(null);
      throw error;
    }
    if (result.protocolVersion === null) {
      abandon(null);
      return writeBuffered(context, answer.status, answer.headers, result.raw, {});
    }

    const legacy = supportedByUpstream.get(upstream.name)?.legacy ?? [];
    if (!legacy.includes(result.protocolVersion)) {
      abandon(result.protocolVersion);
      throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "upstream negotiated an unsupported version", {
        detail: "negotiated-version-unsupported",
      });
    }
    if (upstreamSessionId !== undefined && !UPSTREAM_SESSION_ID.test(upstreamSessionId)) {
      throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "upstream session id unusable", {
        detail: "upstream-session-id-invalid",
      });
    }
    // The ownership record is written before the client learns the id (DESIGN invariant 3).
    let created: Awaited<ReturnType<SessionRegistry["create"]>>;
    try {
      const binding = deps.clientBinding;
      created = await sessions.create({
        principal,
        upstream: upstream.name,
        protocolVersion: result.protocolVersion,
        ...(binding !== undefined && binding.policy !== "off"
          ? {
              clientBinding: binding.fingerprinter.fingerprint(
                context.request.headers["user-agent"],
                context.clientAddress,
              ),
            }
          : {}),
        ...(upstreamSessionId !== undefined ? { upstreamSessionId } : {}),
      });
    } catch (error) {
      // No session exists (the store could not record one): the upstream's side is ended rather
      // than left for nobody, then the client gets the store's refusal.
      if (upstreamSessionId !== undefined) {
        endUpstreamSession(context, principal, upstreamSessionId, result.protocolVersion);
      }
      throw error;
    }
    const { sessionId, session } = created;
    noteSession(context.response, session, principal);
    if (upstreamSessionId !== undefined) {
      // An in-process upstream (stdio) learns which session its process serves, so a revocation
      // naming that session, or a kill switch newer than it, ends the process at once.
      context.client.bindSession?.(upstreamSessionId, {
        sessionDigest: session.sessionDigest,
        killGeneration: session.killGeneration,
        stillValid: async () => (await sessions.resolve(sessionId, principal, upstream.name)) !== null,
        expiresAt: session.expiresAt,
      });
    }
    // Sessions the cap removed are ended like a DELETE ends one: their open streams with them, and
    // their stdio processes (here, whether or not the bus takes the notice).
    for (const evicted of created.evicted) {
      revokeHere({ kind: "session", sessionDigest: evicted.sessionDigest });
      announceSessionEnd(evicted.sessionDigest);
      events.emit({
        type: "session.ended",
        by: "evicted",
        upstream: evicted.upstream,
        principal: evicted.owner,
        sessionDigest: evicted.sessionDigest,
      });
    }
    events.emit({
      type: "session.created",
      upstream: upstream.name,
      principal: session.owner,
      sessionDigest: session.sessionDigest,
    });
    const raw = isEventStream(contentType)
      ? await rewriteBuffered(result.raw, createEventIdCodec(eventIdKey, session.sessionDigest))
      : result.raw;
    writeBuffered(context, 200, answer.headers, raw, { [SESSION_HEADER]: sessionId });
  }

  /**
   * A modern (2026-07-28) request: self-contained, no session logic (Streamable HTTP 2026-07-28).
   * Nothing is minted or echoed; `Mcp-Session-Id` and `Last-Event-ID` never reach the upstream (they
   * are off the allowlist). The body is checked against its mirrored headers and forwarded as read;
   * the upstream receives exactly the header values that were checked. A client closing the response
   * stream cancels the request (2026-07-28 Cancellation), so the upstream call is aborted with it.
   */
  async function serveModern(
    context: McpContext,
    caller: Principal | "anonymous",
    version: string,
  ): Promise<void> {
    const { request, response, upstream } = context;
    if (request.method !== "POST") {
      // 2026-07-28 Backward Compatibility: GET and DELETE are 405 on a modern endpoint.
      throw new GateError("ERR_METHOD_NOT_ALLOWED", "method not allowed", { detail: "modern-get-delete" });
    }
    if (!isJsonContentType(request.headers["content-type"])) {
      throw new GateError("ERR_MEDIA_TYPE_UNSUPPORTED", "content type refused", { detail: "content-type" });
    }
    const body = await readRequestBody(request, config.limits.maxBodyBytes);
    let payload: JsonRpcPayload;
    try {
      payload = parseJsonRpcBody(body, { maxBatchSize: 1, allowBatch: false });
    } catch (error) {
      // Duplicate keys are a header/body disagreement in the modern era (THREATS M3): two parsers
      // could each read a different value behind the same headers.
      if (error instanceof GateError && error.detail === DUPLICATE_KEY_DETAIL) {
        throw new GateError("ERR_HEADER_MISMATCH", "header mismatch", {
          detail: "duplicate-key",
          cause: error,
        });
      }
      throw error;
    }
    draftOf(response).mcpMethod = mcpMethodOf(payload);
    const [message] = payload.messages;
    if (!message) throw new GateError("ERR_REQUEST_INVALID", "empty request", { detail: "empty" });
    const id = message.kind === "request" ? message.id : null;
    let checked: ReturnType<typeof checkModernRequest>;
    try {
      checked = checkModernRequest(request.headersDistinct, message, version);
    } catch (error) {
      return refuse(response, error, { upstream, clientAddress: context.clientAddress, id });
    }
    // Anonymous: a throwaway principal per request; there is no session to keep it in.
    const principal = caller === "anonymous" ? anonymousPrincipal() : caller;
    draftOf(response).principal = principal;
    try {
      await admitOwner(context, caller === "anonymous" ? null : principal);
    } catch (error) {
      return refuse(response, error, { upstream, clientAddress: context.clientAddress, id });
    }
    // Named tasks: an authenticated caller must own each; an anonymous caller must hold the
    // capability the gateway minted for it, which is translated to the upstream's id here.
    let translated: AnonymousTaskTranslation | undefined;
    try {
      await guardTasks(context, principal, payload, "modern", caller === "anonymous");
      if (caller === "anonymous" && message.kind !== "response") {
        translated = await translateAnonymousTasks(context, principal, message.method, message.params);
      }
    } catch (error) {
      return refuse(response, error, { upstream, clientAddress: context.clientAddress, id });
    }
    // checkModernRequest refused responses already; this narrows the type.
    if (message.kind === "response")
      throw new GateError("ERR_REQUEST_INVALID", "response", { detail: "modern-response" });
    // Anonymous callers have no identity to bind state to (each request is a new throwaway principal):
    // their requestState is bound to the upstream and the request only, a capability like their tasks.
    const stateBinding: RequestStateBinding = {
      principal: caller === "anonymous" ? ANONYMOUS_STATE_OWNER : principal,
      upstream: upstream.name,
      method: message.method,
      target: requestTarget(message.params),
    };
    // A task's requests carry the state the task was handed out with: bound to the task, by the id
    // the client holds (a capability for anonymous callers).
    const presentedTaskId = isRecord(message.params) ? message.params["taskId"] : undefined;
    const requestBinding: RequestStateBinding =
      TASK_METHODS.has(message.method) && typeof presentedTaskId === "string"
        ? { ...stateBinding, method: TASK_STATE_METHOD, target: presentedTaskId }
        : stateBinding;
    let forwarded = body;
    let mirrored = checked.mirroredHeaders;
    if (translated !== undefined && translated.params !== undefined) {
      const parsed = JSON.parse(body.toString("utf8")) as { params: unknown };
      parsed.params = translated.params;
      forwarded = Buffer.from(JSON.stringify(parsed));
      if (translated.mcpName !== undefined) mirrored = { ...mirrored, "mcp-name": translated.mcpName };
    }
    if (message.kind === "request" && isRecord(message.params) && "requestState" in message.params) {
      // The retry of a multi-round-trip request: only state the gateway sealed for this caller,
      // upstream and request opens (THREATS M4); the upstream receives its own value back.
      let state: string;
      try {
        state = openRequestState(deps.keyring, requestBinding, message.params["requestState"], Date.now());
      } catch (error) {
        return refuse(response, error, { upstream, clientAddress: context.clientAddress, id });
      }
      const parsed = JSON.parse(forwarded.toString("utf8")) as { params: Record<string, unknown> };
      parsed.params["requestState"] = state;
      forwarded = Buffer.from(JSON.stringify(parsed));
    }
    const abort = new AbortController();
    response.once("close", () => {
      if (!response.writableFinished) abort.abort();
    });
    const answer = await context.client.request({
      principal,
      method: "POST",
      body: forwarded,
      headers: await upstreamHeaders(context, principal, { ...mirrored, [VERSION_HEADER]: version }),
      signal: abort.signal,
    });
    if (answer.status === 401 || answer.status === 403) {
      answer.body.resume();
      throw new GateError("ERR_UPSTREAM_REFUSED", "upstream refused the gateway", {
        detail: `upstream-${answer.status}`,
      });
    }
    const headers = relayedHeaders(answer);
    const contentType = headerText(answer.headers["content-type"]);
    const toCapability =
      translated?.toCapability ?? (caller === "anonymous" ? new Map<string, string>() : undefined);
    const hook = answerHook(context, principal, payload, stateBinding, toCapability);
    if (isJsonContentType(contentType) && answer.status === 200)
      return relayJson(response, answer, headers, hook);
    let stream: Readable = answer.body;
    if (isEventStream(contentType)) {
      stream = answer.body.pipe(inspectSse(hook));
      answer.body.once("error", (error) => stream.destroy(error));
      headers["x-accel-buffering"] = "no";
      // A long-lived answer (subscriptions/listen) ends when the token it was opened with expires,
      // and when its principal is revoked or the kill switch fires, on whichever replica that happens.
      const sse = stream;
      const end = () => {
        openStreams.delete(response);
        sse.unpipe(response);
        answer.body.destroy();
        response.end();
      };
      openStreams.set(response, {
        sessionDigest: null,
        principalDigest: principalDigest(ownerScope(principal)),
        killGeneration: null,
        stillValid: null,
        endsAtShutdown: false,
        end,
      });
      endStreamAt(response, principal.expiresAt ?? Number.POSITIVE_INFINITY, end);
    }
    try {
      const piped = pipeToClient(response, answer.status, headers, stream, answer.body, true);
      // After the head is written (pipeToClient writes it at once): ending the stream is then an end.
      catchUpOnRevocations(response);
      await piped;
    } finally {
      openStreams.delete(response);
    }
  }

  /**
   * An anonymous modern request naming tasks names them by capability: each must be one the gateway
   * minted for this upstream (else -32602, as an unknown task), and is replaced by the upstream's id
   * in what is forwarded, Mcp-Name included.
   */
  async function translateAnonymousTasks(
    context: McpContext,
    principal: Principal,
    method: string,
    params: unknown,
  ): Promise<AnonymousTaskTranslation> {
    const named = tasksNamedBy(method, params);
    if (named.kind !== "tasks") return { toCapability: new Map() };
    const upstreamName = context.upstream.name;
    const toUpstream = new Map<string, string>();
    // Every capability is looked up before any is judged, so the reads do not depend on which fails.
    const resolved = await Promise.all(
      named.taskIds.map(async (capability) => {
        const upstreamId = await capabilities.resolve(upstreamName, capability);
        const owned =
          upstreamId !== null && (await tasks.owns(capabilityOwner(capability), upstreamName, upstreamId));
        return { capability, upstreamId: owned ? upstreamId : null };
      }),
    );
    for (const { capability, upstreamId } of resolved) {
      if (upstreamId === null) {
        events.emit({
          type: "task.denied",
          reason: "not-owned",
          upstream: upstreamName,
          principal: ownerScope(principal),
          ...(context.clientAddress !== undefined ? { clientAddress: context.clientAddress } : {}),
        });
        throw new GateError("ERR_TASK_NOT_FOUND", "unknown task", { detail: "task-capability-unknown" });
      }
      toUpstream.set(capability, upstreamId);
    }
    const rewrite = (value: unknown, depth: number): unknown => {
      if (depth > 4) return value;
      if (typeof value === "string") return toUpstream.get(value) ?? value;
      if (Array.isArray(value)) return value.map((entry) => rewrite(entry, depth + 1));
      if (!isRecord(value)) return value;
      return Object.fromEntries(
        Object.entries(value).map(([key, entry]) =>
          key === "taskId" || key === "tasksStatus" || key === "taskIds" || isRecord(entry)
            ? [key, rewrite(entry, depth + 1)]
            : [key, entry],
        ),
      );
    };
    const translatedParams = rewrite(params, 0);
    const taskId = isRecord(translatedParams) ? translatedParams["taskId"] : undefined;
    return {
      params: translatedParams,
      ...(typeof taskId === "string" ? { mcpName: encodeMirrored(taskId) } : {}),
      toCapability: new Map([...toUpstream].map(([capability, upstreamId]) => [upstreamId, capability])),
    };
  }

  /**
   * `tasks/list` cursors the gateway handed out are sealed (see answerHook); a request's cursor must
   * open for the caller and upstream, and the upstream receives its own. Throws
   * ERR_SEALED_VALUE_INVALID for any other cursor. The body is rewritten only when it has one.
   */
  function openListCursors(
    principal: Principal,
    upstreamName: string,
    body: Buffer,
    payload: JsonRpcPayload,
  ): Buffer {
    const withCursor = payload.messages.some(
      (m) => m.kind === "request" && m.method === "tasks/list" && isRecord(m.params) && "cursor" in m.params,
    );
    if (!withCursor) return body;
    const binding = listCursorBinding(principal, upstreamName);
    const open = (message: unknown): unknown => {
      if (!isRecord(message) || message["method"] !== "tasks/list" || !isRecord(message["params"]))
        return message;
      const params = message["params"];
      if (!("cursor" in params)) return message;
      return {
        ...message,
        params: { ...params, cursor: openRequestState(deps.keyring, binding, params["cursor"], Date.now()) },
      };
    };
    const parsed: unknown = JSON.parse(body.toString("utf8"));
    return Buffer.from(JSON.stringify(Array.isArray(parsed) ? parsed.map(open) : open(parsed)));
  }

  /**
   * Refuses, before anything is forwarded, a request naming a task the caller does not own (THREATS
   * T1, T3): the gateway answers -32602 itself, the same for a foreign task and one without an owner
   * record, after the same one read per task id. In the modern era the 2025-11-25-only task methods
   * are -32601.
   */
  async function guardTasks(
    context: McpContext,
    principal: Principal,
    payload: JsonRpcPayload,
    era: "legacy" | "modern",
    capabilitiesOnly = false,
  ): Promise<void> {
    for (const message of payload.messages) {
      if (message.kind !== "request" && message.kind !== "notification") continue;
      const denied = (reason: "not-owned" | "malformed" | "modern-method") =>
        events.emit({
          type: "task.denied",
          reason,
          upstream: context.upstream.name,
          principal: ownerScope(principal),
          ...(context.clientAddress !== undefined ? { clientAddress: context.clientAddress } : {}),
        });
      if (era === "modern" && LEGACY_ONLY_TASK_METHODS.has(message.method)) {
        denied("modern-method");
        throw new GateError("ERR_METHOD_NOT_FOUND", "method not found", { detail: "legacy-task-method" });
      }
      const named = tasksNamedBy(message.method, message.params);
      if (named.kind === "none") continue;
      if (named.kind === "malformed") {
        denied("malformed");
        throw new GateError("ERR_TASK_NOT_FOUND", "unknown task", { detail: "task-id-malformed" });
      }
      if (capabilitiesOnly) continue;
      const owned = await Promise.all(
        named.taskIds.map((taskId) => tasks.owns(principal, context.upstream.name, taskId)),
      );
      if (owned.includes(false)) {
        denied("not-owned");
        throw new GateError("ERR_TASK_NOT_FOUND", "unknown task", { detail: "task-not-owned" });
      }
    }
  }

  /**
   * What the gateway does with each message the upstream answers with: a task it creates is claimed
   * for the caller before the message goes on (DESIGN invariant 3); one that already belongs to
   * someone else is withheld and replaced by an error (THREATS T7); a `tasks/list` answer keeps only
   * the caller's tasks.
   */
  function answerHook(
    context: McpContext,
    principal: Principal,
    payload: JsonRpcPayload | null,
    stateBinding?: RequestStateBinding,
    /** Anonymous modern callers: upstream task id -> the capability the client knows it by. */
    toCapability?: Map<string, string>,
  ): MessageHook {
    const listIds = new Set<unknown>();
    const requestIds = new Set<unknown>();
    for (const message of payload?.messages ?? []) {
      if (message.kind !== "request") continue;
      requestIds.add(message.id);
      if (message.method === "tasks/list") listIds.add(message.id);
    }
    // A response to no request of this payload (on a GET stream: one the upstream replays after a
    // resumption) may be a tasks/list answer: it is filtered as one, since nothing says otherwise.
    const mayBeList = (id: unknown): boolean => listIds.has(id) || !requestIds.has(id);
    const upstreamName = context.upstream.name;
    const withheld = (id: unknown): Record<string, unknown> => ({
      jsonrpc: "2.0",
      id: id ?? null,
      error: { code: -32603, message: "upstream unavailable", data: { code: "ERR_UPSTREAM_UNAVAILABLE" } },
    });
    return async (message) => {
      const answered = await judgeAnswer(message);
      if (answered === DROP) return DROP;
      const final = answered ?? message;
      const sealed = sealStateIn(final);
      if (sealed !== undefined) return sealed;
      return answered;
    };

    /**
     * A `requestState` the upstream hands out (an input_required result, or a task's) leaves sealed:
     * to the request's method and target for a multi-round-trip result, to the task (by the id the
     * client holds) for a task's, so it opens only on the retry or on that task's own requests.
     */
    function sealStateIn(message: Record<string, unknown>): Record<string, unknown> | undefined {
      const result = message["result"];
      if (stateBinding === undefined || !isRecord(result) || typeof result["requestState"] !== "string") {
        return undefined;
      }
      const taskId = result["taskId"];
      const binding =
        result["resultType"] === "input_required" || typeof taskId !== "string"
          ? stateBinding
          : { ...stateBinding, method: TASK_STATE_METHOD, target: taskId };
      return {
        ...message,
        result: {
          ...result,
          requestState: sealRequestState(deps.keyring, binding, result["requestState"], Date.now()),
        },
      };
    }

    /** Claims, withholds, translates or filters: the message to send instead, or undefined to keep it. */
    async function judgeAnswer(
      message: Record<string, unknown>,
    ): Promise<Record<string, unknown> | undefined | typeof DROP> {
      const result = message["result"];
      if (message["method"] === TASK_STATUS_NOTIFICATION) {
        // A task's status goes only to its owner: a careless upstream pushing other tasks' statuses
        // on a stream must not show B anything of A's task (THREATS T1).
        const params = message["params"];
        if (!isRecord(params)) return DROP;
        const taskId = params["taskId"];
        if (typeof taskId !== "string") return DROP;
        if (toCapability !== undefined) {
          const capability = toCapability.get(taskId);
          return capability === undefined ? DROP : { ...message, params: { ...params, taskId: capability } };
        }
        return (await tasks.owns(principal, upstreamName, taskId)) ? undefined : DROP;
      }
      const created = taskCreatedBy(message);
      if (created !== null) {
        if (!isPoliceableTaskId(created.taskId)) {
          events.emit({ type: "upstream.unavailable", reason: "invalid-response", upstream: upstreamName });
          return withheld(message["id"]);
        }
        if (toCapability !== undefined && isRecord(result) && result["resultType"] === "task") {
          // Anonymous: the client gets a capability, never the upstream's id; the upstream's id is
          // owned by the capability's principal, so no one can name it directly.
          const ttl = Math.min(
            Math.max(created.ttlMs ?? TASK_CAPABILITY_DEFAULT_TTL_MS, 1_000),
            TASK_CAPABILITY_MAX_TTL_MS,
          );
          const { capability, owner } = await capabilities.mint(upstreamName, created.taskId, ttl);
          if ((await tasks.claim(owner, upstreamName, created.taskId, ttl)) === "foreign") {
            events.emit({ type: "task.conflict", upstream: upstreamName });
            return withheld(message["id"]);
          }
          events.emit({ type: "task.claimed", upstream: upstreamName, principal: ownerScope(owner) });
          // Later messages of this answer naming the task (its status on the same stream) use it too.
          toCapability.set(created.taskId, capability);
          return { ...message, result: { ...result, taskId: capability } };
        }
        const outcome = await tasks.claim(principal, upstreamName, created.taskId, created.ttlMs);
        if (outcome === "foreign") {
          events.emit({ type: "task.conflict", upstream: upstreamName, principal: ownerScope(principal) });
          return withheld(message["id"]);
        }
        events.emit({ type: "task.claimed", upstream: upstreamName, principal: ownerScope(principal) });
        return undefined;
      }
      if (toCapability !== undefined && toCapability.size > 0) {
        // Answers about a translated task name it by the capability the client holds.
        const carrier = isRecord(result) ? "result" : isRecord(message["params"]) ? "params" : undefined;
        const fields = carrier ? (message[carrier] as Record<string, unknown>) : undefined;
        const upstreamId = fields?.["taskId"];
        if (carrier && typeof upstreamId === "string" && toCapability.has(upstreamId)) {
          return { ...message, [carrier]: { ...fields, taskId: toCapability.get(upstreamId) } };
        }
      }
      if ("id" in message && !("method" in message) && mayBeList(message["id"])) {
        const listed = listedTasks(message);
        if (listed === null) return undefined;
        const keep = await Promise.all(
          listed.map(async (task) => {
            const taskId = (task as { taskId?: unknown } | null)?.taskId;
            return typeof taskId === "string" && (await tasks.owns(principal, upstreamName, taskId));
          }),
        );
        const listResult = message["result"] as Record<string, unknown>;
        const cursor = listResult["nextCursor"];
        return {
          ...message,
          result: {
            ...listResult,
            tasks: listed.filter((_, index) => keep[index]),
            // An upstream's cursor may be a task id (the SDK's task store uses the last one listed):
            // it leaves sealed to the caller and upstream, and opens only on the caller's next page.
            ...(typeof cursor === "string"
              ? {
                  nextCursor: sealRequestState(
                    deps.keyring,
                    listCursorBinding(principal, upstreamName),
                    cursor,
                    Date.now(),
                  ),
                }
              : {}),
          },
        };
      }
      return undefined;
    }
  }

  /** Best effort, not awaited: the upstream's session for a gateway session that never came to be. */
  function endUpstreamSession(
    context: McpContext,
    principal: Principal,
    upstreamSessionId: string,
    protocolVersion: string,
  ): void {
    upstreamHeaders(context, principal, {
      [SESSION_HEADER]: upstreamSessionId,
      [VERSION_HEADER]: protocolVersion,
    })
      .then((headers) => context.client.request({ method: "DELETE", headers, principal }))
      .then((answer) => answer.body.resume())
      .catch(() => undefined);
  }

  async function serveStream(
    context: McpContext,
    resolved: { session: ResolvedSession; principal: Principal },
    sessionId: string,
  ): Promise<void> {
    const { request, response } = context;
    const codec = createEventIdCodec(eventIdKey, resolved.session.sessionDigest);
    const own = sessionHeaders(resolved.session);
    const lastEventIds = request.headersDistinct["last-event-id"];
    if (lastEventIds !== undefined) {
      const [presented] = lastEventIds;
      const upstreamEventId = lastEventIds.length === 1 && presented ? codec.unwrap(presented) : null;
      if (upstreamEventId === null) {
        // Another session's event id, a tampered one, or garbage (THREATS S12): it is not forwarded,
        // so the upstream replays nothing; the caller gets a fresh stream of its own session.
        events.emit({
          type: "stream.event-id-refused",
          reason: "malformed",
          upstream: context.upstream.name,
          sessionDigest: resolved.session.sessionDigest,
          principal: resolved.session.owner,
        });
      } else {
        own["last-event-id"] = upstreamEventId;
      }
    }
    // A GET stream ends when its client leaves: nothing else reads it.
    const abort = new AbortController();
    response.once("close", () => abort.abort());
    const answer = await context.client.request({
      principal: resolved.principal,
      method: "GET",
      headers: await upstreamHeaders(context, resolved.principal, own),
      signal: abort.signal,
    });
    await relay(context, answer, resolved.session, sessionId, {
      cancelOnClientClose: true,
      hook: answerHook(context, resolved.principal, null),
      principal: resolved.principal,
    });
  }

  async function endSession(
    context: McpContext,
    resolved: { session: ResolvedSession; principal: Principal },
    sessionId: string,
  ): Promise<void> {
    const { session, principal } = resolved;
    // DELETE ends the session on both sides. The gateway's side is ended whatever the upstream says
    // (an upstream may answer 405 to DELETE, or be gone): after this, the id reaches nothing.
    if (session.upstreamSessionId !== null) {
      try {
        const answer = await context.client.request({
          principal,
          method: "DELETE",
          headers: await upstreamHeaders(context, principal, sessionHeaders(session)),
        });
        answer.body.resume();
      } catch {
        // Reported below with the session's end; the client's intent is honoured regardless.
        events.emit({ type: "upstream.unavailable", reason: "unreachable", upstream: context.upstream.name });
      }
    }
    const ended = await sessions.end(sessionId, principal, context.upstream.name);
    if (!ended) throw new GateError("ERR_SESSION_NOT_FOUND", "session not found");
    // Streams of the session end with it: on this replica now, on the others through the bus.
    endStreamsOf(session.sessionDigest);
    announceSessionEnd(session.sessionDigest);
    events.emit({
      type: "session.ended",
      by: "client",
      upstream: context.upstream.name,
      principal: session.owner,
      sessionDigest: session.sessionDigest,
    });
    // As MCP servers answer a DELETE: 200 and no body (it is not a JSON-RPC exchange).
    context.response.writeHead(200, { "cache-control": "no-store", "content-length": "0" }).end();
  }

  /**
   * Passes an upstream answer to the client: status, allowlisted headers, and the body as it arrives
   * (SSE event ids wrapped for this session). The upstream's 401/403 is never relayed (THREATS A4).
   * An upstream 404 for a session that has an upstream id means the upstream forgot it: the
   * gateway's session ends too, and the client is told 404 so that it re-initializes.
   */
  async function relay(
    context: McpContext,
    answer: UpstreamResponse,
    session: ResolvedSession,
    sessionId: string | undefined,
    options: {
      cancelOnClientClose: boolean;
      hook: MessageHook;
      mustInspect?: boolean;
      principal?: Principal;
    },
  ): Promise<void> {
    const { response, upstream } = context;
    if (answer.status === 401 || answer.status === 403) {
      answer.body.resume();
      throw new GateError("ERR_UPSTREAM_REFUSED", "upstream refused the gateway", {
        detail: `upstream-${answer.status}`,
      });
    }
    if (answer.status === 404 && session.upstreamSessionId !== null && sessionId !== undefined) {
      answer.body.resume();
      events.emit({
        type: "session.ended",
        by: "upstream-gone",
        upstream: upstream.name,
        principal: session.owner,
        sessionDigest: session.sessionDigest,
      });
      await sessions.revoke(sessionId).catch(() => undefined);
      endStreamsOf(session.sessionDigest);
      announceSessionEnd(session.sessionDigest);
      throw new GateError("ERR_SESSION_NOT_FOUND", "session not found");
    }
    const contentType = headerText(answer.headers["content-type"]);
    const headers = relayedHeaders(answer);
    if (isJsonContentType(contentType) && answer.status === 200) {
      return relayJson(response, answer, headers, options.hook, options.mustInspect ?? false);
    }
    let body: Readable = answer.body;
    if (isEventStream(contentType)) {
      const inspected = answer.body.pipe(inspectSse(options.hook));
      body = inspected.pipe(rewriteSseEventIds(createEventIdCodec(eventIdKey, session.sessionDigest)));
      answer.body.once("error", (error) => inspected.destroy(error));
      inspected.once("error", (error) => body.destroy(error));
      // No proxy buffering between here and the client: events must arrive as they happen.
      headers["x-accel-buffering"] = "no";
    }
    // A stream never outlives its session's absolute lifetime nor the token it was opened with.
    const deadline = Math.min(session.expiresAt, options.principal?.expiresAt ?? Number.POSITIVE_INFINITY);
    // An open stream (a GET stream, or a POST answered with one) is activity: the session does not
    // go idle under it (sessions.idleTimeout). It stops when the stream is ended, even if the client
    // has not read the end yet.
    const streamed = options.cancelOnClientClose || body !== answer.body;
    const keepAlive = streamed
      ? setInterval(
          () => void sessions.keepAlive(session).catch(() => undefined),
          Math.max(100, Math.min(Math.floor(config.sessions.idleTimeoutMs / 10), 60_000)),
        )
      : undefined;
    if (keepAlive !== undefined) {
      keepAlive.unref();
      response.once("close", () => clearInterval(keepAlive));
    }
    if (streamed) {
      // A GET stream, or a POST answered with a stream (a long-running tool): both are open streams
      // that a revocation of their session or principal, or the kill switch, ends (THREATS S13).
      const stream = body;
      const end = options.cancelOnClientClose
        ? () => {
            // A GET stream: the upstream side is dropped.
            clearInterval(keepAlive);
            openStreams.delete(response);
            stream.unpipe(response);
            answer.body.destroy();
            response.end();
          }
        : () => {
            // A POST's answer: the client's side ends; the upstream's answer is still read to its
            // end, as when a client leaves (a disconnect is not a cancellation).
            clearInterval(keepAlive);
            openStreams.delete(response);
            stream.unpipe(response);
            stream.resume();
            response.end();
          };
      const streamPrincipal = options.principal;
      openStreams.set(response, {
        sessionDigest: session.sessionDigest,
        principalDigest: principalDigest(session.owner),
        killGeneration: session.killGeneration,
        stillValid:
          streamPrincipal === undefined || sessionId === undefined
            ? async () => false
            : async () => (await sessions.resolve(sessionId, streamPrincipal, upstream.name)) !== null,
        endsAtShutdown: options.cancelOnClientClose,
        end,
      });
      endStreamAt(response, deadline, end);
    }
    const piped = pipeToClient(
      response,
      answer.status,
      headers,
      body,
      answer.body,
      options.cancelOnClientClose,
    );
    // After the head is written (pipeToClient writes it at once): ending the stream is then an end.
    catchUpOnRevocations(response);
    await piped;
    openStreams.delete(response);
  }

  /**
   * A JSON answer is read whole (bounded) and inspected before the client sees it. One larger than
   * the bound is passed on unread: nothing in it is claimed, so a task id it might carry is nobody's
   * and every request naming it is refused (fail closed).
   */
  async function relayJson(
    response: ServerResponse,
    answer: UpstreamResponse,
    headers: Record<string, string>,
    hook: MessageHook,
    mustInspect = false,
  ): Promise<void> {
    const chunks: Buffer[] = [];
    let size = 0;
    const iterator = answer.body[Symbol.asyncIterator]();
    for (;;) {
      const next = await iterator.next();
      if (next.done) break;
      const chunk = next.value as Buffer;
      size += chunk.byteLength;
      chunks.push(chunk);
      if (size > MAX_INSPECTED_JSON_BYTES) {
        if (mustInspect) {
          answer.body.destroy();
          throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "upstream answer too large", {
            detail: "invalid-response-too-large",
          });
        }
        response.writeHead(answer.status, headers);
        for (const held of chunks) response.write(held);
        const rest = Readable.from({ [Symbol.asyncIterator]: () => iterator });
        return pipeToClient(response, answer.status, headers, rest, answer.body, false, true);
      }
    }
    const body = await inspectJson(Buffer.concat(chunks), hook);
    headers["content-length"] = String(body.byteLength);
    if (response.destroyed) return;
    response.writeHead(answer.status, headers);
    response.end(body);
  }

  function relayWithoutSession(context: McpContext, answer: UpstreamResponse): Promise<void> {
    const headers = relayedHeaders(answer);
    return pipeToClient(context.response, answer.status, headers, answer.body, answer.body, false);
  }

  function writeBuffered(
    context: McpContext,
    status: number,
    upstreamHeaderSet: UpstreamResponse["headers"],
    raw: Buffer,
    own: Readonly<Record<string, string>>,
  ): void {
    const headers = clientResponseHeaders(upstreamHeaderSet, own);
    headers["content-length"] = String(raw.byteLength);
    context.response.writeHead(status, headers);
    context.response.end(raw);
  }

  return {
    handle(request, response) {
      inFlight += 1;
      const tracker = trackRequest(request);
      drafts.set(response, tracker.draft);
      // From before any check: a revocation heard after this point is replayed on the request's stream.
      missedSignals.set(response, []);
      let counted = true;
      const done = () => {
        if (!counted) return;
        counted = false;
        inFlight -= 1;
        missedSignals.delete(response);
        const record = tracker.finish(response);
        if (record === undefined || deps.onRequestDone === undefined) return;
        try {
          deps.onRequestDone(record);
        } catch {
          // An access log or a metric must never turn into a failed or crashed request.
        }
      };
      response.once("close", done);
      response.once("finish", done);
      route(request, response).catch((error: unknown) => {
        // Every path above answers its own errors; this is the last line for a bug, never a crash.
        refuse(response, error, {});
      });
    },
    drain() {
      draining = true;
    },
    get inFlight() {
      return inFlight;
    },
    endStreams() {
      // GET streams only: a streamed answer to a POST is a request in flight, which shutdown lets finish.
      endStreamsWhere((stream) => stream.endsAtShutdown);
    },
    applyRevocation: revokeHere,
    get openStreamCount() {
      return openStreams.size;
    },
  };
}

/** Ends a response at `deadline` (epoch ms) unless it has closed by then; nothing for an infinite one. */
function endStreamAt(response: ServerResponse, deadline: number, end: () => void): void {
  if (!Number.isFinite(deadline)) return;
  // setTimeout holds at most 2^31-1 ms; a later deadline is re-armed when that fires.
  const arm = () => {
    const wait = Math.min(Math.max(deadline - Date.now(), 0), 2 ** 31 - 1);
    const timer = setTimeout(() => {
      if (response.writableEnded || response.destroyed) return;
      if (Date.now() < deadline) arm();
      else end();
    }, wait);
    timer.unref();
    response.once("close", () => clearTimeout(timer));
  };
  arm();
}

/**
 * Writes the upstream's answer to the client as it arrives. When the client leaves first, a POST's
 * upstream response is still read to its end (2025-11-25 transports: a disconnect is not a
 * cancellation, and the upstream must be able to finish and free its connection); a GET stream is
 * dropped.
 */
function pipeToClient(
  response: ServerResponse,
  status: number,
  headers: Record<string, string>,
  body: Readable,
  source: Readable,
  cancelOnClientClose: boolean,
  headWritten = false,
): Promise<void> {
  return new Promise((resolve) => {
    if (response.destroyed) {
      if (cancelOnClientClose) source.destroy();
      else source.resume();
      resolve();
      return;
    }
    if (!headWritten) response.writeHead(status, headers);
    if (typeof response.flushHeaders === "function") response.flushHeaders();
    let settled = false;
    const settle = () => {
      if (settled) return;
      settled = true;
      resolve();
    };
    body.on("error", () => {
      // The upstream broke mid-answer: the client sees the response end abruptly, which is what a
      // broken upstream connection looks like; nothing about the failure is written to it.
      response.destroy();
      settle();
    });
    response.once("close", () => {
      if (!response.writableFinished) {
        body.unpipe(response);
        if (cancelOnClientClose) source.destroy();
        else {
          source.on("error", () => undefined);
          if (body !== source) body.resume();
          source.resume();
        }
      }
      settle();
    });
    response.once("finish", settle);
    body.pipe(response);
  });
}

/**
 * The client-facing headers of an upstream answer. When they are refused (a repeated content type),
 * the answer's body is still read to its end, so the upstream connection is freed, not held forever.
 */
function relayedHeaders(answer: UpstreamResponse): Record<string, string> {
  try {
    return clientResponseHeaders(answer.headers, {});
  } catch (error) {
    answer.body.on("error", () => undefined);
    answer.body.resume();
    throw error;
  }
}

/** Reads a POST's body only to echo its JSON-RPC id in the -32022 answer; any flaw gives null. */
async function readIdForEcho(request: IncomingMessage): Promise<EchoedId> {
  try {
    const body = await readRequestBody(request, 64 * 1024);
    return firstRequestId(parseJsonRpcBody(body, { maxBatchSize: 1, allowBatch: false }));
  } catch {
    return null;
  }
}

function sessionHeaders(session: ResolvedSession): Record<string, string> {
  const headers: Record<string, string> = { [VERSION_HEADER]: session.protocolVersion };
  if (session.upstreamSessionId !== null) headers[SESSION_HEADER] = session.upstreamSessionId;
  return headers;
}

/**
 * The `aud` of assertions sent to an upstream: its own URL, the address it knows itself by, so an
 * assertion captured at one upstream is refused by every other (docs/decisions.md).
 */
export function assertionAudience(upstream: UpstreamConfig): string {
  return upstream.transport === "http" ? upstream.url : `urn:tenantgate:upstream:${upstream.name}`;
}

/**
 * What an upstream speaks through the gateway: the versions it declares (`protocolVersions`) that
 * the gateway can police. Undeclared and not discovered: every legacy version and no modern one (a
 * modern request then gets -32022 and SDK v2 clients fall back to initialize).
 */
export function versionsOf(upstream: UpstreamConfig): SupportedVersions {
  const legacyAll: readonly string[] = GATEWAY_PROTOCOL_VERSIONS.legacy;
  const modernAll: readonly string[] = GATEWAY_PROTOCOL_VERSIONS.modern;
  const declared = upstream.protocolVersions;
  if (declared === undefined) {
    // A command upstream's modern requests are the bridge's to serve, when it is told to.
    const bridged = upstream.transport === "stdio" && upstream.stdio.modern === "per-principal";
    return { legacy: [...legacyAll], modern: bridged ? [...modernAll] : [] };
  }
  return {
    legacy: legacyAll.filter((v) => declared.includes(v)),
    modern: modernAll.filter((v) => declared.includes(v)),
  };
}

function refusalReason(error: GateError): RequestRefusalReason {
  switch (error.code) {
    case "ERR_HOST_FORBIDDEN":
      return "host-forbidden";
    case "ERR_ORIGIN_FORBIDDEN":
      return "origin-forbidden";
    case "ERR_BODY_TOO_LARGE":
      return "body-too-large";
    case "ERR_HEADERS_TOO_LARGE":
      return "headers-too-large";
    case "ERR_BATCH_REFUSED":
      return "batch-refused";
    case "ERR_MEDIA_TYPE_UNSUPPORTED":
      return "media-type";
    case "ERR_NOT_ACCEPTABLE":
      return "not-acceptable";
    case "ERR_METHOD_NOT_ALLOWED":
      return "method-not-allowed";
    case "ERR_PROTOCOL_VERSION_MISMATCH":
      return "protocol-version-mismatch";
    case "ERR_HEADER_MISMATCH":
      return "header-mismatch";
    case "ERR_SEALED_VALUE_INVALID":
      return "request-state";
    case "ERR_SESSION_LIMIT":
      return "session-limit";
    case "ERR_CREDENTIAL_REQUIRED":
      return "credential-missing";
    case "ERR_RATE_LIMITED":
      return "rate-limited";
    case "ERR_OVERLOADED":
      return "cap-global";
    case "ERR_CONNECTION_LIMIT":
      return error.detail === "cap-principal" || error.detail === "cap-session" ? error.detail : "cap-ip";
    case "ERR_SESSION_REQUIRED":
      return "session-required";
    case "ERR_NOT_FOUND":
      return "no-route";
    case "ERR_SHUTTING_DOWN":
      return "shutting-down";
    case "ERR_REQUEST_INVALID":
      return error.detail === "query-string" ? "query-string" : "request-invalid";
    default:
      return "internal";
  }
}

function upstreamFailureOf(error: GateError): UpstreamFailureReason {
  const detail = error.detail ?? "";
  if (detail.includes("TIMEOUT") || detail.endsWith("-timeout")) return "timeout";
  if (detail.startsWith("initialize-") || detail.includes("invalid") || detail.includes("unsupported")) {
    return "invalid-response";
  }
  return "unreachable";
}

function headerText(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function isEventStream(contentType: string | undefined): boolean {
  return mediaTypeOf(contentType) === "text/event-stream";
}

interface AnonymousTaskTranslation {
  /** The params to forward, capabilities replaced by upstream ids; undefined when nothing was named. */
  readonly params?: unknown;
  /** The Mcp-Name to forward for a task method (the upstream's id, encoded). */
  readonly mcpName?: string;
  readonly toCapability: Map<string, string>;
}

const TASK_CAPABILITY_DEFAULT_TTL_MS = 24 * 60 * 60 * 1000;
const TASK_STATUS_NOTIFICATION = "notifications/tasks/status";
/** The `method` a task's requestState is bound to, whichever request carries it. */
const TASK_STATE_METHOD = "(task)";
const TASK_CAPABILITY_MAX_TTL_MS = 7 * 24 * 60 * 60 * 1000;

/** What a `tasks/list` cursor is sealed to: the caller and the upstream. */
function listCursorBinding(principal: Principal, upstream: string): RequestStateBinding {
  return { principal, upstream, method: "(tasks/list cursor)", target: "(all)" };
}

/** The owner requestState of anonymous callers is sealed to: there is no identity to bind. */
const ANONYMOUS_STATE_OWNER: Principal = Object.freeze({
  kind: "anonymous",
  issuer: ANONYMOUS_ISSUER,
  subject: "anonymous",
  tenant: ANONYMOUS_TENANT,
  scopes: Object.freeze([]) as readonly string[],
  expiresAt: null,
});

/** `params.name` or `params.uri`: what a multi-round-trip request acts on. */
function requestTarget(params: unknown): string {
  // Sealing context parts are non-empty: a request without a target binds to a fixed word instead.
  if (!isRecord(params)) return "(none)";
  const target = params["name"] ?? params["uri"];
  return typeof target === "string" && target.length > 0 ? target : "(none)";
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isJsonContentType(contentType: string | undefined): boolean {
  return mediaTypeOf(contentType) === "application/json";
}

async function rewriteBuffered(raw: Buffer, codec: ReturnType<typeof createEventIdCodec>): Promise<Buffer> {
  const transform = rewriteSseEventIds(codec);
  const chunks: Buffer[] = [];
  transform.on("data", (chunk: Buffer) => chunks.push(chunk));
  const ended = once(transform, "end");
  transform.end(raw);
  await ended;
  return Buffer.concat(chunks);
}
