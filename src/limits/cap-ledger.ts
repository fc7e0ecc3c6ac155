import { invalidArgument } from "../errors.ts";

/**
 * The counting side of connection caps: a ledger holds slots, one per (pool, level, subject), up to
 * a limit. `connection-caps.ts` decides which slots a request needs and when they are returned; a
 * ledger only counts. Two implementations: `createLocalLedger` (this process) and
 * `createClusterLedger` (leases in the shared store, `cluster-cap-ledger.ts`).
 */

/** "streams": open SSE/GET and long-lived response streams. "inflight": requests being processed. */
export type CapPool = "streams" | "inflight";

/** Global and per-IP are taken before authentication; per-principal and per-session after the owner check. */
export type CapLevel = "global" | "ip" | "principal" | "session";

export const capPools: readonly CapPool[] = Object.freeze(["streams", "inflight"]);
export const capLevels: readonly CapLevel[] = Object.freeze(["global", "ip", "principal", "session"]);

/**
 * One countable slot. `subject` is the caller's opaque key (a keyed tag or digest of an address,
 * principal or session), empty for the global level. `id` is the in-process name of the slot:
 * pool and level never contain "/", and the subject is everything after the second "/", so no
 * subject can spell another pool's, level's or subject's id.
 */
export interface CapSlot {
  readonly pool: CapPool;
  readonly level: CapLevel;
  readonly subject: string;
  readonly id: string;
}

/**
 * - "held": the slot is now held and must be released exactly once.
 * - "full": the limit was reached; nothing is held.
 * - "unavailable": the ledger could not answer (store down, ledger closed); nothing is held, and the
 *   caller refuses (fail closed for new streams).
 */
export type LedgerOutcome = "held" | "full" | "unavailable";

/** Current totals for metrics. Only pairs with something held are listed. */
export interface CapOccupancy {
  readonly pool: CapPool;
  readonly level: CapLevel;
  /** Slots held at this (pool, level), over all subjects. */
  readonly held: number;
  /** Distinct subjects with at least one slot held. */
  readonly subjects: number;
}

export interface CapLedger {
  /**
   * Takes one slot if fewer than `limit` are held. A synchronous answer (local ledger) lets a
   * reservation run without promises; an asynchronous one (cluster ledger) never rejects: a failure
   * is "unavailable".
   */
  acquire(slot: CapSlot, limit: number): LedgerOutcome | Promise<LedgerOutcome>;
  /**
   * Returns one slot of `slot.id` taken by `acquire`. Never waits and never throws; a release with
   * nothing held is ignored (a ledger count never goes below zero).
   */
  release(slot: CapSlot): void;
  /** What this ledger holds now (for the cluster ledger: what this replica holds). */
  occupancy(): CapOccupancy[];
  close(): Promise<void>;
}

const MAX_SUBJECT_LENGTH = 1024;

/**
 * Builds a slot. Subjects come from the caller as opaque strings; they must be non-empty,
 * well-formed and bounded so they can also be digested into a store key (the cluster ledger) without
 * two distinct subjects sharing one.
 */
export function capSlot(pool: CapPool, level: CapLevel, subject: string): CapSlot {
  if (level === "global") {
    if (subject !== "") throw invalidArgument("subject", "must be empty for the global level");
  } else if (
    typeof subject !== "string" ||
    subject.length === 0 ||
    subject.length > MAX_SUBJECT_LENGTH ||
    !subject.isWellFormed()
  ) {
    throw invalidArgument(
      `${level} key`,
      `must be a well-formed string of 1 to ${MAX_SUBJECT_LENGTH} characters`,
    );
  }
  return { pool, level, subject, id: `${pool}/${level}/${subject}` };
}

/** Position of (pool, level) in an 8-entry totals table. */
export function occupancyIndex(pool: CapPool, level: CapLevel): number {
  return (pool === "streams" ? 0 : 4) + capLevels.indexOf(level);
}

/** Occupancy entries from totals tables indexed by `occupancyIndex`. */
export function occupancyFrom(held: readonly number[], subjects: readonly number[]): CapOccupancy[] {
  const entries: CapOccupancy[] = [];
  for (const pool of capPools) {
    for (const level of capLevels) {
      const index = occupancyIndex(pool, level);
      const count = held[index] ?? 0;
      if (count > 0) entries.push({ pool, level, held: count, subjects: subjects[index] ?? 0 });
    }
  }
  return entries;
}

/**
 * In-process counts: synchronous, one map entry per subject with something held, deleted when it
 * falls to zero (so memory follows current load, not every address ever seen). Right for one
 * replica, or when each replica may hold its own share of the caps (`limits.scope: local`).
 */
export function createLocalLedger(): CapLedger {
  const counts = new Map<string, number>();
  const held = [0, 0, 0, 0, 0, 0, 0, 0];
  const subjects = [0, 0, 0, 0, 0, 0, 0, 0];
  return {
    acquire(slot, limit) {
      const count = counts.get(slot.id) ?? 0;
      if (count >= limit) return "full";
      counts.set(slot.id, count + 1);
      const index = occupancyIndex(slot.pool, slot.level);
      held[index]! += 1;
      if (count === 0) subjects[index]! += 1;
      return "held";
    },
    release(slot) {
      const count = counts.get(slot.id);
      if (count === undefined) return;
      const index = occupancyIndex(slot.pool, slot.level);
      held[index]! -= 1;
      if (count <= 1) {
        counts.delete(slot.id);
        subjects[index]! -= 1;
      } else {
        counts.set(slot.id, count - 1);
      }
    },
    occupancy: () => occupancyFrom(held, subjects),
    close: () => Promise.resolve(),
  };
}
