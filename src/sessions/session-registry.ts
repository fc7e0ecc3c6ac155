import { digest, looksLikeMintedId, mintId } from "../crypto/ids.ts";
import type { Keyring } from "../crypto/keyring.ts";
import { openToString, type SealContext, seal } from "../crypto/seal.ts";
import { GateError, invalidArgument } from "../errors.ts";
import {
  ANONYMOUS_ISSUER,
  makePrincipal,
  ownerScope,
  type Principal,
  samePrincipal,
} from "../identity/principal.ts";
import { MAX_TTL_MS } from "../store/arguments.ts";
import type { Store } from "../store/contract.ts";
import {
  type LeaseKey,
  leaseKey,
  type OwnerScope,
  ownedKey,
  ownerIndexKey,
  ownershipKey,
  ownershipKeyFromDigest,
  type RecordKey,
} from "../store/keys.ts";

/**
 * The registry of legacy MCP sessions (`Mcp-Session-Id`, protocol versions 2025-03-26 .. 2025-11-25).
 *
 * Two records per session (docs/storage-schema.md, "Keys in use"):
 * - the ownership record `own/session/<digest>`: owner, upstream, negotiated version and times, written
 *   with `claim` before the id is returned (DESIGN invariant 3) and never rewritten afterwards;
 * - the upstream's session id, sealed, in `data/<tenant>/<issuer>/<subject>/session-upstream/<digest>`,
 *   written once with `claim`. It is a record of its own because it usually arrives after the session
 *   exists (in the initialize response), and the store has no compare-and-set: rewriting the
 *   ownership record with `put` could recreate a session that was ended or revoked in between.
 *
 * `resolve` reads both keys for every caller, the second under the caller's own scope, so an owner,
 * a stranger, an unknown id and a malformed one all cost the same two reads (THREATS S1/S3: the same
 * store operations), and a stranger can never read the owner's mapping.
 *
 * The kill switch (`killSwitch`) is a store fact too: a numbered record `own/kill-switch/<digest(n)>`
 * claimed once per generation, never removed. Each session records the generation current when it was
 * created; one older than the newest generation is refused. `resolve` reads the record after the
 * newest one this replica knows, in parallel with its other reads, so a kill switch fired through any
 * replica holds on every replica without a message reaching it, and no clock is compared.
 *
 * A session created with an upstream id, or with `expectsUpstreamSession`, records that it needs one:
 * `resolve` refuses it while the mapping is missing (not yet set, or removed by an `end` or `revoke`
 * running at the same time), so a missing mapping is never mistaken for an upstream without sessions.
 */

/** Why `resolve`, `end` or `setUpstreamSessionId` answered as for an unknown id; for the audit trail only. */
export type SessionDenialReason =
  | "malformed"
  | "unknown"
  | "expired"
  | "foreign-principal"
  | "other-upstream"
  | "record-invalid"
  | "mapping-invalid"
  /** The session expects an upstream session id and has none (not set yet, or being removed). */
  | "mapping-missing"
  /** Unused for longer than the idle timeout. */
  | "idle"
  /** Created before the kill switch last fired. */
  | "kill-switch"
  /** sessions.clientBinding "reject": the request's client fingerprint is not the session's (judged by the gateway). */
  | "client-binding";

export interface SessionDenial {
  readonly reason: SessionDenialReason;
  readonly operation: "resolve" | "end" | "set-upstream-session";
  /** Digest of the presented id (never the id itself); null when it was not a well-formed id. */
  readonly sessionDigest: string | null;
  /** Who presented it; null for an anonymous caller (`anonymousOwner`), who has no principal of its own. */
  readonly caller: OwnerScope | null;
  /** The upstream it was presented at. */
  readonly upstream: string | null;
}

export interface SessionRegistryOptions {
  readonly store: Store;
  readonly keyring: Keyring;
  /** A session's lifetime from creation; its records expire with it (store TTL). */
  readonly absoluteTimeoutMs: number;
  /** Clock (epoch ms), for tests. */
  readonly now?: () => number;
  /**
   * Called for every refused resolve, end or setUpstreamSessionId, for the audit trail. It is not
   * awaited. An error it throws, and a rejection of a promise it returns, are swallowed, so a broken
   * audit sink never makes a refusal look different from an unknown id (nor stops the process with
   * an unhandled rejection).
   */
  readonly onDenied?: (denial: SessionDenial) => void | Promise<void>;
  /**
   * A session unused for this long is gone (`sessions.idleTimeout`). Activity is recorded by
   * `resolve` and `keepAlive`, at most once per `touchIntervalMs` per session on each replica.
   * Undefined: no idle timeout (the absolute one still applies).
   */
  readonly idleTimeoutMs?: number;
  /** Default: a tenth of the idle timeout, at most a minute. */
  readonly touchIntervalMs?: number;
  /**
   * The most live sessions one principal may hold (`sessions.maxPerPrincipal`), and what a create
   * beyond it does: `reject` (ERR_SESSION_LIMIT) or `evict-oldest` (the principal's own oldest
   * session is revoked; never anyone else's). Undefined: no cap.
   */
  readonly maxPerPrincipal?: number;
  readonly onLimit?: "evict-oldest" | "reject";
  /**
   * sessions.maxPerTenant: live sessions one tenant (issuer, tenant) may hold, counted atomically in
   * a lease set (THREATS L6: one tenant creating sessions without end never takes another's room).
   * At the cap a create is refused (ERR_SESSION_LIMIT); nothing of anyone is evicted. A session's
   * slot lapses with its idle timeout (renewed with its activity) and is freed when it ends.
   */
  readonly maxPerTenant?: number;
}

export interface CreateSessionInput {
  readonly principal: Principal;
  readonly upstream: string;
  readonly protocolVersion: string;
  readonly upstreamSessionId?: string;
  /**
   * The upstream will assign a session id later (`setUpstreamSessionId`): until it does, `resolve`
   * refuses the session. Implied when `upstreamSessionId` is given.
   */
  readonly expectsUpstreamSession?: boolean;
  /**
   * The client's coarse fingerprint (sessions.clientBinding, src/sessions/client-binding.ts), kept
   * with the session so later requests can be compared with it. Opaque to the registry.
   */
  readonly clientBinding?: string;
}

export interface Session {
  /** Digest of the session id: what lists, audit events and logs may name. */
  readonly sessionDigest: string;
  readonly owner: OwnerScope;
  readonly upstream: string;
  readonly protocolVersion: string;
  readonly createdAt: number;
  readonly expiresAt: number;
  /** Whether the session was created needing an upstream session id. */
  readonly expectsUpstreamSession: boolean;
  /** The kill generation current at creation: a kill switch with a higher one ends the session. */
  readonly killGeneration: number;
  /** The client fingerprint recorded at creation, if client binding was on then. */
  readonly clientBinding: string | undefined;
}

export interface ResolvedSession extends Session {
  /**
   * The upstream's own session id, or null for a session created without one and without
   * `expectsUpstreamSession`: an upstream that does not use sessions, or one whose id has not been set.
   * Null can also be seen by a resolve racing an `end` or `revoke` (the mapping is removed after the
   * ownership record, and both are read at once). The gateway must treat a session that should have
   * an upstream id but has none as unusable; sessions created with `expectsUpstreamSession` (or an
   * upstream id) are refused by `resolve` in that case, so for them null never appears.
   */
  readonly upstreamSessionId: string | null;
}

export interface SessionRegistry {
  /**
   * `evicted`: the principal's own sessions this create removed to stay within
   * `maxPerPrincipal` (its oldest with `evict-oldest`, and any that had gone idle); their open
   * streams are the caller's to end.
   */
  create(
    input: CreateSessionInput,
  ): Promise<{ sessionId: string; session: Session; evicted: readonly Session[] }>;
  /**
   * Stores the upstream's id, once; false if the caller does not own a live session at `upstream`
   * (refused through `onDenied`, as resolve and end are), if it is already set, or if the session was
   * ended or revoked while it was being stored.
   */
  setUpstreamSessionId(
    sessionId: string,
    principal: Principal,
    upstream: string,
    upstreamSessionId: string,
  ): Promise<boolean>;
  /**
   * The session, or null for every reason it may not be used (indistinguishable to the caller). See
   * `ResolvedSession.upstreamSessionId`: a resolve racing an `end` may still see the session, with a
   * null upstream id; for a session that should have one, that answer must be treated as unusable.
   */
  resolve(sessionId: string, principal: Principal, upstream: string): Promise<ResolvedSession | null>;
  /**
   * The throwaway principal that owns `sessionId` when it is a live anonymous session (anonymous mode:
   * the session id is the only thing that names its principal), or null: unknown, expired, malformed,
   * or owned by anyone who authenticated ("foreign-principal"). Every null is reported through
   * `onDenied` (caller null, operation "resolve"), as resolve reports its refusals. One read for every
   * id. The caller then resolves the session as that principal, so every other check (upstream,
   * mapping) still applies.
   */
  anonymousOwner(sessionId: string, upstream: string): Promise<Principal | null>;
  /**
   * Records activity on a session the caller already resolved (an open stream counts as activity):
   * throttled like the touch in `resolve`. Never extends a session past its absolute lifetime.
   */
  keepAlive(session: Session): Promise<void>;
  /** DELETE by the owner at the session's upstream; false (and nothing removed) for anyone else. */
  end(sessionId: string, principal: Principal, upstream: string): Promise<boolean>;
  /** Operator revocation; true if a live session was removed. */
  revoke(sessionId: string): Promise<boolean>;
  /**
   * Operator revocation by the digest `list` shows (an admin action: a digest is not a credential, so
   * no client-facing path may call this). Rejects with ERR_ARGUMENT_INVALID for anything but a
   * 43-character base64url digest; true if a live session was removed.
   */
  revokeByDigest(sessionDigest: string): Promise<boolean>;
  /** Operator revocation of every session the principal owns; the number removed. */
  revokeAll(principal: Principal): Promise<number>;
  /**
   * The kill switch: every session that exists now is refused from now on, by every replica sharing
   * the store (resolve, end and setUpstreamSessionId answer as for an unknown id, reason
   * "kill-switch"); sessions created afterwards work. Resolves with the new kill generation, which
   * only sessions created before it are below. Records are not deleted: they expire as they would.
   */
  killSwitch(): Promise<number>;
  /** Digests of the principal's sessions (live, or ended less than a TTL ago by expiry alone). */
  list(principal: Principal): Promise<string[]>;
  /**
   * The principal's live sessions, oldest first, as digests with their metadata (what the admin API
   * lists). Each is read from its own record and checked to be the principal's.
   */
  describe(principal: Principal): Promise<Session[]>;
}

const SESSION_KIND = "session";
/** One record per kill generation (1, 2, …), claimed once and kept: see killSwitch. */
const KILL_KIND = "kill-switch";
const KILL_RECORD_VERSION = 1;
const MAPPING_KIND = "session-upstream";
/** The session's activity record: present while the session is not idle (its TTL is the idle timeout). */
const SEEN_KIND = "session-seen";
/** The lease sets counting each tenant's live sessions. */
const TENANT_LEASE_KIND = "tenant-sessions";
/** Sessions whose last touch this replica remembers, to throttle activity writes; cleared when full. */
const MAX_REMEMBERED_TOUCHES = 100_000;
const SEAL_PURPOSE = "upstream-session";
const RECORD_VERSION = 1;
/** A lost claim on a fresh 192-bit id means something is wrong, not bad luck: give up quickly. */
const MAX_CREATE_ATTEMPTS = 3;
/** Upstream names, protocol versions and upstream session ids are bounded, visible ASCII. */
const VISIBLE_ASCII = /^[\x21-\x7e]+$/;
const MAX_UPSTREAM_SESSION_ID_LENGTH = 1024;
const MAX_LABEL_LENGTH = 256;

/**
 * What `resolve` reads for an id that is not well-formed: a key no minted id can produce (minted ids
 * are base64url; this contains spaces), so a malformed id costs the same reads as any other.
 */
const MALFORMED_ID_STAND_IN = "(not a session id)";
const MALFORMED_KEY = ownershipKey(SESSION_KIND, MALFORMED_ID_STAND_IN);
const MALFORMED_DIGEST = digestOf(MALFORMED_KEY);

interface SessionRecord {
  readonly v: typeof RECORD_VERSION;
  readonly tenant: string;
  readonly issuer: string;
  readonly subject: string;
  readonly upstream: string;
  readonly protocolVersion: string;
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly expectsUpstreamSession: boolean;
  /** Absent in records written before the kill switch existed: read as 0, below every generation. */
  readonly killGeneration?: number;
  /** Absent when client binding was off at creation. */
  readonly clientBinding?: string;
}

/**
 * The digest inside a session's ownership key, reused as its public name (index member, audit,
 * mapping key), so one id has one digest everywhere an operator may meet it.
 */
/**
 * The ownership key and digest a presented id is looked up under. A malformed id maps to a fixed
 * stand-in key no minted id can produce, so it costs the same store operations as any other.
 */
function sessionKeyOf(sessionId: unknown): { key: RecordKey; sessionDigest: string; wellFormed: boolean } {
  if (!isWellFormedSessionId(sessionId)) {
    return { key: MALFORMED_KEY, sessionDigest: MALFORMED_DIGEST, wellFormed: false };
  }
  const key = ownershipKey(SESSION_KIND, sessionId);
  return { key, sessionDigest: digestOf(key), wellFormed: true };
}

function digestOf(key: RecordKey): string {
  const digest = key.segments[1];
  if (key.namespace !== "own" || key.segments.length !== 2 || digest === undefined) {
    throw new GateError("ERR_INTERNAL", "unexpected ownership key shape");
  }
  return digest;
}

function checkLabel(name: string, value: unknown): asserts value is string {
  if (typeof value !== "string" || value.length > MAX_LABEL_LENGTH || !VISIBLE_ASCII.test(value)) {
    throw invalidArgument(name, `must be 1 to ${MAX_LABEL_LENGTH} visible ASCII characters`);
  }
}

/** MCP transports (2025-03-26, Session Management): a session id is visible ASCII (0x21-0x7E). */
function checkUpstreamSessionId(value: unknown): asserts value is string {
  if (
    typeof value !== "string" ||
    value.length > MAX_UPSTREAM_SESSION_ID_LENGTH ||
    !VISIBLE_ASCII.test(value)
  ) {
    throw invalidArgument(
      "upstreamSessionId",
      `must be 1 to ${MAX_UPSTREAM_SESSION_ID_LENGTH} visible ASCII characters`,
    );
  }
}

function isWellFormedSessionId(value: unknown): value is string {
  return typeof value === "string" && looksLikeMintedId(value);
}

/**
 * The mapping is bound to the owner, the upstream and the session (by digest): copied to another
 * session's or principal's key, or read for another upstream, it does not open (THREATS C2/C3).
 */
function mappingContext(owner: OwnerScope, upstream: string, sessionDigest: string): SealContext {
  return {
    purpose: SEAL_PURPOSE,
    owner: [owner.tenant, owner.issuer, owner.subject, upstream, sessionDigest],
  };
}

/**
 * The lease set of one tenant's live sessions (sessions.maxPerTenant); the tenant by digest only.
 * One set per kill generation: a kill switch ends every older session at once, but their leases would
 * hold the tenant's room until they expired (with no idle timeout, the absolute one), so sessions
 * created afterwards count in a fresh set. Generation 0 keeps the original key.
 */
function tenantLeaseKey(owner: OwnerScope, killGeneration: number): LeaseKey {
  const scope =
    killGeneration === 0 ? [owner.issuer, owner.tenant] : [owner.issuer, owner.tenant, killGeneration];
  return leaseKey(TENANT_LEASE_KIND, digest("tenant-sessions", JSON.stringify(scope)));
}

function mappingKey(owner: OwnerScope, sessionDigest: string): RecordKey {
  return ownedKey(owner, MAPPING_KIND, sessionDigest);
}

function isNonEmptyString(value: unknown): value is string {
  return typeof value === "string" && value.length > 0;
}

/** A record that does not parse to exactly this shape is treated as absent (fail closed). */
function parseRecord(text: string): SessionRecord | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof parsed !== "object" || parsed === null) return null;
  const r = parsed as Record<string, unknown>;
  if (
    r["v"] !== RECORD_VERSION ||
    !isNonEmptyString(r["tenant"]) ||
    !isNonEmptyString(r["issuer"]) ||
    !isNonEmptyString(r["subject"]) ||
    !isNonEmptyString(r["upstream"]) ||
    !isNonEmptyString(r["protocolVersion"]) ||
    !Number.isSafeInteger(r["createdAt"]) ||
    !Number.isSafeInteger(r["expiresAt"]) ||
    typeof r["expectsUpstreamSession"] !== "boolean" ||
    (r["killGeneration"] !== undefined &&
      (!Number.isSafeInteger(r["killGeneration"]) || (r["killGeneration"] as number) < 0)) ||
    (r["clientBinding"] !== undefined && !isBindingText(r["clientBinding"]))
  ) {
    return null;
  }
  return {
    v: RECORD_VERSION,
    tenant: r["tenant"],
    issuer: r["issuer"],
    subject: r["subject"],
    upstream: r["upstream"],
    protocolVersion: r["protocolVersion"],
    createdAt: r["createdAt"] as number,
    expiresAt: r["expiresAt"] as number,
    expectsUpstreamSession: r["expectsUpstreamSession"],
    killGeneration: (r["killGeneration"] as number | undefined) ?? 0,
    ...(r["clientBinding"] === undefined ? {} : { clientBinding: r["clientBinding"] as string }),
  };
}

function isBindingText(value: unknown): value is string {
  return typeof value === "string" && /^[A-Za-z0-9_-]{1,32}\.[A-Za-z0-9_-]{1,64}$/.test(value);
}

function recordOwner(record: SessionRecord): OwnerScope {
  return Object.freeze({ tenant: record.tenant, issuer: record.issuer, subject: record.subject });
}

function ownedBy(record: SessionRecord, principal: Principal): boolean {
  // samePrincipal compares issuer, subject and tenant: the same subject under another tenant or
  // issuer is someone else (THREATS A3). The record is compared through it, not field by field.
  return samePrincipal(principal, { ...principal, ...recordOwner(record) });
}

function sessionOf(record: SessionRecord, sessionDigest: string): Session {
  return Object.freeze({
    sessionDigest,
    owner: recordOwner(record),
    upstream: record.upstream,
    protocolVersion: record.protocolVersion,
    createdAt: record.createdAt,
    expiresAt: record.expiresAt,
    expectsUpstreamSession: record.expectsUpstreamSession,
    killGeneration: record.killGeneration ?? 0,
    clientBinding: record.clientBinding,
  });
}

function killKey(generation: number): RecordKey {
  return ownershipKey(KILL_KIND, String(generation));
}

export function createSessionRegistry(options: SessionRegistryOptions): SessionRegistry {
  const { store, keyring, absoluteTimeoutMs } = options;
  // Bounded by what every store accepts as a TTL, so the failure shows at start, not on first use.
  if (!Number.isSafeInteger(absoluteTimeoutMs) || absoluteTimeoutMs <= 0 || absoluteTimeoutMs > MAX_TTL_MS) {
    throw invalidArgument("absoluteTimeoutMs", `must be an integer from 1 to ${MAX_TTL_MS}`);
  }
  const now = options.now ?? Date.now;
  const onDenied = options.onDenied;
  const idleTimeoutMs = options.idleTimeoutMs;
  if (
    idleTimeoutMs !== undefined &&
    (!Number.isSafeInteger(idleTimeoutMs) || idleTimeoutMs <= 0 || idleTimeoutMs > MAX_TTL_MS)
  ) {
    throw invalidArgument("idleTimeoutMs", `must be an integer from 1 to ${MAX_TTL_MS}`);
  }
  const touchIntervalMs =
    idleTimeoutMs === undefined
      ? 0
      : (options.touchIntervalMs ?? Math.min(Math.floor(idleTimeoutMs / 10), 60_000));
  const lastTouch = new Map<string, number>();
  const maxPerTenant = options.maxPerTenant;
  if (maxPerTenant !== undefined && (!Number.isSafeInteger(maxPerTenant) || maxPerTenant < 1)) {
    throw invalidArgument("maxPerTenant", "must be a positive integer");
  }
  /**
   * The newest kill generation this replica has seen in the store. It only grows, and only from what
   * the store holds (never from a message), so it is never ahead of the store.
   */
  let knownGeneration = 0;
  let learning: Promise<number> | null = null;

  /**
   * Called once the record of generation `found` was read: reads the ones after it until one is
   * missing (kill switches are rare, so this is usually one read), and records the newest.
   */
  function learnGeneration(found: number): Promise<number> {
    if (found <= knownGeneration) return Promise.resolve(knownGeneration);
    const run = async (): Promise<number> => {
      let newest = Math.max(found, knownGeneration);
      while ((await store.get(killKey(newest + 1))) !== null) newest += 1;
      knownGeneration = Math.max(knownGeneration, newest);
      return knownGeneration;
    };
    // One walk at a time; callers that arrive meanwhile wait for it and then walk on if needed.
    const next = (learning ?? Promise.resolve(0)).catch(() => 0).then(run);
    learning = next;
    next.then(
      () => {
        if (learning === next) learning = null;
      },
      () => {
        if (learning === next) learning = null;
      },
    );
    return next;
  }

  /** The newest kill generation in the store: one read when nothing changed. */
  async function currentGeneration(): Promise<number> {
    const probe = knownGeneration + 1;
    if ((await store.get(killKey(probe))) === null) return knownGeneration;
    return learnGeneration(probe);
  }

  const killed = (record: SessionRecord): boolean => (record.killGeneration ?? 0) < knownGeneration;
  const seenKey = (owner: OwnerScope, sessionDigest: string): RecordKey =>
    ownedKey(owner, SEEN_KIND, sessionDigest);

  /**
   * Writes the activity record, unless this replica wrote it less than `touchIntervalMs` ago. Its TTL
   * is the idle timeout plus that interval (a throttled write may lag real activity by up to one
   * interval), never past the session's absolute expiry.
   */
  async function touch(
    owner: OwnerScope,
    killGeneration: number,
    sessionDigest: string,
    expiresAt: number,
    force = false,
  ): Promise<void> {
    if (idleTimeoutMs === undefined) return;
    const at = Math.floor(now());
    const last = lastTouch.get(sessionDigest);
    if (!force && last !== undefined && at - last < touchIntervalMs) return;
    forgetTouchesBefore(at - touchIntervalMs);
    if (lastTouch.size >= MAX_REMEMBERED_TOUCHES) lastTouch.clear();
    // Deleted first so the map stays in the order of the writes: the oldest are at its front.
    lastTouch.delete(sessionDigest);
    lastTouch.set(sessionDigest, at);
    const ttlMs = Math.min(idleTimeoutMs + touchIntervalMs, expiresAt - at);
    if (ttlMs <= 0) return;
    await Promise.all([
      store.put(seenKey(owner, sessionDigest), String(at), { ttlMs }),
      // The tenant slot lives as long as the activity record: an idle session frees it.
      maxPerTenant === undefined
        ? undefined
        : store.leaseRenew(tenantLeaseKey(owner, killGeneration), [sessionDigest], ttlMs),
    ]);
  }

  /**
   * A touch older than the throttle interval throttles nothing: the next use writes anyway. Dropping
   * them from the front keeps the map to the sessions used within one interval, so the memory of a
   * million sessions that have since expired is given back.
   */
  function forgetTouchesBefore(cutoff: number): void {
    for (const [digestOfSession, at] of lastTouch) {
      if (at > cutoff) return;
      lastTouch.delete(digestOfSession);
    }
  }

  /** How long a session's tenant slot lasts without activity: its idle window, never past its expiry. */
  function tenantLeaseTtl(expiresAt: number): number {
    const remaining = Math.max(1, expiresAt - Math.floor(now()));
    return idleTimeoutMs === undefined ? remaining : Math.min(idleTimeoutMs + touchIntervalMs, remaining);
  }

  function deny(denial: SessionDenial): null {
    try {
      const result: unknown = onDenied?.(denial);
      if (
        (typeof result === "object" || typeof result === "function") &&
        result !== null &&
        typeof (result as PromiseLike<unknown>).then === "function"
      ) {
        // Not awaited (the answer does not wait for the audit sink), but never left unhandled.
        (result as PromiseLike<unknown>).then(undefined, () => undefined);
      }
    } catch {
      // Deliberately ignored: see SessionRegistryOptions.onDenied.
    }
    return null;
  }

  /**
   * The live record the caller may use at `upstream`, or why not. Every check runs on what the one
   * read returned; none of them touches the store again.
   */
  function judge(
    wellFormed: boolean,
    text: string | null,
    principal: Principal,
    upstream: string,
  ): SessionRecord | SessionDenialReason {
    if (!wellFormed) return "malformed";
    if (text === null) return "unknown";
    const record = parseRecord(text);
    if (!record) return "record-invalid";
    // The store's TTL already hides expired records; this holds even if a backend's clock lags.
    if (record.expiresAt <= now()) return "expired";
    if (!ownedBy(record, principal)) return "foreign-principal";
    if (record.upstream !== upstream) return "other-upstream";
    // Against the newest generation this replica knows: resolve reads the store's first.
    if (killed(record)) return "kill-switch";
    return record;
  }

  async function removeSession(
    key: RecordKey,
    record: SessionRecord,
    sessionDigest: string,
  ): Promise<boolean> {
    const owner = recordOwner(record);
    // The ownership record goes first: once it is gone, resolve refuses whatever else remains.
    const removed = await store.delete(key);
    await store.delete(mappingKey(owner, sessionDigest));
    await store.delete(seenKey(owner, sessionDigest));
    lastTouch.delete(sessionDigest);
    await store.indexRemove(ownerIndexKey(owner, SESSION_KIND), sessionDigest);
    if (maxPerTenant !== undefined) {
      await store.leaseRelease(tenantLeaseKey(owner, record.killGeneration ?? 0), sessionDigest);
    }
    return removed;
  }

  /**
   * sessions.maxPerPrincipal, from the principal's own index (members expire with their sessions,
   * and ended ones are removed, so the count heals by itself). Not atomic: concurrent creates by one
   * principal can pass the check together, so the cap may be exceeded by the number of creates that
   * principal runs at once; it can never touch another principal's sessions (docs/decisions.md).
   * At the cap, only live sessions hold a slot: a session gone idle (404 for its owner already) is
   * removed, and an entry whose record is gone leaves the index, before the cap is judged. Returns
   * the principal's sessions it removed.
   */
  async function makeRoomFor(principal: Principal, generation: Promise<number>): Promise<Session[]> {
    const max = options.maxPerPrincipal;
    if (max === undefined) return [];
    const owner = ownerScope(principal);
    const index = ownerIndexKey(owner, SESSION_KIND);
    const members = await store.indexList(index);
    if (members.length < max) return [];
    // A store failure here rejects the create (fail closed): an unread session is never assumed gone.
    const entries = await Promise.all(
      members.map(async (member) => {
        let key: RecordKey;
        try {
          key = ownershipKeyFromDigest(SESSION_KIND, member);
        } catch {
          return { member, key: null, record: null, idle: false };
        }
        const [text, seen] = await Promise.all([
          store.get(key),
          idleTimeoutMs === undefined ? Promise.resolve("") : store.get(seenKey(owner, member)),
        ]);
        const parsed = text === null ? null : parseRecord(text);
        const record = parsed && ownedBy(parsed, principal) && parsed.expiresAt > now() ? parsed : null;
        return { member, key, record, idle: seen === null };
      }),
    );
    // Sessions the kill switch ended stay in the index until they expire; they hold no slot.
    await generation;
    const removed: Session[] = [];
    const live: { key: RecordKey; record: SessionRecord; member: string }[] = [];
    for (const { member, key, record, idle } of entries) {
      if (key === null || record === null || killed(record)) {
        await store.indexRemove(index, member);
      } else if (idle) {
        if (await revokeKey(key, principal)) removed.push(sessionOf(record, member));
      } else {
        live.push({ key, record, member });
      }
    }
    if (live.length < max) return removed;
    if (options.onLimit !== "evict-oldest") {
      throw new GateError("ERR_SESSION_LIMIT", "too many sessions", { detail: "max-per-principal" });
    }
    // The oldest of the principal's own live sessions, by their records' creation times.
    live.sort((a, b) => a.record.createdAt - b.record.createdAt);
    for (const entry of live.slice(0, live.length - max + 1)) {
      if (await revokeKey(entry.key, principal)) removed.push(sessionOf(entry.record, entry.member));
    }
    return removed;
  }

  /**
   * The live sessions behind a principal's index entries that the principal really owns (an index
   * entry is only a hint: its record is read and its owner checked), oldest first. Sessions the kill
   * switch ended are left out.
   */
  async function ownedSessions(principal: Principal): Promise<Session[]> {
    const owner = ownerScope(principal);
    const members = await store.indexList(ownerIndexKey(owner, SESSION_KIND));
    await currentGeneration();
    const records = await Promise.all(
      members.map(async (member) => {
        let key: RecordKey;
        try {
          key = ownershipKeyFromDigest(SESSION_KIND, member);
        } catch {
          return null;
        }
        const [text, seen] = await Promise.all([
          store.get(key),
          idleTimeoutMs === undefined ? Promise.resolve("") : store.get(seenKey(owner, member)),
        ]);
        const record = text === null ? null : parseRecord(text);
        // Idle, expired or killed sessions already answer 404: they are not listed as live.
        const live =
          record !== null &&
          ownedBy(record, principal) &&
          !killed(record) &&
          seen !== null &&
          record.expiresAt > now();
        return live ? sessionOf(record, member) : null;
      }),
    );
    return records.filter((entry) => entry !== null).sort((x, y) => x.createdAt - y.createdAt);
  }

  /**
   * Operator removal of the session whose ownership record is `key`. With `onlyOwner`, a record owned
   * by anyone else is left alone (an index entry is not trusted to name its owner's sessions only).
   */
  async function revokeKey(key: RecordKey, onlyOwner?: Principal): Promise<boolean> {
    const text = await store.get(key);
    if (text === null) return false;
    const record = parseRecord(text);
    if (record === null) {
      // An unreadable record still names a session id someone may hold: remove it all the same. Its
      // owner is unknown, so its mapping and index entry are left to expire.
      return onlyOwner === undefined ? store.delete(key) : false;
    }
    if (onlyOwner !== undefined && !ownedBy(record, onlyOwner)) return false;
    return removeSession(key, record, digestOf(key));
  }

  return {
    async create(input) {
      const { principal, upstream, protocolVersion, upstreamSessionId } = input;
      // The generation is read alongside the cap check: a kill switch that fires after this read has
      // a higher generation, and so ends this session too.
      const generation = currentGeneration();
      generation.catch(() => undefined);
      checkLabel("upstream", upstream);
      checkLabel("protocolVersion", protocolVersion);
      if (upstreamSessionId !== undefined) checkUpstreamSessionId(upstreamSessionId);
      if (input.clientBinding !== undefined && !isBindingText(input.clientBinding)) {
        throw invalidArgument("clientBinding", "must be a key id and a base64url fingerprint");
      }
      const [killGeneration, evicted] = await Promise.all([generation, makeRoomFor(principal, generation)]);
      const expectsUpstreamSession = upstreamSessionId !== undefined || input.expectsUpstreamSession === true;
      const owner = ownerScope(principal);
      // Whole milliseconds: records hold integers, and an injected clock need not give one.
      const createdAt = Math.floor(now());
      const record: SessionRecord = {
        v: RECORD_VERSION,
        tenant: owner.tenant,
        issuer: owner.issuer,
        subject: owner.subject,
        upstream,
        protocolVersion,
        createdAt,
        expiresAt: createdAt + absoluteTimeoutMs,
        expectsUpstreamSession,
        killGeneration,
        ...(input.clientBinding === undefined ? {} : { clientBinding: input.clientBinding }),
      };
      const value = JSON.stringify(record);
      const ttl = { ttlMs: absoluteTimeoutMs };

      for (let attempt = 0; attempt < MAX_CREATE_ATTEMPTS; attempt++) {
        // Always our own fresh id: a lost claim means someone else holds it, so it is never adopted.
        const sessionId = mintId();
        const key = ownershipKey(SESSION_KIND, sessionId);
        const outcome = await store.claim(key, value, ttl);
        if (!outcome.won) continue;
        const sessionDigest = digestOf(key);
        try {
          // The tenant's slot, taken atomically before the session is usable or indexed; refused at
          // the cap, and the claimed record removed below (the client never learns this id).
          if (
            maxPerTenant !== undefined &&
            !(await store.leaseAcquire(
              tenantLeaseKey(owner, killGeneration),
              sessionDigest,
              maxPerTenant,
              tenantLeaseTtl(record.expiresAt),
            ))
          ) {
            throw new GateError("ERR_SESSION_LIMIT", "too many sessions", { detail: "max-per-tenant" });
          }
          // Activity first: a member of the index without it would look idle to a concurrent
          // create's makeRoomFor, which removes idle sessions.
          await touch(owner, killGeneration, sessionDigest, record.expiresAt, true);
          await store.indexAdd(ownerIndexKey(owner, SESSION_KIND), sessionDigest, ttl);
          if (upstreamSessionId !== undefined) {
            const sealed = seal(keyring, upstreamSessionId, mappingContext(owner, upstream, sessionDigest));
            const mapped = await store.claim(mappingKey(owner, sessionDigest), sealed, ttl);
            // The mapping of a session id that was free a moment ago cannot exist: something else
            // writes under these keys, so the session is not handed out with a value it did not set.
            if (!mapped.won) {
              throw new GateError("ERR_INTERNAL", "could not claim a fresh session's upstream mapping");
            }
          }
        } catch (error) {
          // The client never learns this id; removing its records is tidiness, not safety, so a
          // failure here (the store is likely down) leaves them to expire. After a lost mapping
          // claim this also deletes the value found there, which names this session and no other.
          await removeSession(key, record, sessionDigest).catch(() => undefined);
          throw error;
        }
        return { sessionId, session: sessionOf(record, sessionDigest), evicted };
      }
      throw new GateError("ERR_INTERNAL", "could not claim a fresh session id", {
        detail: `${MAX_CREATE_ATTEMPTS} claims of freshly minted ids were lost`,
      });
    },

    async setUpstreamSessionId(sessionId, principal, upstream, upstreamSessionId) {
      checkLabel("upstream", upstream);
      checkUpstreamSessionId(upstreamSessionId);
      const caller = ownerScope(principal);
      const { key, sessionDigest, wellFormed } = sessionKeyOf(sessionId);
      const refuse = (reason: SessionDenialReason): false => {
        deny({
          reason,
          operation: "set-upstream-session",
          sessionDigest: wellFormed ? sessionDigest : null,
          caller,
          upstream,
        });
        return false;
      };
      // One read for every caller before any decision, as in end.
      const verdict = judge(wellFormed, await store.get(key), principal, upstream);
      if (typeof verdict === "string") return refuse(verdict);
      const record = verdict;
      // Whole milliseconds: store TTLs are integers, and an injected clock need not be. The mapping
      // never outlives the session, nor the session's full lifetime (a clock that went back, or a
      // record whose expiry was tampered with, could otherwise give it a longer TTL).
      const remainingMs = Math.floor(record.expiresAt - now());
      if (remainingMs <= 0) return refuse("expired");
      const ttlMs = Math.max(1, Math.min(remainingMs, absoluteTimeoutMs));
      const owner = recordOwner(record);
      const mapping = mappingKey(owner, sessionDigest);
      const sealed = seal(keyring, upstreamSessionId, mappingContext(owner, record.upstream, sessionDigest));
      // claim, not put: an MCP server assigns its session id once (at initialize), so a second value
      // is refused rather than swapped in.
      const outcome = await store.claim(mapping, sealed, { ttlMs });
      if (!outcome.won) return false;
      // An end or revoke may have removed the session between the read above and the claim; its own
      // delete of the mapping then ran before our write. Read the ownership record again: if it is
      // gone (or changed), remove what we wrote. A removal after this read deletes the mapping itself.
      // (The record is never rewritten and ids are never reused, so present means the same session.)
      const after = await store.get(key);
      if (after === null || parseRecord(after) === null) {
        await store.delete(mapping);
        return refuse("unknown");
      }
      return true;
    },

    async resolve(sessionId, principal, upstream) {
      checkLabel("upstream", upstream);
      const caller = ownerScope(principal);
      const { key, sessionDigest, wellFormed } = sessionKeyOf(sessionId);
      // Both reads happen for every caller and every id; the mapping is read under the caller's own
      // scope, so only the owner's read can find it. A rejection (store down) rejects the resolve.
      // The two reads are not one snapshot: a resolve racing an end or revoke can see the record and
      // miss the mapping. A session that expects an upstream id is refused then ("mapping-missing");
      // for one that does not, null is the answer (see ResolvedSession.upstreamSessionId).
      // The kill switch's next generation is read with them, for every caller: present means a kill
      // switch fired that this replica has not seen yet, and it is learned before judging.
      // All of it is one getMany: one round trip to the store on the hot path.
      const probe = knownGeneration + 1;
      const [recordText = null, sealedMapping = null, nextKill = null, seen = null] = await store.getMany([
        key,
        mappingKey(caller, sessionDigest),
        killKey(probe),
        // Read under the caller's own scope, like the mapping: only the owner's read can find it.
        ...(idleTimeoutMs === undefined ? [] : [seenKey(caller, sessionDigest)]),
      ]);
      if (nextKill !== null) await learnGeneration(probe);
      const verdict = judge(wellFormed, recordText, principal, upstream);
      if (typeof verdict === "string") {
        return deny({
          reason: verdict,
          operation: "resolve",
          sessionDigest: wellFormed ? sessionDigest : null,
          caller,
          upstream,
        });
      }
      const record = verdict;
      if (idleTimeoutMs !== undefined && seen === null) {
        return deny({ reason: "idle", operation: "resolve", sessionDigest, caller, upstream });
      }
      let upstreamSessionId: string | null = null;
      if (sealedMapping !== null) {
        try {
          upstreamSessionId = openToString(
            keyring,
            sealedMapping,
            mappingContext(recordOwner(record), record.upstream, sessionDigest),
          );
        } catch {
          // A mapping that does not open was moved, tampered with or sealed under a retired key: the
          // session cannot reach its upstream safely, so it is refused like an unknown one.
          return deny({ reason: "mapping-invalid", operation: "resolve", sessionDigest, caller, upstream });
        }
      } else if (record.expectsUpstreamSession) {
        return deny({ reason: "mapping-missing", operation: "resolve", sessionDigest, caller, upstream });
      }
      // Activity, throttled; a failed write here is not the caller's problem (the next one retries).
      await touch(recordOwner(record), record.killGeneration ?? 0, sessionDigest, record.expiresAt).catch(
        () => undefined,
      );
      return Object.freeze({ ...sessionOf(record, sessionDigest), upstreamSessionId });
    },

    async anonymousOwner(sessionId, upstream) {
      checkLabel("upstream", upstream);
      const { key, sessionDigest, wellFormed } = sessionKeyOf(sessionId);
      const text = await store.get(key);
      const refuse = (reason: SessionDenialReason): null =>
        deny({
          reason,
          operation: "resolve",
          sessionDigest: wellFormed ? sessionDigest : null,
          caller: null,
          upstream,
        });
      if (!wellFormed) return refuse("malformed");
      if (text === null) return refuse("unknown");
      const record = parseRecord(text);
      if (record === null) return refuse("record-invalid");
      if (record.expiresAt <= now()) return refuse("expired");
      if (killed(record)) return refuse("kill-switch");
      // A session someone authenticated for is never reached without their credential (THREATS S1).
      if (record.issuer !== ANONYMOUS_ISSUER) return refuse("foreign-principal");
      return makePrincipal({
        kind: "anonymous",
        issuer: ANONYMOUS_ISSUER,
        subject: record.subject,
        tenant: record.tenant,
        scopes: [],
        expiresAt: null,
      });
    },

    async keepAlive(session) {
      await touch(session.owner, session.killGeneration, session.sessionDigest, session.expiresAt);
    },

    async end(sessionId, principal, upstream) {
      checkLabel("upstream", upstream);
      const caller = ownerScope(principal);
      const { key, sessionDigest, wellFormed } = sessionKeyOf(sessionId);
      // One read for every caller before any decision, as in resolve; only the owner goes further.
      const verdict = judge(wellFormed, await store.get(key), principal, upstream);
      if (typeof verdict === "string") {
        deny({
          reason: verdict,
          operation: "end",
          sessionDigest: wellFormed ? sessionDigest : null,
          caller,
          upstream,
        });
        return false;
      }
      return removeSession(key, verdict, sessionDigest);
    },

    async revoke(sessionId) {
      if (!isWellFormedSessionId(sessionId)) return false;
      return revokeKey(ownershipKey(SESSION_KIND, sessionId));
    },

    async revokeByDigest(sessionDigest) {
      // Throws ERR_ARGUMENT_INVALID for anything but a digest's shape.
      return revokeKey(ownershipKeyFromDigest(SESSION_KIND, sessionDigest));
    },

    async revokeAll(principal) {
      const index = ownerIndexKey(ownerScope(principal), SESSION_KIND);
      let removed = 0;
      for (const member of await store.indexList(index)) {
        let key: RecordKey;
        try {
          key = ownershipKeyFromDigest(SESSION_KIND, member);
        } catch {
          // Not a digest this registry wrote: drop the entry, there is nothing it can name.
          await store.indexRemove(index, member);
          continue;
        }
        if (await revokeKey(key, principal)) removed += 1;
        // Whatever the record said (gone, someone else's, unreadable), the entry leaves this index.
        await store.indexRemove(index, member);
      }
      return removed;
    },

    async list(principal) {
      return store.indexList(ownerIndexKey(ownerScope(principal), SESSION_KIND));
    },

    describe(principal) {
      return ownedSessions(principal);
    },

    async killSwitch() {
      const newest = await currentGeneration();
      const generation = newest + 1;
      const value = JSON.stringify({ v: KILL_RECORD_VERSION, generation, createdAt: Math.floor(now()) });
      // Claimed, never put: a generation is written once and never goes back, whatever replicas race.
      // Lost: another kill switch claimed this generation after the read above, so after this call
      // began; it refuses every session this one would have, and this one adopts it.
      await store.claim(killKey(generation), value);
      return learnGeneration(generation);
    },
  };
}
