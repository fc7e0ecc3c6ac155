import type { IdentifierTagger } from "../crypto/identifier-tag.ts";
import { GateError, invalidArgument } from "../errors.ts";
import type { CredentialFailure } from "../identity/failure.ts";
import type { SessionDenial, SessionDenialReason } from "../sessions/session-registry.ts";

/**
 * Security events (DESIGN invariant 9): one typed emitter that counts every denial by reason and
 * hands a redacted record to pluggable sinks (a JSON-lines stream today; the hash-chained audit file,
 * admin API and metrics later).
 *
 * Redaction happens here, once, before any sink runs (invariant 8): a sink can only ever see the
 * record built below, never the caller's object, so no sink can forget to redact and no property a
 * caller attached by mistake (a token, a header, an error with the payload in it) can reach a line.
 *
 * Every reason is a word from a closed list, checked at run time too: a reason is written raw and
 * becomes a metric label, so free text would be both a leak and an unbounded label set. A word
 * outside the list (plain JavaScript, a cast) is written and counted as "unrecognised".
 */

// --- reasons -------------------------------------------------------------------------------------

/** The identity layer's refusals, by the `GateError` code `Authenticator.authenticate` rejects with. */
export type AuthDenialCode =
  | "ERR_AUTH_REQUIRED"
  | "ERR_AUTH_INVALID"
  | "ERR_AUTH_RATE_LIMITED"
  | "ERR_INSUFFICIENT_SCOPE";

/**
 * Why authentication was refused: the credential failure (the `detail` of ERR_AUTH_INVALID), or the
 * word for the other codes. The missing scopes of ERR_INSUFFICIENT_SCOPE are not kept: they are free
 * text, and one reason per code is what a counter needs.
 */
export type AuthDenialReason =
  | CredentialFailure
  | "no-credential"
  | "scopes-required"
  | "failed-auth-limit"
  | "insufficient-scope";

const REQUEST_REFUSAL_REASONS = [
  "host-forbidden",
  "origin-forbidden",
  "body-too-large",
  "headers-too-large",
  "request-invalid",
  "batch-refused",
  "media-type",
  "not-acceptable",
  "method-not-allowed",
  "protocol-version",
  "protocol-version-mismatch",
  "header-mismatch",
  "request-state",
  "session-limit",
  "session-required",
  "rate-limited",
  "cap-global",
  "cap-ip",
  "cap-principal",
  "cap-session",
  "no-route",
  "query-string",
  "shutting-down",
  "credential-missing",
  "internal",
] as const;

/** Why the edge refused a request before (or instead of) forwarding it. */
export type RequestRefusalReason = (typeof REQUEST_REFUSAL_REASONS)[number];

const SESSION_END_REASONS = ["client", "upstream-gone", "evicted"] as const;
/**
 * Who ended a session: the client's DELETE, the upstream forgetting its side, or the principal's own
 * new session taking its place under sessions.maxPerPrincipal.
 */
export type SessionEndReason = (typeof SESSION_END_REASONS)[number];

const SESSION_REVOCATION_REASONS = ["admin", "principal", "kill-switch"] as const;
/**
 * Why an operator revoked sessions: one session by its digest ("admin"), everything a principal owns
 * ("principal": its sessions and its tasks), or every session there is ("kill-switch").
 */
export type SessionRevocationReason = (typeof SESSION_REVOCATION_REASONS)[number];

const UPSTREAM_REFUSAL_REASONS = ["unauthorized", "forbidden"] as const;
/** The upstream answered the gateway 401 ("unauthorized") or 403 ("forbidden"); never relayed. */
export type UpstreamRefusalReason = (typeof UPSTREAM_REFUSAL_REASONS)[number];

const UPSTREAM_FAILURE_REASONS = ["unreachable", "timeout", "invalid-response", "error-status"] as const;
/** Why the upstream could not be used. Extend the list (not free text) when the edge needs more. */
export type UpstreamFailureReason = (typeof UPSTREAM_FAILURE_REASONS)[number];

const TASK_DENIAL_REASONS = ["not-owned", "malformed", "modern-method"] as const;
/**
 * Why a request naming a task was answered by the gateway itself: a task the caller does not own (or
 * that has no owner record: the two are never told apart), task ids that are not strings, or a
 * 2025-11-25-only task method sent in the modern era.
 */
export type TaskDenialReason = (typeof TASK_DENIAL_REASONS)[number];

const ADMIN_ACTIONS = [
  "sessions-list",
  "session-revoke",
  "principal-revoke",
  "kill-switch",
  "vault-list",
  "vault-put",
  "vault-delete",
  "vault-keys",
  "vault-reseal",
] as const;
/** What an operator did through the admin API. */
export type AdminAction = (typeof ADMIN_ACTIONS)[number];

const ADMIN_DENIAL_REASONS = [
  "token-missing",
  "token-invalid",
  "host-forbidden",
  "origin-forbidden",
] as const;
/** Why the admin listener refused a request before acting on it. */
export type AdminDenialReason = (typeof ADMIN_DENIAL_REASONS)[number];

const VAULT_CHANGES = [
  "entry-put",
  "entry-deleted",
  "admin-put",
  "admin-deleted",
  "admin-deleted-all",
] as const;
/** A change to a principal's vault: by the principal itself (enrollment) or by an operator. */
export type VaultChange = (typeof VAULT_CHANGES)[number];

const EVENT_ID_REFUSAL_REASONS = ["malformed", "other-session"] as const;
/** Why a `Last-Event-ID` was refused: it did not unwrap, or it was wrapped for another session. */
export type EventIdRefusalReason = (typeof EVENT_ID_REFUSAL_REASONS)[number];

// The lists below are typed elsewhere as unions only. `satisfies Record<Union, true>` makes a word
// added to (or removed from) those unions a compile error here, so the run-time check never drifts.
const AUTH_DENIAL_REASONS = Object.keys({
  "duplicate-authorization": true,
  scheme: true,
  "malformed-bearer": true,
  oversized: true,
  malformed: true,
  algorithm: true,
  "unknown-issuer": true,
  "missing-kid": true,
  expired: true,
  lifetime: true,
  "sender-constrained": true,
  "not-yet-valid": true,
  audience: true,
  subject: true,
  "tenant-claim": true,
  "scope-claim": true,
  "unknown-kid": true,
  "key-unusable": true,
  "jwks-unavailable": true,
  "bad-signature": true,
  unverifiable: true,
  "no-jwt-issuers": true,
  "unknown-api-key": true,
  "no-credential": true,
  "scopes-required": true,
  "failed-auth-limit": true,
  "insufficient-scope": true,
} satisfies Record<AuthDenialReason, true>);

const AUTH_DENIAL_CODES = Object.keys({
  ERR_AUTH_REQUIRED: true,
  ERR_AUTH_INVALID: true,
  ERR_AUTH_RATE_LIMITED: true,
  ERR_INSUFFICIENT_SCOPE: true,
} satisfies Record<AuthDenialCode, true>);

const SESSION_DENIAL_REASONS = Object.keys({
  malformed: true,
  unknown: true,
  expired: true,
  "foreign-principal": true,
  "other-upstream": true,
  "record-invalid": true,
  "mapping-invalid": true,
  "mapping-missing": true,
  idle: true,
  "client-binding": true,
  "kill-switch": true,
} satisfies Record<SessionDenialReason, true>);

type SessionOperation = SessionDenial["operation"];
const SESSION_OPERATIONS = Object.keys({
  resolve: true,
  end: true,
  "set-upstream-session": true,
} satisfies Record<SessionOperation, true>);

/** Written and counted in place of a reason outside its type's list. */
export const UNRECOGNISED_REASON = "unrecognised";

// --- events --------------------------------------------------------------------------------------

/** Who, as far as the event knows. `Principal` and the store's `OwnerScope` both fit. */
export interface SecurityEventPrincipal {
  readonly tenant: string;
  readonly issuer: string;
  readonly subject: string;
}

/** Fields any event may carry. Identifiers in here are raw: `emit` replaces them with tags. */
export interface SecurityEventContext {
  /** The upstream's configured name. */
  readonly upstream?: string;
  /** The client's address as resolved for per-IP limits (`createClientAddressResolver`). */
  readonly clientAddress?: string;
  readonly principal?: SecurityEventPrincipal;
  /** The session id's digest (never the id itself). */
  readonly sessionDigest?: string;
  /** The HTTP status the client was answered with. */
  readonly status?: number;
}

export interface AuthDeniedEvent extends SecurityEventContext {
  readonly type: "auth.denied";
  readonly code: AuthDenialCode;
  readonly reason: AuthDenialReason | typeof UNRECOGNISED_REASON;
}
export interface RequestRefusedEvent extends SecurityEventContext {
  readonly type: "request.refused";
  readonly reason: RequestRefusalReason;
}
export interface SessionDeniedEvent extends SecurityEventContext {
  readonly type: "session.denied";
  readonly reason: SessionDenialReason;
  readonly operation: SessionOperation;
}
export interface SessionCreatedEvent extends SecurityEventContext {
  readonly type: "session.created";
}
export interface SessionEndedEvent extends SecurityEventContext {
  readonly type: "session.ended";
  readonly by: SessionEndReason;
}
/** An operator revocation; its effect on open streams reaches every replica through the bus. */
export interface SessionRevokedEvent extends SecurityEventContext {
  readonly type: "session.revoked";
  readonly reason: SessionRevocationReason;
}
export interface UpstreamRefusedEvent extends SecurityEventContext {
  readonly type: "upstream.refused";
  readonly reason: UpstreamRefusalReason;
}
export interface UpstreamUnavailableEvent extends SecurityEventContext {
  readonly type: "upstream.unavailable";
  readonly reason: UpstreamFailureReason;
}
export interface EventIdRefusedEvent extends SecurityEventContext {
  readonly type: "stream.event-id-refused";
  readonly reason: EventIdRefusalReason;
}
export interface StoreUnavailableEvent extends SecurityEventContext {
  readonly type: "store.unavailable";
}
export interface TaskDeniedEvent extends SecurityEventContext {
  readonly type: "task.denied";
  readonly reason: TaskDenialReason;
}
/** The upstream handed a task id that another principal already owns (THREATS T7); it was withheld. */
export interface TaskConflictEvent extends SecurityEventContext {
  readonly type: "task.conflict";
}
export interface TaskClaimedEvent extends SecurityEventContext {
  readonly type: "task.claimed";
}

export interface AdminActionEvent extends SecurityEventContext {
  readonly type: "admin.action";
  readonly reason: AdminAction;
  /** How many sessions (or tasks) the action listed or removed. */
  readonly count?: number;
}
export interface AdminDeniedEvent extends SecurityEventContext {
  readonly type: "admin.denied";
  readonly reason: AdminDenialReason;
}
/** The gateway started or stopped, with the digest of the configuration it ran with. */
export interface GatewayLifecycleEvent extends SecurityEventContext {
  readonly type: "gateway.started" | "gateway.stopped";
  readonly configDigest: string;
}

/** A vault entry was written or removed; never the value, never the entry's name. */
export interface VaultChangedEvent extends SecurityEventContext {
  readonly type: "vault.changed";
  readonly reason: VaultChange;
}

/** sessions.clientBinding "audit": a session was used by a client whose fingerprint differs. */
export interface SessionBindingMismatchEvent extends SecurityEventContext {
  readonly type: "session.binding-mismatch";
}

export type SecurityEvent =
  | VaultChangedEvent
  | SessionBindingMismatchEvent
  | AdminActionEvent
  | AdminDeniedEvent
  | GatewayLifecycleEvent
  | AuthDeniedEvent
  | RequestRefusedEvent
  | SessionDeniedEvent
  | SessionCreatedEvent
  | SessionEndedEvent
  | SessionRevokedEvent
  | UpstreamRefusedEvent
  | UpstreamUnavailableEvent
  | EventIdRefusedEvent
  | StoreUnavailableEvent
  | TaskDeniedEvent
  | TaskConflictEvent
  | TaskClaimedEvent;

export type SecurityEventType = SecurityEvent["type"];

/** Reasons by type; null for types without one. Denials are the types counted by `denials()`. */
const EVENT_TYPES: Readonly<
  Record<SecurityEventType, { reasons: ReadonlySet<string> | null; denial: boolean }>
> = {
  "session.binding-mismatch": { reasons: null, denial: false },
  "vault.changed": { reasons: new Set(VAULT_CHANGES), denial: false },
  "admin.action": { reasons: new Set(ADMIN_ACTIONS), denial: false },
  "admin.denied": { reasons: new Set(ADMIN_DENIAL_REASONS), denial: true },
  "gateway.started": { reasons: null, denial: false },
  "gateway.stopped": { reasons: null, denial: false },
  "auth.denied": { reasons: new Set(AUTH_DENIAL_REASONS), denial: true },
  "request.refused": { reasons: new Set(REQUEST_REFUSAL_REASONS), denial: true },
  "session.denied": { reasons: new Set(SESSION_DENIAL_REASONS), denial: true },
  "session.created": { reasons: null, denial: false },
  "session.ended": { reasons: null, denial: false },
  "session.revoked": { reasons: new Set(SESSION_REVOCATION_REASONS), denial: false },
  "upstream.refused": { reasons: new Set(UPSTREAM_REFUSAL_REASONS), denial: true },
  "upstream.unavailable": { reasons: new Set(UPSTREAM_FAILURE_REASONS), denial: false },
  "stream.event-id-refused": { reasons: new Set(EVENT_ID_REFUSAL_REASONS), denial: true },
  "store.unavailable": { reasons: null, denial: false },
  "task.denied": { reasons: new Set(TASK_DENIAL_REASONS), denial: true },
  "task.conflict": { reasons: null, denial: true },
  "task.claimed": { reasons: null, denial: false },
};

// --- records and sinks ---------------------------------------------------------------------------

/**
 * What a sink receives: built field by field from the event, identifiers replaced by keyed tags.
 *
 * The tenant is tagged too, not written as a name: it comes from a token claim the identity provider
 * chooses (an organisation name, a domain, for single-user tenants even an email), not from this
 * gateway's configuration, so it is as personal as the subject. The issuer stays readable: a
 * principal only exists once its issuer matched configuration (or is tenantgate's own `urn:`).
 */
export interface SecurityEventRecord {
  /** ISO 8601, UTC. */
  readonly time: string;
  readonly type: SecurityEventType;
  readonly reason?: string;
  readonly code?: AuthDenialCode;
  readonly operation?: SessionOperation;
  readonly by?: SessionEndReason | typeof UNRECOGNISED_REASON;
  readonly status?: number;
  readonly upstream?: string;
  readonly issuer?: string;
  readonly tenantTag?: string;
  readonly subjectTag?: string;
  readonly sessionTag?: string;
  readonly clientTag?: string;
  /** admin.action: sessions or tasks listed or removed. */
  readonly count?: number;
  /** gateway.started / gateway.stopped: SHA-256 (hex) of the configuration in force. */
  readonly configDigest?: string;
}

/**
 * Where records go. `write` is called synchronously, in sink order, and never awaited: a slow or
 * failing sink must not delay or change a response. A throw or a rejection is counted, not seen.
 */
export interface SecurityEventSink {
  write(record: SecurityEventRecord): void | PromiseLike<void>;
}

export interface SecurityEventsOptions {
  readonly tagger: IdentifierTagger;
  readonly sinks: readonly SecurityEventSink[];
  /** Clock (epoch ms), for tests. */
  readonly now?: () => number;
}

export interface SecurityEvents {
  /** Counts, redacts and delivers. Never throws and never waits, whatever the event or the sinks do. */
  emit(event: SecurityEvent): void;
  /** Denials so far by `"<type>:<reason>"`, counted before any sink runs. A snapshot. */
  denials(): Readonly<Record<string, number>>;
  /**
   * Deliveries that failed: a sink that threw or rejected, or an event that could not be made into
   * a record (counted once per sink). A rejection is counted when it happens, after `emit` returned.
   */
  sinkFailures(): number;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

export function createSecurityEvents(options: SecurityEventsOptions): SecurityEvents {
  const tagger = options?.tagger;
  if (typeof tagger?.tag !== "function") throw invalidArgument("tagger", "must be an identifier tagger");
  const sinkList: unknown = options.sinks;
  if (!Array.isArray(sinkList) || !sinkList.every((sink) => typeof sink?.write === "function")) {
    throw invalidArgument("sinks", "must be a list of sinks with a write function");
  }
  // A copy: a caller editing its array later cannot add or remove a sink behind the emitter's back.
  const sinks: readonly SecurityEventSink[] = Object.freeze([...(sinkList as SecurityEventSink[])]);
  const now = options.now ?? Date.now;
  if (typeof now !== "function") throw invalidArgument("now", "must be a function");

  const counters = new Map<string, number>();
  let failures = 0;
  const failed = (): void => {
    failures += 1;
  };

  const tag = (value: unknown): string | undefined =>
    typeof value === "string" && value.length > 0 ? tagger.tag(value) : undefined;

  function toRecord(event: SecurityEvent, type: SecurityEventType, reason: string | undefined) {
    const record: Mutable<SecurityEventRecord> = { time: new Date(now()).toISOString(), type };
    if (reason !== undefined) record.reason = reason;
    if (event.type === "auth.denied") {
      const code: unknown = event.code;
      if (typeof code === "string" && AUTH_DENIAL_CODES.includes(code)) record.code = code as AuthDenialCode;
    } else if (event.type === "session.denied") {
      const operation: unknown = event.operation;
      if (typeof operation === "string" && SESSION_OPERATIONS.includes(operation)) {
        record.operation = operation as SessionOperation;
      }
    } else if (event.type === "session.ended") {
      const by: unknown = event.by;
      record.by = SESSION_END_REASONS.some((word) => word === by)
        ? (by as SessionEndReason)
        : UNRECOGNISED_REASON;
    } else if (event.type === "admin.action") {
      const count: unknown = event.count;
      if (Number.isSafeInteger(count) && (count as number) >= 0) record.count = count as number;
    } else if (event.type === "gateway.started" || event.type === "gateway.stopped") {
      const configDigest: unknown = event.configDigest;
      if (typeof configDigest === "string" && /^[0-9a-f]{64}$/.test(configDigest)) {
        record.configDigest = configDigest;
      }
    }
    const status: unknown = event.status;
    if (Number.isInteger(status) && (status as number) >= 100 && (status as number) <= 599) {
      record.status = status as number;
    }
    const upstream: unknown = event.upstream;
    if (typeof upstream === "string" && upstream.length > 0) record.upstream = upstream;
    const principal: unknown = event.principal;
    if (typeof principal === "object" && principal !== null) {
      const { issuer, tenant, subject } = principal as Partial<Record<keyof SecurityEventPrincipal, unknown>>;
      if (typeof issuer === "string" && issuer.length > 0) record.issuer = issuer;
      const tenantTag = tag(tenant);
      if (tenantTag !== undefined) record.tenantTag = tenantTag;
      const subjectTag = tag(subject);
      if (subjectTag !== undefined) record.subjectTag = subjectTag;
    }
    const sessionTag = tag(event.sessionDigest);
    if (sessionTag !== undefined) record.sessionTag = sessionTag;
    const clientTag = tag(event.clientAddress);
    if (clientTag !== undefined) record.clientTag = clientTag;
    // Frozen: every sink gets the same object, and one sink must not change what the next one sees.
    return Object.freeze(record);
  }

  function deliver(record: SecurityEventRecord): void {
    for (const sink of sinks) {
      try {
        const result: unknown = sink.write(record);
        if (
          (typeof result === "object" || typeof result === "function") &&
          result !== null &&
          typeof (result as PromiseLike<unknown>).then === "function"
        ) {
          // Not awaited (see SecurityEventSink), but never left as an unhandled rejection.
          (result as PromiseLike<unknown>).then(undefined, failed);
        }
      } catch {
        failed();
      }
    }
  }

  return {
    emit(event: SecurityEvent): void {
      try {
        const type: unknown = event.type;
        if (typeof type !== "string" || !Object.hasOwn(EVENT_TYPES, type)) {
          // No record can say what this was. Counted as failed deliveries rather than lost without a
          // trace, so a wiring bug shows in the metrics.
          failures += sinks.length;
          return;
        }
        const rules = EVENT_TYPES[type as SecurityEventType];
        let reason: string | undefined;
        if (rules.reasons !== null) {
          const given: unknown = (event as { reason?: unknown }).reason;
          reason = typeof given === "string" && rules.reasons.has(given) ? given : UNRECOGNISED_REASON;
        }
        if (rules.denial) {
          const key = `${type}:${reason}`;
          counters.set(key, (counters.get(key) ?? 0) + 1);
        }
        deliver(toRecord(event, type as SecurityEventType, reason));
      } catch {
        // The event could not be read or made into a record (a bad clock, a throwing getter, a
        // tagger failure): no sink got it.
        failures += sinks.length;
      }
    },
    denials(): Readonly<Record<string, number>> {
      return Object.freeze(Object.fromEntries(counters));
    },
    sinkFailures(): number {
      return failures;
    },
  };
}

/**
 * A sink writing one JSON object per line. The promise it returns settles with the stream's write
 * callback, so a failed write is counted in `sinkFailures`. A stream also emits `error` for a failed
 * write: handling that (or letting it stop the process) is the stream owner's choice, not the
 * sink's. Lines are not dropped under backpressure; the audit-file sink will bound its buffer.
 */
export function jsonLinesSink(stream: NodeJS.WritableStream): SecurityEventSink {
  if (typeof stream?.write !== "function") throw invalidArgument("stream", "must be a writable stream");
  return {
    write(record: SecurityEventRecord): Promise<void> {
      // JSON.stringify escapes line breaks and lone surrogates, so one record is always one line.
      const line = `${JSON.stringify(record)}\n`;
      return new Promise((resolve, reject) => {
        stream.write(line, (error) => (error ? reject(error) : resolve()));
      });
    },
  };
}

// --- adapters ------------------------------------------------------------------------------------

/**
 * The code and reason of an error `Authenticator.authenticate` rejected with, or undefined for any
 * other error (those are not authentication denials, and must not be counted as such).
 */
export function authDenialOf(
  error: unknown,
): { code: AuthDenialCode; reason: AuthDenialReason | typeof UNRECOGNISED_REASON } | undefined {
  if (!(error instanceof GateError)) return undefined;
  switch (error.code) {
    case "ERR_AUTH_INVALID": {
      const detail = error.detail;
      // Every ERR_AUTH_INVALID comes from `invalidCredential`; one without a known detail is still a
      // denial, counted as unrecognised rather than dropped.
      const known = detail !== undefined && AUTH_DENIAL_REASONS.includes(detail);
      return { code: error.code, reason: known ? (detail as AuthDenialReason) : UNRECOGNISED_REASON };
    }
    case "ERR_AUTH_REQUIRED":
      // A missing Authorization header raises ERR_AUTH_REQUIRED without a detail.
      return {
        code: error.code,
        reason: error.detail === "scopes-required" ? "scopes-required" : "no-credential",
      };
    case "ERR_AUTH_RATE_LIMITED":
      return { code: error.code, reason: "failed-auth-limit" };
    case "ERR_INSUFFICIENT_SCOPE":
      return { code: error.code, reason: "insufficient-scope" };
    default:
      return undefined;
  }
}

/**
 * The event for a session registry refusal (`SessionRegistryOptions.onDenied`). The registry has no
 * request at hand, so the event carries no client address or status.
 */
export function sessionDeniedEvent(denial: SessionDenial): SessionDeniedEvent {
  return {
    type: "session.denied",
    reason: denial.reason,
    operation: denial.operation,
    ...(denial.caller === null ? {} : { principal: denial.caller }),
    ...(denial.sessionDigest === null ? {} : { sessionDigest: denial.sessionDigest }),
    ...(denial.upstream === null ? {} : { upstream: denial.upstream }),
  };
}
