import type { BucketParameters } from "./arguments.ts";
import type { TokenOutcome } from "./contract.ts";

/**
 * The token bucket arithmetic every adapter shares (memory and SQLite run it here; the Redis script
 * and the PostgreSQL statement spell the same steps, and their comments point here).
 *
 * A bucket is stored as one number: the instant, in ms on the store's clock, at which it will be
 * full again (`fullAt`). An absent entry, or one whose instant has passed, is a full bucket. The
 * tokens it lacks at `now` are `(fullAt - now) * refillPerMs`, capped at `capacity`; a take of
 * `cost` is allowed when lack + cost <= capacity and moves `fullAt` to now + (lack + cost) /
 * refillPerMs. This is a continuously refilling token bucket with one stored value, and `fullAt` is
 * also the entry's expiry: an idle bucket is full and takes no space.
 */

/**
 * Slack, in tokens, for floating-point rounding: a caller who waited the retry time it was given
 * finds the tokens there even if the subtraction came out a hair short.
 */
export const BUCKET_EPSILON = 1e-6;

export interface BucketStep {
  readonly allowed: boolean;
  /** The new instant the bucket is full again; only meaningful when allowed. */
  readonly fullAt: number;
  /** Tokens left after the call, unrounded. */
  readonly remaining: number;
  /** When refused, ms until `cost` tokens will be there, unrounded. */
  readonly waitMs: number;
}

export function stepBucket(storedFullAt: number | null, now: number, bucket: BucketParameters): BucketStep {
  const { capacity, refillPerMs, cost } = bucket;
  // A stored instant in the future of a clock that stepped back reads as more lacking, never less.
  const ahead = storedFullAt === null ? 0 : Math.max(0, storedFullAt - now);
  const lacking = Math.min(ahead * refillPerMs, capacity);
  const after = lacking + cost;
  if (after <= capacity + BUCKET_EPSILON) {
    return { allowed: true, fullAt: now + after / refillPerMs, remaining: capacity - after, waitMs: 0 };
  }
  return {
    allowed: false,
    fullAt: storedFullAt ?? now,
    remaining: capacity - lacking,
    waitMs: (after - capacity) / refillPerMs,
  };
}

/** The contract's outcome from a backend's raw numbers: whole tokens left, retry in whole ms >= 1. */
export function tokenOutcome(allowed: boolean, remaining: number, waitMs: number): TokenOutcome {
  const whole = Math.max(0, Math.floor(remaining + BUCKET_EPSILON));
  if (allowed) return { allowed, remaining: whole, retryAfterMs: 0 };
  return { allowed, remaining: whole, retryAfterMs: Math.max(1, Math.ceil(waitMs)) };
}
