import type { BucketKey, CounterKey, IndexKey, LeaseKey, RecordKey } from "./keys.ts";

/**
 * The storage contract every backend implements: only the atomic primitives the rest of tenantgate
 * needs, each one atomic on its own (no caller ever composes a check and a write).
 *
 * Failure semantics, the same on every backend:
 * - A backend that cannot answer (down, hung, locked) rejects with `ERR_STORE_UNAVAILABLE` once it
 *   has not answered for the adapter's timeout, including calls queued behind it; a backend that
 *   is busy but answering is not unavailable. Callers fail closed (DESIGN invariant 6). The outcome
 *   of such a call is unknown: on a networked backend a timed-out write may still have been applied
 *   (adapters never resend it, so it is applied at most once).
 * - A bounded store that is full rejects new entries with `ERR_STORE_FULL`; it never evicts.
 * - Invalid arguments reject with `ERR_ARGUMENT_INVALID`.
 * - An expired entry is indistinguishable from an absent one.
 *
 * Values are strings (JSON, digests or sealed text). Times are milliseconds.
 */

export type StoreBackend = "memory" | "sqlite" | "redis" | "postgres";

export interface TtlOptions {
  /** Time to live in ms (a positive integer). Absent: the entry does not expire. */
  readonly ttlMs?: number;
}

export interface ClaimOutcome {
  /** True for exactly one caller per (unexpired) record: the one whose value was written. */
  readonly won: boolean;
  /** The value now stored: the winner's, which every caller learns. */
  readonly winner: string;
}

export interface CounterOptions extends TtlOptions {
  /**
   * Refuse a positive `delta` if the result would exceed this value. The check and the add are one
   * atomic step, so a cap is never exceeded under concurrency. A negative `delta` (a release) is
   * never refused.
   */
  readonly limit?: number;
}

export interface CounterOutcome {
  /** False when `limit` refused the increment; the counter is then unchanged. */
  readonly applied: boolean;
  /** The counter's value after the operation (the unchanged value when refused). */
  readonly value: number;
}

export interface TokenBucket {
  /** Most tokens the bucket holds (a finite number from the cost, at least 0.001, to 1e9). */
  readonly capacity: number;
  /**
   * Tokens added per second (a positive finite number, at most 1e6). An empty bucket must refill
   * within the store's longest TTL (30 days): capacity / refillPerSecond <= 2,592,000.
   */
  readonly refillPerSecond: number;
  /**
   * Tokens this call takes: a finite number from 0.001 (well above the 1e-6 tokens of rounding slack
   * every backend allows) to `capacity`. Default 1.
   */
  readonly cost?: number;
}

export interface TokenOutcome {
  /** True if `cost` tokens were taken. A refused call takes nothing. */
  readonly allowed: boolean;
  /** Whole tokens left after this call (rounded down). */
  readonly remaining: number;
  /** 0 when allowed; otherwise ms until `cost` tokens will be there (>= 1). */
  readonly retryAfterMs: number;
}

export interface Store {
  readonly backend: StoreBackend;

  /** The value, or null if absent or expired. */
  get(key: RecordKey): Promise<string | null>;

  /**
   * Each key's value (null where absent or expired), in the order given, read in one round trip
   * (one MGET, one statement): a hot path that needs several records pays one network wait. Not a
   * snapshot across keys on every backend; callers that need one must not rely on it. At most
   * MAX_BATCH_KEYS keys.
   */
  getMany(keys: readonly RecordKey[]): Promise<Array<string | null>>;

  /** Writes (or overwrites) the value. */
  put(key: RecordKey, value: string, options?: TtlOptions): Promise<void>;

  /**
   * First writer wins: writes `value` only if no unexpired record exists. Every concurrent caller,
   * on every connection and process, learns the same winner.
   */
  claim(key: RecordKey, value: string, options?: TtlOptions): Promise<ClaimOutcome>;

  /** Atomic read-and-delete: of concurrent takers, exactly one gets the value. */
  take(key: RecordKey): Promise<string | null>;

  /**
   * Deletes only if the stored value equals `expected` (atomically); true if it did. Lets a caller
   * inspect a single-use value and consume it only if it was presented by the right party, without
   * destroying it otherwise. An `expected` that is not well-formed Unicode never matches (no stored
   * value can be ill-formed: `put` refuses them, and a driver's conversion to U+FFFD must not
   * create a match).
   */
  takeIfEquals(key: RecordKey, expected: string): Promise<boolean>;

  /**
   * Compare-and-set: replaces the value with `value` only if the live value equals `expected`
   * exactly (atomically), keeping the record's expiry; true if it did. An absent or expired record,
   * or a different value, answers false and writes nothing. Lets a caller rewrite exactly what it
   * read (a value re-sealed under a new key) without overwriting a concurrent `put`: of concurrent
   * replacements of one value, on every connection and process, exactly one succeeds. `value` is
   * checked as for `put`; an `expected` that is not well-formed Unicode never matches (as in
   * `takeIfEquals`).
   */
  replaceIfEquals(key: RecordKey, expected: string, value: string): Promise<boolean>;

  /** True if an unexpired record was deleted. */
  delete(key: RecordKey): Promise<boolean>;

  /**
   * Adds `delta` (an integer, |delta| <= 2^32, may be negative) to a counter; an absent or expired
   * counter reads as 0.
   * - The result is floored at 0: a release that arrives after the counter expired cannot push it
   *   negative and so raise the effective cap.
   * - A counter that reaches 0 is removed (it takes no space; absent and 0 are the same).
   * - The TTL applies when the counter is created (or recreated after expiry or removal) and is not
   *   extended by later increments.
   */
  increment(key: CounterKey, delta: number, options?: CounterOptions): Promise<CounterOutcome>;

  /** Adds (or refreshes the expiry of) a member of a per-owner index. */
  indexAdd(key: IndexKey, member: string, options?: TtlOptions): Promise<void>;

  /** True if the member was present. */
  indexRemove(key: IndexKey, member: string): Promise<boolean>;

  /** Unexpired members, in no particular order. */
  indexList(key: IndexKey): Promise<string[]>;

  /**
   * Token bucket: refills continuously at refillPerSecond up to capacity (a bucket starts full);
   * takes `cost` tokens if that many are available. Atomic; time is the store's own clock on
   * networked backends so replicas with skewed clocks share one bucket. The entry expires once it
   * would be full again (it takes no space when idle).
   * - Concurrent takes on every connection and process never take more than the bucket holds.
   * - A bucket read under other parameters than it was filled with keeps its time to full: the
   *   tokens it lacks are re-read at the new refill rate, capped at the new capacity.
   * - On a bounded memory store, a take that must create the entry (the bucket was full) rejects
   *   with `ERR_STORE_FULL` when the store is full; a refused take never needs a new entry.
   */
  takeTokens(key: BucketKey, bucket: TokenBucket): Promise<TokenOutcome>;

  /**
   * Lease set: adds `member` with expiry now+ttlMs only if fewer than `limit` unexpired members
   * exist (a member already present is refreshed and counts as acquired). Expired members are
   * dropped first. Atomic: concurrent acquirers on any connection or process never exceed limit.
   * `limit` is an integer from 0 to 2^32; `ttlMs` as for TTLs; `member` as for index members. A
   * refused acquire writes nothing but the removal of expired members.
   */
  leaseAcquire(key: LeaseKey, member: string, limit: number, ttlMs: number): Promise<boolean>;

  /**
   * Refreshes the expiry of those members that still exist (never re-adds an expired one);
   * returns how many were refreshed. At most 10,000 members a call; duplicates count once. Never
   * refused by a full store (it adds nothing).
   */
  leaseRenew(key: LeaseKey, members: readonly string[], ttlMs: number): Promise<number>;

  /**
   * Removes a member; true if it was present and unexpired. Never refused by a full store, so a
   * slot is always given back. An ill-formed `member` was never added: false.
   */
  leaseRelease(key: LeaseKey, member: string): Promise<boolean>;

  /** Unexpired member count. */
  leaseCount(key: LeaseKey): Promise<number>;

  /** Resolves when the backend answers (readiness). */
  ping(): Promise<void>;

  /** Releases connections and timers. Further calls reject. Closing twice is harmless. */
  close(): Promise<void>;
}
