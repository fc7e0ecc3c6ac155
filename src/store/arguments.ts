import { GateError, invalidArgument } from "../errors.ts";
import type { CounterOptions, StoreBackend, TtlOptions } from "./contract.ts";

/**
 * Argument checks shared by every adapter, so that each backend refuses exactly the same inputs and
 * the conformance suite can hold them all to it.
 */

/** 30 days: nothing tenantgate stores lives longer without being rewritten. */
export const MAX_TTL_MS = 30 * 24 * 60 * 60 * 1000;
/** 1 MiB per value: the largest sealed record tenantgate writes is far smaller. */
export const MAX_VALUE_LENGTH = 1 << 20;
const MAX_MEMBER_LENGTH = 1024;

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
