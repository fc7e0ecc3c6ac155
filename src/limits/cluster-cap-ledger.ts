import { digest, mintId } from "../crypto/ids.ts";
import { invalidArgument } from "../errors.ts";
import { MAX_LEASE_LIMIT, MAX_LEASE_RENEW_MEMBERS } from "../store/arguments.ts";
import {
  type CapLedger,
  type CapLevel,
  type CapPool,
  type CapSlot,
  type LedgerOutcome,
  occupancyFrom,
  occupancyIndex,
} from "./cap-ledger.ts";

/**
 * The store operations the cluster ledger needs: lease sets, each a set of members with their own
 * expiry, counted atomically per call. `K` is the store's key type (`LeaseKey` from
 * src/store/keys.ts); the ledger builds keys only through the injected `LeaseKeyBuilder`.
 *
 * Semantics the ledger relies on:
 * - `leaseAcquire` adds `member` only if fewer than `limit` unexpired members are present (expired
 *   ones do not count), with expiry now + `ttlMs`; true when added.
 * - `leaseRenew` extends to now + `ttlMs` those of `members` still present and returns how many it
 *   found; it never re-adds a member that expired or was released.
 * - `leaseRelease` removes `member`; true when it was present.
 * - `leaseCount` counts unexpired members.
 */
export interface LeaseStore<K> {
  leaseAcquire(key: K, member: string, limit: number, ttlMs: number): Promise<boolean>;
  leaseRenew(key: K, members: readonly string[], ttlMs: number): Promise<number>;
  leaseRelease(key: K, member: string): Promise<boolean>;
  leaseCount(key: K): Promise<number>;
}

/** `leaseKey` from src/store/keys.ts: escapes every part. */
export type LeaseKeyBuilder<K> = (kind: string, ...parts: string[]) => K;

/** One renewal pass, for metrics. */
export interface LeaseRenewalReport {
  /** Lease sets this replica held members in. */
  readonly keys: number;
  /** Members the store renewed. */
  readonly renewed: number;
  /**
   * Members this replica still holds that the store no longer had (they expired: the store did not
   * answer for longer than the TTL). They are added back, past the limit if need be, so the open
   * streams count again; until then other replicas could admit beyond the caps, so a non-zero value
   * is worth an alert.
   */
  readonly missing: number;
  /** Lease sets whose renewal the store refused or failed. */
  readonly failedKeys: number;
}

export type LeaseOperation = "acquire" | "renew" | "release";

export interface ClusterLedgerOptions<K> {
  readonly store: LeaseStore<K>;
  readonly leaseKey: LeaseKeyBuilder<K>;
  /**
   * Names this process in lease members (`${replicaId}:${instance}:${n}`), for operators reading
   * the store. Need not be unique: each ledger adds a random instance id of its own, because two
   * ledgers whose members collide would share slots (an acquire finding "its" member present counts
   * as held without taking a slot), and replica names repeat (one host name in two containers, a
   * restart within the TTL).
   */
  readonly replicaId: string;
  /** How long a lease lives without renewal: how long a dead replica's slots stay taken. Default 30 s. */
  readonly leaseTtlMs?: number;
  /** Default a third of the TTL, so two renewals can fail before a live lease expires. */
  readonly renewEveryMs?: number;
  /** Store calls per release before leaving the lease to expire. Default 3. */
  readonly releaseAttempts?: number;
  /** Delay before the second release attempt, doubled for each later one. Default 200 ms. */
  readonly releaseRetryDelayMs?: number;
  /** Each store failure, for logs and metrics. The error is the store's; the key is never passed. */
  readonly onStoreError?: (operation: LeaseOperation, error: unknown) => void;
  readonly onRenewal?: (report: LeaseRenewalReport) => void;
}

export interface ClusterLedger extends CapLedger {
  /** Runs one renewal pass now (the timer runs them every `renewEveryMs`). */
  renew(): Promise<LeaseRenewalReport>;
  /**
   * Stops renewing and waits for releases in flight. Leases still held are not released: they
   * expire after the TTL, as they would if this process had died.
   */
  close(): Promise<void>;
}

const LEASE_KIND = "conn-cap";
const REPLICA_ID = /^[A-Za-z0-9._-]{1,128}$/;
/** Store calls one renewal pass keeps in flight at once. */
const RENEW_CONCURRENCY = 8;

interface HeldLeases<K> {
  readonly key: K;
  readonly pool: CapPool;
  readonly level: CapLevel;
  readonly members: Set<string>;
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) throw invalidArgument(name, "must be a positive integer");
  return value;
}

/**
 * Caps shared by every replica (`limits.scope: cluster`). Each slot held is a lease member in the
 * store's lease set for (pool, level, subject); the store admits a member only below the limit,
 * atomically, so the caps hold across replicas while the store answers. Members are renewed by a
 * timer and expire when their replica dies, so a crash frees its slots within the TTL.
 *
 * Fail closed: when the store does not answer, `acquire` is "unavailable" and the caller refuses the
 * new stream. A release that fails is retried a bounded number of times; after that the lease,
 * no longer renewed, expires within the TTL.
 *
 * Subjects are digested before they become key parts: the store holds no address or principal
 * key, and all subject parts have one length.
 */
export function createClusterLedger<K>(options: ClusterLedgerOptions<K>): ClusterLedger {
  const { store, leaseKey, replicaId, onStoreError, onRenewal } = options;
  if (store === undefined || typeof store.leaseAcquire !== "function") {
    throw invalidArgument("store", "must provide lease operations");
  }
  if (typeof leaseKey !== "function") throw invalidArgument("leaseKey", "must be a key builder");
  if (typeof replicaId !== "string" || !REPLICA_ID.test(replicaId)) {
    throw invalidArgument("replicaId", "must be 1 to 128 characters of [A-Za-z0-9._-]");
  }
  const ttlMs = positiveInteger("leaseTtlMs", options.leaseTtlMs ?? 30_000);
  const renewEveryMs = positiveInteger(
    "renewEveryMs",
    options.renewEveryMs ?? Math.max(1, Math.floor(ttlMs / 3)),
  );
  if (renewEveryMs >= ttlMs) throw invalidArgument("renewEveryMs", "must be shorter than leaseTtlMs");
  const releaseAttempts = positiveInteger("releaseAttempts", options.releaseAttempts ?? 3);
  const releaseRetryDelayMs = options.releaseRetryDelayMs ?? 200;
  if (!Number.isSafeInteger(releaseRetryDelayMs) || releaseRetryDelayMs < 0) {
    throw invalidArgument("releaseRetryDelayMs", "must be a non-negative integer");
  }

  const held = new Map<string, HeldLeases<K>>();
  const heldTotals = [0, 0, 0, 0, 0, 0, 0, 0];
  const subjectTotals = [0, 0, 0, 0, 0, 0, 0, 0];
  const releasesInFlight = new Set<Promise<void>>();
  // 128 random bits: no other ledger, on any replica or in an earlier life of this one, makes the
  // same members (see replicaId).
  const memberPrefix = `${replicaId}:${mintId(16)}:`;
  let memberCounter = 0;
  let closed = false;
  let renewing: Promise<LeaseRenewalReport> | undefined;

  const report = (operation: LeaseOperation, error: unknown): void => {
    try {
      onStoreError?.(operation, error);
    } catch {
      // An observer's failure must not change what the ledger holds.
    }
  };

  const keyFor = (slot: CapSlot): K => {
    const existing = held.get(slot.id);
    if (existing !== undefined) return existing.key;
    return slot.level === "global"
      ? leaseKey(LEASE_KIND, slot.pool, slot.level)
      : leaseKey(LEASE_KIND, slot.pool, slot.level, digest(LEASE_KIND, slot.subject));
  };

  const hold = (slot: CapSlot, key: K, member: string): void => {
    const index = occupancyIndex(slot.pool, slot.level);
    let entry = held.get(slot.id);
    if (entry === undefined) {
      entry = { key, pool: slot.pool, level: slot.level, members: new Set() };
      held.set(slot.id, entry);
      subjectTotals[index]! += 1;
    }
    entry.members.add(member);
    heldTotals[index]! += 1;
  };

  const releaseLease = async (key: K, member: string): Promise<void> => {
    for (let attempt = 1; ; attempt++) {
      try {
        await store.leaseRelease(key, member);
        return;
      } catch (error) {
        report("release", error);
        if (attempt >= releaseAttempts) return;
      }
      await new Promise<void>((resolve) => {
        setTimeout(resolve, releaseRetryDelayMs * 2 ** (attempt - 1)).unref();
      });
    }
  };

  const startRelease = (key: K, member: string): void => {
    const task = releaseLease(key, member);
    releasesInFlight.add(task);
    void task.then(() => releasesInFlight.delete(task));
  };

  /**
   * Adds back the members of `batch` this replica still holds after the store lost some (it did not
   * answer for longer than the TTL), past the limit if need be: their streams are open whether
   * counted or not, and only counting them again refuses new ones, on every replica, until enough
   * end (L1: caps hold while the store answers). leaseRenew does not say which members it missed,
   * so each is acquired: that refreshes a member still there and re-adds one that is gone.
   */
  const restore = async (entry: HeldLeases<K>, batch: readonly string[]): Promise<void> => {
    for (const member of batch) {
      if (!entry.members.has(member)) continue;
      await store.leaseAcquire(entry.key, member, MAX_LEASE_LIMIT, ttlMs);
      // Released while it was being added back: its release may have run first, so give it back
      // again rather than leave it counted until the TTL.
      if (!entry.members.has(member)) startRelease(entry.key, member);
    }
  };

  const renewPass = async (): Promise<LeaseRenewalReport> => {
    const entries = [...held.values()];
    let next = 0;
    let renewed = 0;
    let missing = 0;
    let failedKeys = 0;
    const worker = async (): Promise<void> => {
      while (next < entries.length) {
        const entry = entries[next++]!;
        const members = [...entry.members];
        let failed = false;
        // The store renews at most MAX_LEASE_RENEW_MEMBERS a call and refuses more: one lease set
        // past that (a busy replica's global slots) in one call would fail every pass, and all its
        // leases would lapse while their streams stayed open.
        for (let start = 0; start < members.length; start += MAX_LEASE_RENEW_MEMBERS) {
          const batch = members.slice(start, start + MAX_LEASE_RENEW_MEMBERS);
          try {
            const count = await store.leaseRenew(entry.key, batch, ttlMs);
            renewed += count;
            // Members released during the call are not missing; the figure errs low, never high.
            let stillHeld = 0;
            for (const member of batch) if (entry.members.has(member)) stillHeld += 1;
            missing += Math.max(0, stillHeld - count);
            if (stillHeld > count) await restore(entry, batch);
          } catch (error) {
            failed = true;
            report("renew", error);
          }
        }
        if (failed) failedKeys += 1;
      }
    };
    const workers: Promise<void>[] = [];
    for (let i = 0; i < Math.min(RENEW_CONCURRENCY, entries.length); i++) workers.push(worker());
    await Promise.all(workers);
    const result: LeaseRenewalReport = { keys: entries.length, renewed, missing, failedKeys };
    try {
      onRenewal?.(result);
    } catch {
      // As for onStoreError.
    }
    return result;
  };

  const renew = (): Promise<LeaseRenewalReport> => {
    if (closed) return Promise.resolve({ keys: 0, renewed: 0, missing: 0, failedKeys: 0 });
    // One pass at a time: a slow store must not pile passes up behind each other.
    renewing ??= renewPass().finally(() => {
      renewing = undefined;
    });
    return renewing;
  };

  const timer = setInterval(() => void renew(), renewEveryMs);
  timer.unref();

  return {
    acquire(slot: CapSlot, limit: number): LedgerOutcome | Promise<LedgerOutcome> {
      if (closed) return "unavailable";
      let key: K;
      let call: Promise<boolean>;
      const member = `${memberPrefix}${++memberCounter}`;
      try {
        key = keyFor(slot);
        call = Promise.resolve(store.leaseAcquire(key, member, limit, ttlMs));
      } catch (error) {
        report("acquire", error);
        return "unavailable";
      }
      return call.then(
        (admitted): LedgerOutcome => {
          if (!admitted) return "full";
          hold(slot, key, member);
          return "held";
        },
        (error: unknown): LedgerOutcome => {
          // The store may have added the member before failing; it is never renewed, so it expires.
          report("acquire", error);
          return "unavailable";
        },
      );
    },

    release(slot: CapSlot): void {
      const entry = held.get(slot.id);
      if (entry === undefined) return;
      // Members of one lease set are interchangeable: any one of this replica's is returned.
      const member = entry.members.values().next().value;
      if (member === undefined) return;
      entry.members.delete(member);
      const index = occupancyIndex(entry.pool, entry.level);
      heldTotals[index]! -= 1;
      if (entry.members.size === 0) {
        held.delete(slot.id);
        subjectTotals[index]! -= 1;
      }
      startRelease(entry.key, member);
    },

    occupancy: () => occupancyFrom(heldTotals, subjectTotals),

    renew,

    async close(): Promise<void> {
      closed = true;
      clearInterval(timer);
      await renewing;
      while (releasesInFlight.size > 0) await Promise.all([...releasesInFlight]);
    },
  };
}
