import { GateError, invalidArgument } from "../errors.ts";
import type { CounterOptions, StoreBackend, TokenBucket, TtlOptions } from "./contract.ts";

/**
 * Argument checks shared by every adapter, so that each backend refuses exactly the same inputs and
 * the conformance suite can hold them all to it.
 */

/** 30 days: nothing tenantgate stores lives longer without being rewritten. */
export const MAX_TTL_MS = 30 * 24 * 60 * 60 * 1000;
/** 1 MiB per value: the largest sealed record tenantgate writes is far smaller. */
export const MAX_VALUE_LENGTH = 1 << 20;
/** Characters per index or lease member. */
export const MAX_MEMBER_LENGTH = 1024;
/** Keys per getMany: a hot-path read of a handful of records, never a scan. */
export const MAX_BATCH_KEYS = 64;

export function checkTtl(options: TtlOptions | undefined): number | undefined {
  const ttlMs = options?.ttlMs;
  if (ttlMs === undefined) return undefined;
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0 || ttlMs > MAX_TTL_MS) {
    throw invalidArgument("ttlMs", `must be an integer from 1 to ${MAX_TTL_MS}`);
  }
  return ttlMs;
}

export function checkValue(value: string): void {
  if (typeof value !== "string") throw invalidArgument("value", "must be a string");
  if (value.length > MAX_VALUE_LENGTH) throw invalidArgument("value", "is too long");
  if (!value.isWellFormed()) throw invalidArgument("value", "must be well-formed Unicode");
}

export function checkBatch(keys: readonly unknown[]): void {
  if (!Array.isArray(keys) || keys.length > MAX_BATCH_KEYS) {
    throw invalidArgument("keys", `must be an array of at most ${MAX_BATCH_KEYS} keys`);
  }
}

export function checkMember(member: string): void {
  if (typeof member !== "string" || member.length === 0 || member.length > MAX_MEMBER_LENGTH) {
    throw invalidArgument("member", `must be a string of 1 to ${MAX_MEMBER_LENGTH} characters`);
  }
  if (!member.isWellFormed()) throw invalidArgument("member", "must be well-formed Unicode");
}

/**
 * Bounded deltas keep counters far inside ±2^53, where every backend (JS numbers, SQLite and
 * PostgreSQL bigint, Redis integers) agrees: reaching 2^53 would take 2^21 maximal increments.
 */
export const MAX_COUNTER_DELTA = 2 ** 32;

export function checkCounter(
  delta: number,
  options: CounterOptions | undefined,
): {
  ttlMs: number | undefined;
  limit: number | undefined;
} {
  if (!Number.isSafeInteger(delta) || Math.abs(delta) > MAX_COUNTER_DELTA) {
    throw invalidArgument("delta", `must be an integer from -${MAX_COUNTER_DELTA} to ${MAX_COUNTER_DELTA}`);
  }
  const limit = options?.limit;
  if (limit !== undefined && !Number.isSafeInteger(limit)) {
    throw invalidArgument("limit", "must be a safe integer");
  }
  return { ttlMs: checkTtl(options), limit };
}

export function storeUnavailable(backend: StoreBackend, cause: unknown): GateError {
  return new GateError("ERR_STORE_UNAVAILABLE", "store unavailable", {
    detail: `${backend} store did not answer`,
    cause,
  });
}

export function storeClosed(backend: StoreBackend): GateError {
  return new GateError("ERR_STORE_UNAVAILABLE", "store unavailable", {
    detail: `${backend} store is closed`,
  });
}

/** Bounds on a token bucket, far inside what doubles hold exactly enough on every backend. */
export const MAX_BUCKET_CAPACITY = 1e9;
export const MAX_BUCKET_REFILL_PER_SECOND = 1e6;
/** The smallest cost a take may have (and so the smallest capacity): see checkBucket. */
export const MIN_BUCKET_COST = 1e-3;

/** A bucket as every adapter computes it: rates per millisecond, cost resolved. */
export interface BucketParameters {
  readonly capacity: number;
  readonly refillPerMs: number;
  readonly cost: number;
}

function positiveFinite(name: string, value: unknown, max: number): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0 || value > max) {
    throw invalidArgument(name, `must be a positive finite number of at most ${max}`);
  }
  return value;
}

export function checkBucket(bucket: TokenBucket): BucketParameters {
  if (typeof bucket !== "object" || bucket === null) throw invalidArgument("bucket", "must be an object");
  const capacity = positiveFinite("capacity", bucket.capacity, MAX_BUCKET_CAPACITY);
  const refillPerSecond = positiveFinite(
    "refillPerSecond",
    bucket.refillPerSecond,
    MAX_BUCKET_REFILL_PER_SECOND,
  );
  // The entry lives until the bucket is full again, and nothing a store holds outlives MAX_TTL_MS.
  if ((capacity / refillPerSecond) * 1000 > MAX_TTL_MS) {
    throw invalidArgument("refillPerSecond", "must refill an empty bucket within 30 days");
  }
  // Checked when defaulted too: a bucket smaller than its cost would refuse every take forever.
  const cost = positiveFinite("cost", bucket.cost ?? 1, capacity);
  // Every backend compares with BUCKET_EPSILON (1e-6 tokens) of slack and caps the tokens lacking at
  // capacity, so a cost inside the slack is admitted by every take however empty the bucket is, and
  // rates that small underflow to 0 per ms. From MIN_BUCKET_COST up the slack is at most a
  // thousandth of one take (capacity >= cost, so both bounds hold for capacity and refill too).
  if (cost < MIN_BUCKET_COST) throw invalidArgument("cost", `must be at least ${MIN_BUCKET_COST}`);
  return { capacity, refillPerMs: refillPerSecond / 1000, cost };
}

/** Members a lease set may be asked to admit at once; also the most `leaseRenew` takes a call. */
export const MAX_LEASE_LIMIT = 2 ** 32;
export const MAX_LEASE_RENEW_MEMBERS = 10_000;

export function checkLease(limit: number, ttlMs: number): { limit: number; ttlMs: number } {
  if (!Number.isSafeInteger(limit) || limit < 0 || limit > MAX_LEASE_LIMIT) {
    throw invalidArgument("limit", `must be an integer from 0 to ${MAX_LEASE_LIMIT}`);
  }
  return { limit, ttlMs: checkLeaseTtl(ttlMs) };
}

export function checkLeaseTtl(ttlMs: number): number {
  // A lease always expires: that is what frees the slot of a replica that died.
  if (ttlMs === undefined) throw invalidArgument("ttlMs", "is required");
  return checkTtl({ ttlMs }) as number;
}

/** The distinct members of a renewal, each checked like any member. */
export function checkLeaseMembers(members: readonly string[]): string[] {
  if (!Array.isArray(members)) throw invalidArgument("members", "must be an array");
  if (members.length > MAX_LEASE_RENEW_MEMBERS) {
    throw invalidArgument("members", `must hold at most ${MAX_LEASE_RENEW_MEMBERS} members`);
  }
  for (const member of members) checkMember(member);
  return [...new Set(members)];
}
