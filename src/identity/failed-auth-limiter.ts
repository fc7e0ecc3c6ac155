import { createHmac, randomBytes } from "node:crypto";
import { isIPv4, isIPv6 } from "node:net";
import { invalidArgument } from "../errors.ts";

/**
 * Per-address limiting of failed authentications (THREATS L2, DESIGN invariant 7). The gateway
 * asks `check` before any token work, so a client that keeps sending bad credentials stops costing
 * signature checks, JWKS fetches and digest lookups.
 *
 * Each address has a leaky bucket: a failure adds 1, and the level drains continuously at
 * `maxFailures` per `windowMs`. An address is refused while one more failure would overflow
 * `maxFailures`. The level is capped at `maxFailures`, so a refused address gets one new attempt
 * every `windowMs / maxFailures`, and after `windowMs` without failures it is forgotten: there is
 * no permanent lockout, however long the abuse went on (a counter that never decays locked users
 * out for good in the Google Workspace incident).
 *
 * Memory is bounded: at most `maxTrackedAddresses` buckets. When the table is full, fully drained
 * buckets are swept (at most once per drain interval); if it is still full, new addresses count in
 * one of `OVERFLOW_BUCKETS` overflow buckets with a higher limit, chosen by a keyed hash with a
 * per-process random key, instead of evicting anyone: an attacker with many addresses cannot free a
 * victim address from its limit, cannot aim at the bucket a given victim falls in, and must fill
 * every overflow bucket to lock out untracked addresses. Memory stays fixed.
 *
 * Attempts in flight count too (`begin`): a burst of concurrent bad tokens from one address is
 * refused once in-flight plus recorded failures reach the limit, instead of all passing the check
 * before the first failure is recorded.
 *
 * IPv6 addresses are grouped by /64, the block one host or customer usually gets; IPv4-mapped IPv6
 * (`::ffff:192.0.2.1`, as dual-stack sockets report IPv4 peers) counts as the IPv4 address. The
 * limiter never logs; addresses are kept in memory only.
 */
export interface FailedAuthLimiter {
  /** Whether `address` may attempt authentication now. */
  check(address: string | undefined): boolean;
  /**
   * Starts an attempt if `address` may make one, counting it in flight until it ends; null when
   * limited. The attempt ends exactly once: `failed()` records a failure, `done()` records none.
   */
  begin(address: string | undefined): LimiterAttempt | null;
  /** Records one failed authentication from `address`. */
  recordFailure(address: string | undefined): void;
  /** How many addresses have their own bucket (for metrics). */
  readonly trackedAddresses: number;
}

export interface FailedAuthLimiterOptions {
  /** Failures one address may have within `windowMs`. Default 20. */
  readonly maxFailures?: number;
  /** Default 60 s. */
  readonly windowMs?: number;
  /** Default 10,000. */
  readonly maxTrackedAddresses?: number;
  /** Limit of the shared overflow bucket. Default `maxFailures * 10`. */
  readonly overflowMaxFailures?: number;
  /** The clock, in epoch ms; tests move it. */
  readonly now?: () => number;
}

export interface LimiterAttempt {
  failed(): void;
  done(): void;
}

/** Overflow buckets for addresses the full table cannot track. */
const OVERFLOW_BUCKETS = 256;

interface Bucket {
  level: number;
  at: number;
}

export function createFailedAuthLimiter(options: FailedAuthLimiterOptions = {}): FailedAuthLimiter {
  const maxFailures = options.maxFailures ?? 20;
  const windowMs = options.windowMs ?? 60_000;
  const maxTracked = options.maxTrackedAddresses ?? 10_000;
  const overflowMax = options.overflowMaxFailures ?? maxFailures * 10;
  const now = options.now ?? Date.now;
  const limits = {
    maxFailures,
    windowMs,
    maxTrackedAddresses: maxTracked,
    overflowMaxFailures: overflowMax,
  };
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value < 1) throw invalidArgument(name, "must be a positive integer");
  }

  const buckets = new Map<string, Bucket>();
  const overflow: Bucket[] = Array.from({ length: OVERFLOW_BUCKETS }, () => ({ level: 0, at: now() }));
  const overflowKey = randomBytes(32);
  const overflowFor = (key: string): Bucket =>
    overflow[createHmac("sha256", overflowKey).update(key).digest().readUInt32BE(0) % OVERFLOW_BUCKETS]!;
  // Attempts in flight per address key; an entry lives only while attempts are running, so its size
  // is bounded by concurrent requests.
  const inFlight = new Map<string, number>();
  // Per millisecond; the overflow bucket drains at its own limit's rate, over the same window.
  const drainRate = maxFailures / windowMs;
  const overflowDrainRate = overflowMax / windowMs;
  let lastSweep = Number.NEGATIVE_INFINITY;

  // A clock that steps backwards drains nothing rather than filling the bucket.
  const level = (bucket: Bucket, rate: number, at: number): number =>
    Math.max(0, bucket.level - Math.max(0, at - bucket.at) * rate);

  const sweep = (at: number): void => {
    // Once per time it takes to drain one failure: a full table of live buckets costs one pass per
    // interval, not one per new address.
    if (at - lastSweep < 1 / drainRate) return;
    lastSweep = at;
    for (const [key, bucket] of buckets) {
      if (level(bucket, drainRate, at) === 0) buckets.delete(key);
    }
  };

  /** Recorded failures (drained to now) and the limit that applies to `key`. */
  const standing = (key: string, at: number): { level: number; max: number } => {
    const bucket = buckets.get(key);
    if (bucket !== undefined) return { level: level(bucket, drainRate, at), max: maxFailures };
    // An untracked address while the table is full may be one whose failures went to overflow.
    if (buckets.size >= maxTracked) {
      return { level: level(overflowFor(key), overflowDrainRate, at), max: overflowMax };
    }
    return { level: 0, max: maxFailures };
  };

  const recordFailure = (address: string | undefined): void => {
    const at = now();
    const key = addressKey(address);
    let bucket = buckets.get(key);
    if (bucket === undefined) {
      if (buckets.size >= maxTracked) sweep(at);
      if (buckets.size >= maxTracked) {
        const shared = overflowFor(key);
        shared.level = Math.min(overflowMax, level(shared, overflowDrainRate, at) + 1);
        shared.at = at;
        return;
      }
      bucket = { level: 0, at };
      buckets.set(key, bucket);
    }
    bucket.level = Math.min(maxFailures, level(bucket, drainRate, at) + 1);
    bucket.at = at;
  };

  return {
    check(address) {
      const key = addressKey(address);
      const { level: failures, max } = standing(key, now());
      return failures + (inFlight.get(key) ?? 0) + 1 <= max;
    },
    begin(address) {
      const key = addressKey(address);
      const { level: failures, max } = standing(key, now());
      const running = inFlight.get(key) ?? 0;
      if (failures + running + 1 > max) return null;
      inFlight.set(key, running + 1);
      let ended = false;
      const end = (): void => {
        if (ended) return;
        ended = true;
        const left = (inFlight.get(key) ?? 1) - 1;
        if (left <= 0) inFlight.delete(key);
        else inFlight.set(key, left);
      };
      return {
        failed() {
          if (ended) return;
          end();
          recordFailure(address);
        },
        done: end,
      };
    },
    recordFailure,
    get trackedAddresses() {
      return buckets.size;
    },
  };
}

/**
 * The bucket an address counts against: the IPv4 address itself, or the /64 of an IPv6 address.
 * Anything that is not an IP address (a socket that closed before its address was read) shares one
 * bucket.
 */
export function addressKey(address: string | undefined): string {
  if (typeof address !== "string") return "unknown";
  // A zone index (fe80::1%eth0) names an interface, not a host.
  const zone = address.indexOf("%");
  const bare = zone === -1 ? address : address.slice(0, zone);
  if (isIPv4(bare)) return `ipv4:${bare}`;
  if (!isIPv6(bare)) return "unknown";
  const groups = ipv6Groups(bare);
  const isMapped = groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff;
  if (isMapped) {
    const [high, low] = [groups[6]!, groups[7]!];
    return `ipv4:${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`;
  }
  return `ipv6:${groups
    .slice(0, 4)
    .map((group) => group.toString(16))
    .join(":")}::/64`;
}

/** The eight 16-bit groups of a valid IPv6 address (checked by the caller with `isIPv6`). */
function ipv6Groups(address: string): number[] {
  let text = address.toLowerCase();
  // A dotted IPv4 tail (::ffff:192.0.2.1) stands for the last two groups.
  const lastColon = text.lastIndexOf(":");
  const tail = text.slice(lastColon + 1);
  if (tail.includes(".")) {
    const [a, b, c, d] = tail.split(".").map(Number) as [number, number, number, number];
    text = `${text.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, rest] = text.includes("::") ? text.split("::") : [text, undefined];
  const headGroups = head === "" || head === undefined ? [] : head.split(":");
  const restGroups = rest === undefined || rest === "" ? [] : rest.split(":");
  const missing = rest === undefined ? 0 : 8 - headGroups.length - restGroups.length;
  return [...headGroups, ...Array<string>(missing).fill("0"), ...restGroups].map((group) =>
    Number.parseInt(group, 16),
  );
}
