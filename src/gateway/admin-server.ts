import { timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type {
  AdminAction,
  AdminDenialReason,
  SecurityEventPrincipal,
  SecurityEvents,
} from "../audit/security-events.ts";
import { digest } from "../crypto/ids.ts";
import { GateError, type GateErrorCode, isGateError, toWire } from "../errors.ts";
import {
  ANONYMOUS_ISSUER,
  API_KEY_ISSUER,
  isIdentityString,
  makePrincipal,
  ownerScope,
  type Principal,
} from "../identity/principal.ts";
import type { Session } from "../sessions/session-registry.ts";
import { VAULT_ENTRY_NAME, type Vault } from "../vault/vault.ts";
import { mediaTypeOf, sendJson } from "./http-responses.ts";
import { readRequestBody } from "./json-rpc-body.ts";

/**
 * The admin listener (DESIGN operator contract: `admin.listen`, default 127.0.0.1:8788): health,
 * readiness, Prometheus metrics and the operator's session API. It is a separate socket from the
 * gateway's, so nothing on the public listener can reach it, and the public edge has no admin route.
 *
 * Who may call it:
 * - With `admin.tokenDigest` set, every route but /healthz and /readyz needs
 *   `Authorization: Bearer <token>` whose digest matches (compared in constant time).
 * - Without it (allowed on loopback only, config refuses otherwise), the listener is reachable by
 *   local processes, and a web page in a local browser must not be one of them: the Host header must
 *   name the listener itself (a DNS-rebinding page sends its own host name), and any request carrying
 *   `Origin` (which browsers add to cross-origin and non-GET requests) is refused. The CLI sends neither.
 *
 * Sessions are named by their digest (what audit events and `list` show), never by the raw id.
 */

/** What the admin API asks the gateway to do; the gateway wires these to its registries and replicas. */
export interface AdminActions {
  /** Lists a principal's live sessions. */
  describeSessions(principal: Principal): Promise<readonly Session[]>;
  revokeSession(sessionDigest: string): Promise<boolean>;
  revokePrincipal(principal: Principal): Promise<{ sessions: number; tasks: number }>;
  /** Every legacy session becomes unusable and every open stream ends, on every replica. */
  killSwitch(): Promise<void>;
  /** The credential vault; an operator writes, lists and removes a principal's entries (never reads one). */
  readonly vault: Vault;
}

export interface AdminHandlerOptions {
  /** `admin.tokenDigest`: digest("admin-token", token). Undefined: no token (loopback only). */
  readonly tokenDigest: string | undefined;
  /** Accepted Host header values (lowercase host:port). Null: not checked (a token is required). */
  readonly allowedHosts: ReadonlySet<string> | null;
  readonly actions: AdminActions;
  /** Prometheus exposition text. */
  readonly metrics: () => string;
  /** Whether this replica can serve: its store answers and it is not shutting down. */
  readonly ready: () => Promise<boolean>;
  readonly events: SecurityEvents;
}

/** The admin token's digest purpose: `tenantgate keys admin-token` prints token and digest. */
export const ADMIN_TOKEN_PURPOSE = "admin-token";
/** What a POST to /admin/kill-switch must carry, so a stray or replayed empty POST does nothing. */
export const KILL_SWITCH_CONFIRMATION = "end-every-session";

const MAX_ADMIN_BODY_BYTES = 16 * 1024;
const SESSION_DIGEST = /^[A-Za-z0-9_-]{43}$/;

export function createAdminHandler(
  options: AdminHandlerOptions,
): (request: IncomingMessage, response: ServerResponse) => void {
  const { actions, events } = options;
  const expected = options.tokenDigest === undefined ? undefined : Buffer.from(options.tokenDigest);

  function deny(response: ServerResponse, reason: AdminDenialReason, code: GateErrorCode): void {
    events.emit({ type: "admin.denied", reason });
    sendAdminError(response, code);
  }

  function tokenProblem(request: IncomingMessage): AdminDenialReason | null {
    if (expected === undefined) return null;
    const values = request.headersDistinct["authorization"] ?? [];
    const match = values.length === 1 ? /^Bearer ([\x21-\x7e]{1,4096})$/.exec(values[0] ?? "") : null;
    if (match === null) return "token-missing";
    const presented = Buffer.from(digest(ADMIN_TOKEN_PURPOSE, match[1] ?? ""));
    return presented.length === expected.length && timingSafeEqual(presented, expected)
      ? null
      : "token-invalid";
  }

  async function route(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const hosts = request.headersDistinct["host"] ?? [];
    if (
      options.allowedHosts !== null &&
      (hosts.length !== 1 || !options.allowedHosts.has(hosts[0]?.toLowerCase() ?? ""))
    ) {
      return deny(response, "host-forbidden", "ERR_HOST_FORBIDDEN");
    }
    if (request.headers.origin !== undefined)
      return deny(response, "origin-forbidden", "ERR_ORIGIN_FORBIDDEN");

    const url = request.url ?? "";
    // The admin API takes no query strings: nothing in it may ever be written to an access log.
    if (url.includes("?")) return sendAdminError(response, "ERR_REQUEST_INVALID");
    const method = request.method ?? "";

    if (url === "/healthz" || url === "/readyz") {
      if (method !== "GET") return sendAdminError(response, "ERR_METHOD_NOT_ALLOWED", { allow: "GET" });
      if (url === "/healthz") return sendJson(response, 200, { status: "ok" });
      const ready = await options.ready().catch(() => false);
      return sendJson(response, ready ? 200 : 503, { status: ready ? "ready" : "not-ready" });
    }

    const problem = tokenProblem(request);
    if (problem !== null) {
      events.emit({ type: "admin.denied", reason: problem });
      return sendAdminError(response, "ERR_AUTH_REQUIRED", {
        "www-authenticate": 'Bearer realm="tenantgate-admin"',
      });
    }

    if (url === "/metrics") {
      if (method !== "GET") return sendAdminError(response, "ERR_METHOD_NOT_ALLOWED", { allow: "GET" });
      const text = options.metrics();
      response.writeHead(200, {
        "content-type": "text/plain; version=0.0.4; charset=utf-8",
        "content-length": Buffer.byteLength(text),
        "cache-control": "no-store",
      });
      response.end(text);
      return;
    }

    const operation = ADMIN_OPERATIONS[url];
    if (operation === undefined) return sendAdminError(response, "ERR_NOT_FOUND");
    if (method !== "POST") return sendAdminError(response, "ERR_METHOD_NOT_ALLOWED", { allow: "POST" });
    if (mediaTypeOf(request.headers["content-type"]) !== "application/json") {
      return sendAdminError(response, "ERR_MEDIA_TYPE_UNSUPPORTED");
    }
    // Every attempt is evidence, with whom it named: one that failed (a kill switch or revoke the
    // store cut short may have half happened) or was malformed as much as one that succeeded.
    const attempt: AdminAttempt = { action: operation.action };
    const audit = (status: number, count?: number) =>
      events.emit({
        type: "admin.action",
        reason: attempt.action,
        status,
        ...(count === undefined ? {} : { count }),
        ...(attempt.principal === undefined ? {} : { principal: attempt.principal }),
        ...(attempt.sessionDigest === undefined ? {} : { sessionDigest: attempt.sessionDigest }),
      });
    try {
      const body = parseBody(await readRequestBody(request, MAX_ADMIN_BODY_BYTES));
      const { result, count } = await operation.run(body, actions, attempt);
      audit(200, count);
      sendJson(response, 200, result);
    } catch (error) {
      audit(toWire(answeredCode(error)).status);
      throw error;
    }
  }

  return (request, response) => {
    route(request, response).catch((error: unknown) => sendAdminError(response, answeredCode(error)));
  };
}

/** What an admin request asked for and whom it named, for its audit event; filled in as the body is read. */
interface AdminAttempt {
  action: AdminAction;
  principal?: SecurityEventPrincipal;
  sessionDigest?: string;
}

interface AdminOperation {
  readonly action: AdminAction;
  run(
    body: Record<string, unknown>,
    actions: AdminActions,
    attempt: AdminAttempt,
  ): Promise<{ result: unknown; count: number }>;
}

const ADMIN_OPERATIONS: Readonly<Record<string, AdminOperation>> = Object.freeze({
  "/admin/sessions/list": {
    action: "sessions-list",
    async run(body, actions, attempt) {
      onlyKeys(body, ["principal"]);
      const principal = principalFrom(body["principal"]);
      attempt.principal = ownerScope(principal);
      const sessions = await actions.describeSessions(principal);
      return {
        count: sessions.length,
        result: {
          sessions: sessions.map((session) => ({
            session: session.sessionDigest,
            upstream: session.upstream,
            protocolVersion: session.protocolVersion,
            createdAt: new Date(session.createdAt).toISOString(),
            expiresAt: new Date(session.expiresAt).toISOString(),
          })),
        },
      };
    },
  },

  "/admin/sessions/revoke": {
    // Until the body names a session, a revoke is taken to be a principal's.
    action: "principal-revoke",
    async run(body, actions, attempt) {
      if (body["session"] !== undefined) {
        attempt.action = "session-revoke";
        onlyKeys(body, ["session"]);
        const sessionDigest = body["session"];
        if (typeof sessionDigest !== "string" || !SESSION_DIGEST.test(sessionDigest)) throw badRequest();
        attempt.sessionDigest = sessionDigest;
        const revoked = await actions.revokeSession(sessionDigest);
        return { count: revoked ? 1 : 0, result: { sessions: revoked ? 1 : 0, tasks: 0 } };
      }
      onlyKeys(body, ["principal"]);
      const principal = principalFrom(body["principal"]);
      attempt.principal = ownerScope(principal);
      const removed = await actions.revokePrincipal(principal);
      return { count: removed.sessions + removed.tasks, result: removed };
    },
  },

  "/admin/vault/list": {
    action: "vault-list",
    async run(body, actions, attempt) {
      onlyKeys(body, ["principal"]);
      const principal = principalFrom(body["principal"]);
      attempt.principal = ownerScope(principal);
      const entries = await actions.vault.list(ownerScope(principal));
      return {
        count: entries.length,
        result: {
          entries: entries.map((entry) => ({
            name: entry.name,
            updatedAt: new Date(entry.updatedAt).toISOString(),
            keyId: entry.keyId,
          })),
        },
      };
    },
  },

  "/admin/vault/put": {
    action: "vault-put",
    async run(body, actions, attempt) {
      onlyKeys(body, ["principal", "name", "value"]);
      const principal = principalFrom(body["principal"]);
      attempt.principal = ownerScope(principal);
      const { name, value } = body;
      if (typeof name !== "string" || typeof value !== "string") throw badRequest();
      try {
        const { created } = await actions.vault.put(ownerScope(principal), name, value);
        return { count: 1, result: { created } };
      } catch (error) {
        // The vault names what it refused, never the value; to the operator it is one 400.
        if (isGateError(error, "ERR_ARGUMENT_INVALID")) throw badRequest();
        throw error;
      }
    },
  },

  "/admin/vault/delete": {
    action: "vault-delete",
    async run(body, actions, attempt) {
      const principal = principalFrom(body["principal"]);
      attempt.principal = ownerScope(principal);
      if (body["all"] === true) {
        onlyKeys(body, ["principal", "all"]);
        const removed = await actions.vault.deleteAll(ownerScope(principal));
        return { count: removed, result: { removed } };
      }
      onlyKeys(body, ["principal", "name"]);
      const name = body["name"];
      if (typeof name !== "string" || !VAULT_ENTRY_NAME.test(name)) throw badRequest();
      const removed = (await actions.vault.delete(ownerScope(principal), name)) ? 1 : 0;
      return { count: removed, result: { removed } };
    },
  },

  "/admin/vault/keys": {
    action: "vault-keys",
    async run(body, actions) {
      onlyKeys(body, []);
      const usage = await actions.vault.keyUsage();
      return { count: 0, result: { usage } };
    },
  },

  "/admin/vault/reseal": {
    action: "vault-reseal",
    async run(body, actions) {
      onlyKeys(body, []);
      const report = await actions.vault.resealAll();
      return { count: report.resealed, result: report };
    },
  },

  "/admin/kill-switch": {
    action: "kill-switch",
    async run(body, actions) {
      onlyKeys(body, ["confirm"]);
      if (body["confirm"] !== KILL_SWITCH_CONFIRMATION) throw badRequest();
      await actions.killSwitch();
      return { count: 0, result: { done: true } };
    },
  },
});

/** The code an admin request that failed is answered with: server-side detail stays inside. */
function answeredCode(error: unknown): GateErrorCode {
  const code = isGateError(error) ? error.code : "ERR_INTERNAL";
  return toWire(code).status >= 500 && code !== "ERR_STORE_UNAVAILABLE" ? "ERR_INTERNAL" : code;
}

function badRequest(): GateError {
  return new GateError("ERR_REQUEST_INVALID", "invalid admin request");
}

function parseBody(body: Buffer): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    throw badRequest();
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw badRequest();
  return parsed as Record<string, unknown>;
}

function onlyKeys(body: Record<string, unknown>, allowed: readonly string[]): void {
  if (Object.keys(body).some((key) => !allowed.includes(key))) throw badRequest();
}

/**
 * `{ issuer, subject, tenant? }` as the principal the gateway would build for it: the tenant defaults
 * to the issuer (what a JWT issuer without `tenantClaim` gives), and tenantgate's own issuers give
 * their own principal kinds.
 */
function principalFrom(value: unknown): Principal {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw badRequest();
  const fields = value as Record<string, unknown>;
  onlyKeys(fields, ["issuer", "subject", "tenant"]);
  const { issuer, subject } = fields;
  const tenant = fields["tenant"] ?? issuer;
  if (!isIdentityString(issuer) || !isIdentityString(subject) || !isIdentityString(tenant))
    throw badRequest();
  const kind = issuer === API_KEY_ISSUER ? "api-key" : issuer === ANONYMOUS_ISSUER ? "anonymous" : "jwt";
  return makePrincipal({ kind, issuer, subject, tenant, scopes: [], expiresAt: null });
}

function sendAdminError(
  response: ServerResponse,
  code: GateErrorCode,
  headers: Readonly<Record<string, string>> = {},
): void {
  const wire = toWire(code);
  sendJson(response, wire.status, { error: { code: wire.code, message: wire.message } }, headers);
}
