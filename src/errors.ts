/**
 * One error class for the whole project, with a closed set of stable codes.
 *
 * Why one class: callers and the gateway edge branch on `code`, never on message text or class
 * identity, and `toWire()` is the only way an error reaches a client. Details that would help an
 * attacker (which check failed, whether an id exists, a backend's error text) live in `detail` and
 * `cause`, which go to the audit trail and logs (after redaction), never to the response.
 */

/** Every code tenantgate can raise. Adding one forces an entry in `wireForm` below. */
export type GateErrorCode =
  | "ERR_AUTH_REQUIRED"
  | "ERR_AUTH_INVALID"
  | "ERR_AUTH_RATE_LIMITED"
  | "ERR_INSUFFICIENT_SCOPE"
  | "ERR_ARGUMENT_INVALID"
  | "ERR_CONFIG_INVALID"
  | "ERR_KEY_INVALID"
  | "ERR_KEY_FILE_EXPOSED"
  | "ERR_SEALED_VALUE_INVALID"
  | "ERR_STORE_UNAVAILABLE"
  | "ERR_STORE_FULL"
  | "ERR_STORE_URL_INVALID"
  | "ERR_HOST_FORBIDDEN"
  | "ERR_ORIGIN_FORBIDDEN"
  | "ERR_UNSAFE_EXPOSURE"
  | "ERR_REQUEST_INVALID"
  | "ERR_BODY_TOO_LARGE"
  | "ERR_HEADERS_TOO_LARGE"
  | "ERR_BATCH_REFUSED"
  | "ERR_MEDIA_TYPE_UNSUPPORTED"
  | "ERR_UPLOAD_REFUSED"
  | "ERR_NOT_ACCEPTABLE"
  | "ERR_METHOD_NOT_ALLOWED"
  | "ERR_NOT_FOUND"
  | "ERR_SESSION_REQUIRED"
  | "ERR_SESSION_NOT_FOUND"
  | "ERR_PROTOCOL_VERSION_MISMATCH"
  | "ERR_HEADER_MISMATCH"
  | "ERR_TASK_NOT_FOUND"
  | "ERR_TASK_CONFLICT"
  | "ERR_TOKEN_INVALID"
  | "ERR_METHOD_NOT_FOUND"
  | "ERR_UPSTREAM_UNAVAILABLE"
  | "ERR_UPSTREAM_REFUSED"
  | "ERR_SHUTTING_DOWN"
  | "ERR_SESSION_LIMIT"
  | "ERR_CONNECTION_LIMIT"
  | "ERR_RATE_LIMITED"
  | "ERR_OVERLOADED"
  | "ERR_FETCH_REFUSED"
  | "ERR_FETCH_FAILED"
  | "ERR_FETCH_TIMEOUT"
  | "ERR_FETCH_TOO_LARGE"
  | "ERR_CREDENTIAL_REQUIRED"
  | "ERR_INTERNAL";

export interface WireError {
  /** HTTP status the edge answers with. */
  readonly status: number;
  /** The stable code, safe to show. */
  readonly code: GateErrorCode;
  /** A generic sentence that says nothing about the request that caused it. */
  readonly message: string;
}

/**
 * The one exhaustive mapping from code to what a client may see. `satisfies` makes a missing or
 * extra code a compile error.
 */
const wireForm = {
  // No credential, and a credential that failed any check, look alike apart from the code: both are
  // 401 with the same challenge, so a client learns only that it must authenticate.
  ERR_AUTH_REQUIRED: { status: 401, message: "authentication required" },
  ERR_AUTH_INVALID: { status: 401, message: "authentication required" },
  ERR_AUTH_RATE_LIMITED: { status: 429, message: "too many requests" },
  ERR_INSUFFICIENT_SCOPE: { status: 403, message: "insufficient scope" },
  ERR_ARGUMENT_INVALID: { status: 500, message: "internal error" },
  ERR_CONFIG_INVALID: { status: 500, message: "internal error" },
  ERR_KEY_INVALID: { status: 500, message: "internal error" },
  ERR_KEY_FILE_EXPOSED: { status: 500, message: "internal error" },
  // A sealed value that does not open is always client-supplied data that is not theirs, was
  // tampered with, or has expired with its key: one answer for all of them.
  ERR_SEALED_VALUE_INVALID: { status: 400, message: "invalid request" },
  ERR_STORE_UNAVAILABLE: { status: 503, message: "service temporarily unavailable" },
  ERR_STORE_FULL: { status: 503, message: "service temporarily unavailable" },
  ERR_STORE_URL_INVALID: { status: 500, message: "internal error" },
  // A Host or Origin outside the allowlists (DNS rebinding, cross-site pages): one answer for both, so
  // a probe cannot tell which header the gateway disliked.
  ERR_HOST_FORBIDDEN: { status: 403, message: "forbidden" },
  ERR_ORIGIN_FORBIDDEN: { status: 403, message: "forbidden" },
  // Raised at start-up, before any client exists; mapped for completeness.
  ERR_UNSAFE_EXPOSURE: { status: 500, message: "internal error" },
  // Malformed JSON-RPC, a framing the gateway will not read (smuggling), a header it cannot police:
  // one answer, whatever the flaw, so a probe learns nothing about the parser.
  ERR_REQUEST_INVALID: { status: 400, message: "invalid request" },
  ERR_BODY_TOO_LARGE: { status: 413, message: "request too large" },
  ERR_HEADERS_TOO_LARGE: { status: 431, message: "request headers too large" },
  ERR_BATCH_REFUSED: { status: 400, message: "batch refused" },
  ERR_MEDIA_TYPE_UNSUPPORTED: { status: 415, message: "unsupported media type" },
  // A signed upload URL that is malformed, tampered with, expired, issued to someone else or already
  // used: one answer for all of them, so a prober learns nothing about which check failed (THREATS T5).
  ERR_UPLOAD_REFUSED: { status: 403, message: "upload refused" },
  ERR_NOT_ACCEPTABLE: { status: 406, message: "not acceptable" },
  ERR_METHOD_NOT_ALLOWED: { status: 405, message: "method not allowed" },
  ERR_NOT_FOUND: { status: 404, message: "not found" },
  // MCP transports: a non-initialize request without a session id is 400; an id that is unknown,
  // expired, revoked, foreign or bound to another upstream is 404, one answer for all of them
  // (THREATS S1, S3, S4, S11), so a client re-initializes and a prober learns nothing.
  ERR_SESSION_REQUIRED: { status: 400, message: "session id required" },
  ERR_SESSION_NOT_FOUND: { status: 404, message: "session not found" },
  ERR_PROTOCOL_VERSION_MISMATCH: { status: 400, message: "protocol version does not match the session" },
  // MCP 2026-07-28 Streamable HTTP, Server Validation: mirrored headers missing, malformed or not
  // matching the body (JSON-RPC -32020 HeaderMismatch). The message never says which header.
  ERR_HEADER_MISMATCH: { status: 400, message: "header mismatch" },
  // A task the caller does not own, or that has no owner record: one in-band JSON-RPC -32602 (HTTP
  // 200, as MCP servers answer invalid params), the gateway's own and identical for both (THREATS T1).
  ERR_TASK_NOT_FOUND: { status: 200, message: "unknown task" },
  // Library tasks (src/server/owned-tasks.ts): a create naming an id that is already taken, an update
  // of a finished task, or an update that kept losing a race. Raised only after the owner check, so
  // only the owner (or a server choosing its own ids) ever sees it.
  ERR_TASK_CONFLICT: { status: 409, message: "conflict" },
  // A poll or download token that is unknown, expired, for another task, or presented by someone
  // other than the principal it was issued to (THREATS T2): one answer, the one an unknown resource
  // gets, so possession alone learns nothing.
  ERR_TOKEN_INVALID: { status: 404, message: "not found" },
  // 2026-07-28 Streamable HTTP: a method the server does not implement is 404 with -32601.
  ERR_METHOD_NOT_FOUND: { status: 404, message: "method not found" },
  // The upstream's own refusals of the gateway (401/403) are never relayed: a client seeing 401 would
  // drop its gateway token (DESIGN, authorization). Both upstream failures read the same to a client.
  ERR_UPSTREAM_UNAVAILABLE: { status: 502, message: "upstream unavailable" },
  ERR_UPSTREAM_REFUSED: { status: 502, message: "upstream unavailable" },
  ERR_SHUTTING_DOWN: { status: 503, message: "service temporarily unavailable" },
  // sessions.maxPerPrincipal with onLimit "reject": the principal must end a session first.
  ERR_SESSION_LIMIT: { status: 429, message: "too many sessions" },
  // A per-IP, per-principal or per-session cap on open streams or requests in flight (limits.*).
  ERR_CONNECTION_LIMIT: { status: 429, message: "too many requests" },
  // The principal's token bucket is empty (limits.rate); answered with Retry-After.
  ERR_RATE_LIMITED: { status: 429, message: "too many requests" },
  // The gateway-wide cap (limits.*.global): nothing the client did, so 503, not 429.
  ERR_OVERLOADED: { status: 503, message: "service temporarily unavailable" },
  // safeFetch, for a server author's tools that fetch a URL a user supplied. A URL refused by the
  // policy and one that failed in transit read the same, so the answer is no oracle for which
  // internal names resolve to internal addresses; the code tells the author's own code which it was.
  ERR_FETCH_REFUSED: { status: 502, message: "fetch failed" },
  ERR_FETCH_FAILED: { status: 502, message: "fetch failed" },
  ERR_FETCH_TIMEOUT: { status: 504, message: "fetch timed out" },
  ERR_FETCH_TOO_LARGE: { status: 502, message: "fetched response too large" },
  // upstreams[].inject names a vault entry the caller has not enrolled: the answer names the entry
  // (the operator's configured name, never a value), so the caller knows what to enroll. Nothing is
  // forwarded without it.
  ERR_CREDENTIAL_REQUIRED: { status: 403, message: "credential required" },
  ERR_INTERNAL: { status: 500, message: "internal error" },
} as const satisfies Record<GateErrorCode, { status: number; message: string }>;

export const gateErrorCodes: readonly GateErrorCode[] = Object.freeze(
  Object.keys(wireForm) as GateErrorCode[],
);

export interface GateErrorOptions {
  /** Operator-facing detail for the audit trail. Never contains a secret or raw identifier. */
  readonly detail?: string;
  readonly cause?: unknown;
  /**
   * ERR_CREDENTIAL_REQUIRED only: the vault entry to enroll. It reaches the client, so only a name
   * from the operator's config belongs here.
   */
  readonly credential?: string;
}

export class GateError extends Error {
  override readonly name = "GateError";
  readonly code: GateErrorCode;
  readonly detail: string | undefined;
  readonly credential: string | undefined;

  constructor(code: GateErrorCode, message: string, options: GateErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.detail = options.detail;
    this.credential = code === "ERR_CREDENTIAL_REQUIRED" ? options.credential : undefined;
  }

  /** What a client may see: status, code and a generic message. Nothing from `message` or `cause`. */
  toWire(): WireError {
    return toWire(this.code);
  }
}

export function toWire(code: GateErrorCode): WireError {
  // A code outside the union can only arrive through a cast or plain JavaScript: answer as internal.
  const known = Object.hasOwn(wireForm, code) ? code : "ERR_INTERNAL";
  const form = wireForm[known];
  return { status: form.status, code: known, message: form.message };
}

export function isGateError(value: unknown, code?: GateErrorCode): value is GateError {
  return value instanceof GateError && (code === undefined || value.code === code);
}

/** Argument errors name the argument, never its value (it may be a secret). */
export function invalidArgument(name: string, expectation: string): GateError {
  return new GateError("ERR_ARGUMENT_INVALID", `${name} ${expectation}`);
}
