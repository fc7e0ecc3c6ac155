import { invalidArgument } from "../errors.ts";
import {
  type CapLedger,
  type CapLevel,
  type CapOccupancy,
  type CapPool,
  type CapSlot,
  capPools,
  capSlot,
  type LedgerOutcome,
} from "./cap-ledger.ts";

export {
  type CapLedger,
  type CapLevel,
  type CapOccupancy,
  type CapPool,
  type CapSlot,
  capSlot,
  createLocalLedger,
  type LedgerOutcome,
} from "./cap-ledger.ts";
export {
  type ClusterLedger,
  type ClusterLedgerOptions,
  createClusterLedger,
  type LeaseKeyBuilder,
  type LeaseOperation,
  type LeaseRenewalReport,
  type LeaseStore,
} from "./cluster-cap-ledger.ts";

/**
 * Connection caps as reservations (THREATS L1, DESIGN invariant 7).
 *
 * A request takes a reservation in two stages on one object: `reserveEdge` (per-IP, then global)
 * before any expensive work, and `extend` (per-session, then per-principal) once the owner check has
 * passed. Within a stage the narrowest level goes first, so a client at its own cap is refused
 * without touching the wider counters, and levels are taken one after another in a fixed order, so
 * two reservations racing for the same caps can never each hold one level and refuse the other.
 *
 * Every slot is returned exactly once: by `release()` (idempotent), at once when any level refuses
 * (the whole reservation ends: the request is being refused anyway, and a caller that forgets to
 * release leaks nothing), and, for an acquire still pending when `release()` is called, as soon as
 * that acquire resolves. After `release()` nothing is acquired for the reservation again.
 *
 * On a synchronous (local) ledger no promise is created per level: one resolved promise per call.
 */

export interface PoolLimits {
  /** Undefined: no cap at that level. 0 refuses everything at that level. */
  readonly global?: number | undefined;
  readonly perIp?: number | undefined;
  readonly perPrincipal?: number | undefined;
  readonly perSession?: number | undefined;
}

export interface ConnectionCapLimits {
  readonly streams: PoolLimits;
  readonly inflight: PoolLimits;
}

export interface ConnectionCapsOptions {
  readonly ledger: CapLedger;
  readonly limits: ConnectionCapLimits;
}

/**
 * Why a reservation was refused, for metrics and the audit trail. Never names the key. "released":
 * the reservation ended (released or aborted) before the stage completed.
 */
export type CapRefusalReason =
  | "cap-global"
  | "cap-ip"
  | "cap-principal"
  | "cap-session"
  | "cap-store-unavailable"
  | "released";

export interface CapRefusal {
  readonly refused: true;
  readonly pool: CapPool;
  /** The level that refused; null for "released". */
  readonly level: CapLevel | null;
  readonly reason: CapRefusalReason;
}

export interface EdgeKeys {
  /** The client's address as an opaque key (a keyed tag or digest is best). */
  readonly ip: string;
  /**
   * Aborting while the stage is pending (a slow cluster store, a client gone) resolves it at once
   * with a "released" refusal; a slot whose acquire is still in flight is returned when it resolves.
   * Only the pending stage is tied to the signal: a reservation returned is released by its holder.
   */
  readonly signal?: AbortSignal | undefined;
}

export interface OwnerKeys {
  readonly principalKey: string;
  /** Absent for sessionless (modern) requests: the per-session cap does not apply. */
  readonly sessionKey?: string | undefined;
}

export interface Reservation {
  readonly refused: false;
  readonly pool: CapPool;
  /** True once every slot has been (or, for one in flight, will be) returned. */
  readonly released: boolean;
  /**
   * The second stage: per-session and per-principal. Call once, after the owner check. A refusal
   * ends the whole reservation. On a released reservation: a "released" refusal, nothing acquired.
   */
  extend(owner: OwnerKeys): Promise<true | CapRefusal>;
  /** Returns every slot held, exactly once. Idempotent; safe while a stage is pending. */
  release(): void;
}

export interface ConnectionCaps {
  /** The first stage: per-IP and global, before authentication. */
  reserveEdge(pool: CapPool, keys: EdgeKeys): Promise<Reservation | CapRefusal>;
  /** The ledger's current totals, for metrics. */
  occupancy(): CapOccupancy[];
}

type StageResult = true | CapRefusal;

/** Level order within each stage: narrowest first (see the module comment). */
const EDGE_LEVELS: readonly CapLevel[] = ["ip", "global"];
const OWNER_LEVELS: readonly CapLevel[] = ["session", "principal"];

const LEVEL_BIT: Readonly<Record<CapLevel, number>> = { global: 1, ip: 2, principal: 4, session: 8 };

const CAP_REASON: Readonly<Record<CapLevel, CapRefusalReason>> = {
  global: "cap-global",
  ip: "cap-ip",
  principal: "cap-principal",
  session: "cap-session",
};

/** Refusals are immutable and shared, so refusing allocates nothing. */
interface PoolRefusals {
  readonly full: Readonly<Record<CapLevel, CapRefusal>>;
  readonly unavailable: Readonly<Record<CapLevel, CapRefusal>>;
  readonly released: CapRefusal;
}

function refusalsFor(pool: CapPool): PoolRefusals {
  const make = (level: CapLevel | null, reason: CapRefusalReason): CapRefusal =>
    Object.freeze({ refused: true, pool, level, reason });
  const byLevel = (reason: (level: CapLevel) => CapRefusalReason) =>
    Object.freeze({
      global: make("global", reason("global")),
      ip: make("ip", reason("ip")),
      principal: make("principal", reason("principal")),
      session: make("session", reason("session")),
    });
  return {
    full: byLevel((level) => CAP_REASON[level]),
    unavailable: byLevel(() => "cap-store-unavailable"),
    released: make(null, "released"),
  };
}

/** Per-pool settings shared by every reservation of that pool. */
interface PoolPlan {
  readonly pool: CapPool;
  readonly ledger: CapLedger;
  readonly limits: Readonly<Record<CapLevel, number | undefined>>;
  readonly globalSlot: CapSlot;
  readonly refusals: PoolRefusals;
}

function checkLimit(name: string, value: number | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isSafeInteger(value) || value < 0)
    throw invalidArgument(name, "must be a non-negative integer");
  return value;
}

function planFor(pool: CapPool, ledger: CapLedger, limits: PoolLimits | undefined): PoolPlan {
  if (limits === undefined || typeof limits !== "object") {
    throw invalidArgument(`limits.${pool}`, "must be an object");
  }
  return {
    pool,
    ledger,
    limits: {
      global: checkLimit(`limits.${pool}.global`, limits.global),
      ip: checkLimit(`limits.${pool}.perIp`, limits.perIp),
      principal: checkLimit(`limits.${pool}.perPrincipal`, limits.perPrincipal),
      session: checkLimit(`limits.${pool}.perSession`, limits.perSession),
    },
    globalSlot: capSlot(pool, "global", ""),
    refusals: refusalsFor(pool),
  };
}

function isPromiseLike<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof value === "object" && value !== null && typeof (value as PromiseLike<T>).then === "function";
}

const RESOLVED_TRUE: Promise<true> = Promise.resolve(true);

class CapReservation implements Reservation {
  readonly refused = false as const;
  readonly pool: CapPool;
  readonly #plan: PoolPlan;
  readonly #slots: Record<CapLevel, CapSlot | undefined>;
  /** Levels whose slot this reservation holds (bits of LEVEL_BIT). A slot in flight is not here. */
  #held = 0;
  #released = false;
  #extended = false;
  /** Resolves the pending stage's promise early when the reservation ends. */
  #abortStage: ((result: StageResult) => void) | undefined;

  private constructor(plan: PoolPlan, ipSlot: CapSlot | undefined) {
    this.pool = plan.pool;
    this.#plan = plan;
    this.#slots = { global: plan.globalSlot, ip: ipSlot, principal: undefined, session: undefined };
  }

  /** A new reservation with its edge stage started; the only way a stage is run from outside. */
  static startEdge(
    plan: PoolPlan,
    ipSlot: CapSlot | undefined,
  ): [CapReservation, StageResult | Promise<StageResult>] {
    const reservation = new CapReservation(plan, ipSlot);
    return [reservation, reservation.#runStage(EDGE_LEVELS, 0)];
  }

  get released(): boolean {
    return this.#released;
  }

  release(): void {
    if (this.#released) return;
    this.#end();
    const abort = this.#abortStage;
    this.#abortStage = undefined;
    abort?.(this.#plan.refusals.released);
  }

  /** Marks the reservation ended and returns every slot in #held, each once. */
  #end(): void {
    this.#released = true;
    const held = this.#held;
    this.#held = 0;
    if (held === 0) return;
    for (const level of ["session", "principal", "global", "ip"] as const) {
      if ((held & LEVEL_BIT[level]) !== 0) this.#plan.ledger.release(this.#slots[level]!);
    }
  }

  extend(owner: OwnerKeys): Promise<true | CapRefusal> {
    if (this.#extended) throw invalidArgument("extend", "may be called once per reservation");
    const { limits, pool } = this.#plan;
    const principalSlot =
      limits.principal === undefined ? undefined : capSlot(pool, "principal", owner.principalKey);
    const sessionSlot =
      limits.session === undefined || owner.sessionKey === undefined
        ? undefined
        : capSlot(pool, "session", owner.sessionKey);
    this.#extended = true;
    if (this.#released) return Promise.resolve(this.#plan.refusals.released);
    this.#slots.principal = principalSlot;
    this.#slots.session = sessionSlot;
    const result = this.#runStage(OWNER_LEVELS, 0);
    if (result === true) return RESOLVED_TRUE;
    return isPromiseLike(result) ? result : Promise.resolve(result);
  }

  /** Acquires `levels[from..]` in order; synchronous for as long as the ledger answers synchronously. */
  #runStage(levels: readonly CapLevel[], from: number): StageResult | Promise<StageResult> {
    const { ledger, limits } = this.#plan;
    for (let i = from; i < levels.length; i++) {
      const level = levels[i]!;
      const limit = limits[level];
      const slot = this.#slots[level];
      if (limit === undefined || slot === undefined) continue;
      let outcome: LedgerOutcome | Promise<LedgerOutcome>;
      try {
        outcome = ledger.acquire(slot, limit);
      } catch {
        // A ledger that throws could not answer: fail closed.
        outcome = "unavailable";
      }
      if (isPromiseLike(outcome)) return this.#awaitLevel(outcome, levels, i);
      const refusal = this.#settle(level, outcome);
      if (refusal !== undefined) return refusal;
    }
    return true;
  }

  #awaitLevel(
    pending: Promise<LedgerOutcome>,
    levels: readonly CapLevel[],
    index: number,
  ): Promise<StageResult> {
    return new Promise<StageResult>((resolve) => {
      const finish = (result: StageResult): void => {
        if (this.#abortStage === finish) this.#abortStage = undefined;
        resolve(result);
      };
      this.#abortStage = finish;
      pending
        .then(undefined, (): LedgerOutcome => "unavailable")
        .then((outcome) => {
          const refusal = this.#settle(levels[index]!, outcome);
          if (refusal !== undefined) return finish(refusal);
          const next = this.#runStage(levels, index + 1);
          if (isPromiseLike(next)) {
            // The next level registered its own abort; this stage resolves with it.
            next.then(resolve);
          } else {
            finish(next);
          }
        });
    });
  }

  /** Records one level's outcome; a refusal (or a reservation already ended) ends it. */
  #settle(level: CapLevel, outcome: LedgerOutcome): CapRefusal | undefined {
    const { ledger, refusals } = this.#plan;
    if (this.#released) {
      // Released while this acquire was in flight: the slot never joined #held, so this is the one
      // place it is returned.
      if (outcome === "held") ledger.release(this.#slots[level]!);
      return refusals.released;
    }
    if (outcome === "held") {
      this.#held |= LEVEL_BIT[level];
      return undefined;
    }
    // The stage's own promise answers with this refusal, not with "released".
    this.#end();
    return outcome === "full" ? refusals.full[level] : refusals.unavailable[level];
  }
}

export function createConnectionCaps(options: ConnectionCapsOptions): ConnectionCaps {
  const { ledger, limits } = options;
  if (ledger === undefined || typeof ledger.acquire !== "function") {
    throw invalidArgument("ledger", "must be a cap ledger");
  }
  if (limits === undefined || typeof limits !== "object")
    throw invalidArgument("limits", "must be an object");
  const plans: Readonly<Record<CapPool, PoolPlan>> = {
    streams: planFor("streams", ledger, limits.streams),
    inflight: planFor("inflight", ledger, limits.inflight),
  };

  return {
    reserveEdge(pool, keys) {
      if (!capPools.includes(pool)) throw invalidArgument("pool", "must be streams or inflight");
      const plan = plans[pool];
      const ipSlot = plan.limits.ip === undefined ? undefined : capSlot(pool, "ip", keys.ip);
      const { signal } = keys;
      if (signal?.aborted) return Promise.resolve(plan.refusals.released);
      const [reservation, result] = CapReservation.startEdge(plan, ipSlot);
      if (!isPromiseLike(result)) return Promise.resolve(result === true ? reservation : result);
      if (signal === undefined) return result.then((outcome) => (outcome === true ? reservation : outcome));
      const onAbort = (): void => reservation.release();
      signal.addEventListener("abort", onAbort, { once: true });
      return result.then((outcome) => {
        signal.removeEventListener("abort", onAbort);
        if (outcome !== true) return outcome;
        // An abort between the stage completing and this callback has already released it.
        return reservation.released ? plan.refusals.released : reservation;
      });
    },
    occupancy: () => ledger.occupancy(),
  };
}
