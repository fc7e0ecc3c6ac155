import type { LeaseStore } from "../../src/limits/connection-caps.ts";
import { escapeSegment } from "../../src/store/keys.ts";

/**
 * A TEST DOUBLE of the store's lease operations, in memory, for the cap ledger's own tests. Each call
 * is atomic (its whole effect happens synchronously when it is called; the promise only delivers the
 * answer), which is the contract the real stores must meet; those are tested against it by the store
 * conformance suite, not here. It keeps its own clock and records what a test wants to check: the
 * largest number of members any lease set ever held, and releases of members that were not there.
 */
export interface LeaseStoreDouble extends LeaseStore<string> {
  /** Moves the double's clock forward; members whose expiry has passed stop counting. */
  advance(ms: number): void;
  /** Unexpired members of `key`, for assertions (not a store call). */
  members(key: string): string[];
  /** Unexpired members over all keys. */
  totalMembers(): number;
  /** The most members each key has held at once, and the limit it was last asked with. */
  readonly peaks: Map<string, { peak: number; limit: number }>;
  /** Releases of a member that was not present. */
  readonly strayReleases: string[];
  /** Store calls made, by operation. */
  readonly calls: { acquire: number; renew: number; release: number; count: number };
  /** While true every call rejects without effect (the store does not answer). */
  outage: boolean;
  /** Reject this many of the next release calls without effect. */
  failReleases: number;
  /** The next acquire applies its effect and then rejects (an answer lost on the way back). */
  loseNextAcquireAnswer: boolean;
}

/** What `leaseKey` from src/store/keys.ts produces, closely enough for the double: escaped parts. */
export function doubleLeaseKey(kind: string, ...parts: string[]): string {
  return ["lease", kind, ...parts].map(escapeSegment).join("/");
}

export function createLeaseStoreDouble(): LeaseStoreDouble {
  let now = 1_000_000;
  const sets = new Map<string, Map<string, number>>();

  const live = (key: string): Map<string, number> => {
    let set = sets.get(key);
    if (set === undefined) {
      set = new Map();
      sets.set(key, set);
    }
    for (const [member, expiresAt] of set) if (expiresAt <= now) set.delete(member);
    return set;
  };
  const unavailable = (): Promise<never> => Promise.reject(new Error("lease store double: outage"));

  const double: LeaseStoreDouble = {
    peaks: new Map(),
    strayReleases: [],
    calls: { acquire: 0, renew: 0, release: 0, count: 0 },
    outage: false,
    failReleases: 0,
    loseNextAcquireAnswer: false,

    leaseAcquire(key, member, limit, ttlMs) {
      double.calls.acquire += 1;
      if (double.outage) return unavailable();
      const set = live(key);
      let admitted = set.has(member);
      if (admitted || set.size < limit) {
        set.set(member, now + ttlMs);
        admitted = true;
      }
      const peak = double.peaks.get(key);
      double.peaks.set(key, { peak: Math.max(peak?.peak ?? 0, set.size), limit });
      if (double.loseNextAcquireAnswer) {
        double.loseNextAcquireAnswer = false;
        return Promise.reject(new Error("lease store double: answer lost"));
      }
      return Promise.resolve(admitted);
    },

    leaseRenew(key, members, ttlMs) {
      double.calls.renew += 1;
      if (double.outage) return unavailable();
      const set = live(key);
      let renewed = 0;
      for (const member of members) {
        if (set.has(member)) {
          set.set(member, now + ttlMs);
          renewed += 1;
        }
      }
      return Promise.resolve(renewed);
    },

    leaseRelease(key, member) {
      double.calls.release += 1;
      if (double.outage) return unavailable();
      if (double.failReleases > 0) {
        double.failReleases -= 1;
        return unavailable();
      }
      const removed = live(key).delete(member);
      if (!removed) double.strayReleases.push(`${key} ${member}`);
      return Promise.resolve(removed);
    },

    leaseCount(key) {
      double.calls.count += 1;
      if (double.outage) return unavailable();
      return Promise.resolve(live(key).size);
    },

    advance(ms) {
      now += ms;
    },
    members: (key) => [...live(key).keys()],
    totalMembers() {
      let total = 0;
      for (const key of sets.keys()) total += live(key).size;
      return total;
    },
  };
  return double;
}
