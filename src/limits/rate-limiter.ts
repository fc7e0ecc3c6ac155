import { digest } from "../crypto/ids.ts";
import { invalidArgument, isGateError } from "../errors.ts";
import { type BucketParameters, checkBucket } from "../store/arguments.ts";
import type { Store, StoreBackend, TokenOutcome } from "../store/contract.ts";
import { bucketKey } from "../store/keys.ts";
import { stepBucket } from "../store/token-bucket.ts";

/**
 * Per-principal rate limits (THREATS L2) on the store's token buckets, shared by every replica.
 *
 * DESIGN invariant 6: rate limiting may fail open only onto a reduced local limit. When the store is
 * unreachable (`ERR_STORE_UNAVAILABLE`) a decision comes from an in-process bucket with capacity and
 * refill multiplied by `fallbackFactor`, marked `degraded`, so each replica alone lets through a
 * fraction of the shared rate. Every other failure, including a full store, is the caller's to
 * answer (fail closed). A memory store lives in this process and is never unreachable: its errors
 * pass through, and no fallback is kept.
 *
 * During an outage one call at a time, at most every `storeRetryIntervalMs`, asks the store again;
 * the others decide locally at once instead of each waiting out the store's timeout. The first
 * answer from the store ends the outage and every call goes back to the shared bucket.
 */

export interface RateLimiterOptions {
  readonly store: Store;
  /** Tokens a principal's bucket holds (each request takes 1): at least 1. */
  readonly capacity: number;
  readonly refillPerSecond: number;
  /** Share of capacity and refill each replica allows on its own during an outage. Default 0.25. */
  readonly fallbackFactor?: number;
  /** Called once when an outage begins, not per request. A hook that throws changes nothing. */
  readonly onFallback?: (event: RateLimitFallback) => void | Promise<void>;
  /** Clock of the local fallback buckets and the retry interval, in epoch ms; tests move it. */
  readonly now?: () => number;
  /** Local fallback buckets kept; the least recently used beyond this are dropped. Default 10,000. */
  readonly maxLocalBuckets?: number;
  /** During an outage, how often a call asks the store again. Default 1,000 ms. */
  readonly storeRetryIntervalMs?: number;
  /** Bucket kind in the store, so limiters with different rates never share buckets. Default "rate". */
  readonly kind?: string;
}

export interface RateLimitFallback {
  readonly backend: StoreBackend;
}

export interface RateDecision {
  readonly allowed: boolean;
  /** For `Retry-After`: 0 when allowed; otherwise whole seconds until a request will be, at least 1. */
  readonly retryAfterSeconds: number;
  /** True when the decision came from this replica's reduced local bucket (the store did not answer). */
  readonly degraded: boolean;
}

export interface RateLimiter {
  /**
   * Takes one token from the bucket of `scopeKey`, an opaque string the caller builds from
   * (issuer, tenant, subject). It is digested into the bucket key, so no identifier reaches the
   * store and no two scope keys share a bucket however they are spelt.
   */
  take(scopeKey: string): Promise<RateDecision>;
  /**
   * The shared bucket's decision only, for a take started before the request is known to be
   * admitted (AdmissionTicket.takeRateEarly): null, with nothing taken from the reduced local bucket
   * and no outage started or probed, when the decision would come from the local fallback (the store
   * does not answer, or is known not to). A request then refused for another reason (503 while the
   * store is down) has spent nothing of the local budget; `take` decides for one that is admitted.
   * Every other failure rejects, as with `take` (fail closed).
   */
  takeShared?(scopeKey: string): Promise<RateDecision | null>;
}

const DEFAULT_FALLBACK_FACTOR = 0.25;

/** A decision of the shared bucket in the store. */
function sharedDecision(outcome: TokenOutcome): RateDecision {
  return {
    allowed: outcome.allowed,
    retryAfterSeconds: outcome.allowed ? 0 : Math.max(1, Math.ceil(outcome.retryAfterMs / 1000)),
    degraded: false,
  };
}
const DEFAULT_MAX_LOCAL_BUCKETS = 10_000;
const DEFAULT_STORE_RETRY_INTERVAL_MS = 1_000;

export function createRateLimiter(options: RateLimiterOptions): RateLimiter {
  const { store, onFallback } = options;
  const shared = { capacity: options.capacity, refillPerSecond: options.refillPerSecond };
  // Refuses a bucket the store would refuse, and one too small for a single request.
  checkBucket(shared);
  const kind = options.kind ?? "rate";
  // Builds one key now so that a bad kind is refused at creation, not on the first request.
  bucketKey(kind, "probe");
  const factor = options.fallbackFactor ?? DEFAULT_FALLBACK_FACTOR;
  if (typeof factor !== "number" || !(factor > 0 && factor <= 1)) {
    throw invalidArgument("fallbackFactor", "must be a number in (0, 1]");
  }
  const maxLocalBuckets = options.maxLocalBuckets ?? DEFAULT_MAX_LOCAL_BUCKETS;
  if (!Number.isSafeInteger(maxLocalBuckets) || maxLocalBuckets < 1) {
    throw invalidArgument("maxLocalBuckets", "must be a positive integer");
  }
  const retryIntervalMs = options.storeRetryIntervalMs ?? DEFAULT_STORE_RETRY_INTERVAL_MS;
  if (!Number.isSafeInteger(retryIntervalMs) || retryIntervalMs < 0) {
    throw invalidArgument("storeRetryIntervalMs", "must be a non-negative integer");
  }
  const now = options.now ?? Date.now;
  // A reduced bucket still admits one request: a factor that rounds capacity below one token would
  // turn the fallback into a refusal of everyone, which is failing closed, not onto a lower limit.
  const local: BucketParameters = {
    capacity: Math.max(1, options.capacity * factor),
    refillPerMs: (options.refillPerSecond * factor) / 1000,
    cost: 1,
  };
  const canFallBack = store.backend !== "memory";

  /** Instant each local bucket is full again, in least-recently-used order (Map keeps insertion). */
  const localBuckets = new Map<string, number>();
  let degraded = false;
  /** Bumped at every outage start and end: a call acts on the state only if it saw the current one. */
  let generation = 0;
  let lastAttemptAt = Number.NEGATIVE_INFINITY;
  let attemptInFlight = false;

  const decideLocally = (bucketId: string): RateDecision => {
    const at = now();
    const stored = localBuckets.get(bucketId);
    const step = stepBucket(stored ?? null, at, local);
    // Deleted and set again, so the Map's order is least recently used first.
    localBuckets.delete(bucketId);
    const fullAt = step.allowed ? step.fullAt : stored;
    // A bucket that is full again is the same as none: nothing to keep.
    if (fullAt !== undefined && fullAt > at) localBuckets.set(bucketId, fullAt);
    // Fallback buckets are the one place tenantgate evicts: see docs/decisions.md.
    while (localBuckets.size > maxLocalBuckets) {
      const oldest = localBuckets.keys().next().value as string;
      localBuckets.delete(oldest);
    }
    return {
      allowed: step.allowed,
      retryAfterSeconds: step.allowed ? 0 : Math.max(1, Math.ceil(step.waitMs / 1000)),
      degraded: true,
    };
  };

  const notifyFallback = (): void => {
    if (!onFallback) return;
    try {
      const result = onFallback({ backend: store.backend });
      if (result instanceof Promise) result.catch(() => {});
    } catch {
      // A failing hook must not change the decision.
    }
  };

  const bucketOf = (scopeKey: string) => {
    if (typeof scopeKey !== "string" || scopeKey.length === 0) {
      throw invalidArgument("scopeKey", "must be a non-empty string");
    }
    const bucketId = digest("rate-limit", scopeKey);
    return { bucketId, key: bucketKey(kind, bucketId) };
  };

  return {
    async takeShared(scopeKey: string): Promise<RateDecision | null> {
      const { key } = bucketOf(scopeKey);
      if (degraded) return null;
      try {
        const outcome = await store.takeTokens(key, shared);
        return sharedDecision(outcome);
      } catch (error) {
        if (canFallBack && isGateError(error, "ERR_STORE_UNAVAILABLE")) return null;
        throw error;
      }
    },

    async take(scopeKey: string): Promise<RateDecision> {
      const { bucketId, key } = bucketOf(scopeKey);
      if (degraded && (attemptInFlight || now() - lastAttemptAt < retryIntervalMs)) {
        return decideLocally(bucketId);
      }
      const seen = generation;
      const probing = degraded;
      if (probing) {
        attemptInFlight = true;
        lastAttemptAt = now();
      }
      try {
        const outcome = await store.takeTokens(key, shared);
        if (degraded && probing && seen === generation) {
          // The store answered a call made during the outage: the outage is over.
          degraded = false;
          generation++;
          localBuckets.clear();
        }
        return sharedDecision(outcome);
      } catch (error) {
        if (!canFallBack || !isGateError(error, "ERR_STORE_UNAVAILABLE")) throw error;
        // A failure that began before a recovery says nothing about the store now: answer it
        // locally without starting an outage, and the next call asks the store.
        if (!degraded && seen === generation) {
          degraded = true;
          generation++;
          lastAttemptAt = now();
          notifyFallback();
        }
        return decideLocally(bucketId);
      } finally {
        if (probing) attemptInFlight = false;
      }
    },
  };
}
