import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { digest } from "../../src/crypto/ids.ts";
import {
  type CapLedger,
  type CapLevel,
  type CapPool,
  type CapRefusal,
  type CapSlot,
  type ConnectionCapLimits,
  type ConnectionCaps,
  createClusterLedger,
  createConnectionCaps,
  createLocalLedger,
  type LeaseStore,
  type LedgerOutcome,
  type PoolLimits,
  type Reservation,
} from "../../src/limits/connection-caps.ts";
import { fastCheckParameters } from "../support/fast-check.ts";
import {
  createLeaseStoreDouble,
  doubleLeaseKey,
  type LeaseStoreDouble,
} from "../support/lease-store-double.ts";

/**
 * L1 as a model-based property: random sequences of connects, owner checks, releases (sometimes
 * twice) and aborts drive the real `createConnectionCaps` over the real ledgers, while fast-check's
 * scheduler reorders every asynchronous step (ledger or store answers, releases) between them. Each
 * step starts its operation without waiting for it, so many reservations are in flight at once and a
 * release can land while that reservation's acquire is pending.
 *
 * Checked after every step: no slot count ever exceeded its limit (recorded at the moment the count
 * changed, not sampled), a "full" came only from a full count, every limit asked was the configured
 * one, no reservation ever held one slot twice or returned one it did not hold, and every refusal
 * names a level at which the ledger really answered "full". Checked once everything has settled: the
 * counts are exactly what the live reservations hold. After a final release of everything: every
 * count is zero and `occupancy()` is empty.
 */

const NUM_RUNS = 300;
const MAX_COMMANDS = 40;
const POOLS: readonly CapPool[] = ["streams", "inflight"];
const IPS = ["ip-1", "ip-2", "ip-3"] as const;
const PRINCIPALS = ["p-1", "p-2"] as const;
const SESSIONS = ["s-1", "s-2", "s-3"] as const;

const LIMIT_FIELD: Readonly<Record<CapLevel, keyof PoolLimits>> = {
  global: "global",
  ip: "perIp",
  principal: "perPrincipal",
  session: "perSession",
};

type Variant =
  | "local synchronous"
  | "local, scheduled"
  | "cluster, scheduled store"
  | "cluster, scheduled store with outages";

// ---------------------------------------------------------------------------------------------
// The layers around the ledger under test.

/**
 * Innermost layer for the local variants: the real local ledger, with an independent count that
 * records every violation at the moment it happens.
 */
function countedLocalLedger(limits: ConnectionCapLimits, violations: string[]) {
  const inner = createLocalLedger();
  const counts = new Map<string, number>();
  const ledger: CapLedger = {
    acquire(slot, limit) {
      const configured = limits[slot.pool][LIMIT_FIELD[slot.level]];
      if (limit !== configured)
        violations.push(`asked ${slot.id} with limit ${limit}, configured ${configured}`);
      const before = counts.get(slot.id) ?? 0;
      const outcome = inner.acquire(slot, limit);
      if (outcome === "held") {
        counts.set(slot.id, before + 1);
        if (before + 1 > limit) violations.push(`${slot.id} held ${before + 1} > ${limit}`);
      } else if (outcome === "full" && before < limit) {
        violations.push(`${slot.id} refused at ${before} < ${limit}`);
      } else if (outcome === "unavailable") {
        violations.push("a local ledger answered unavailable");
      }
      return outcome;
    },
    release(slot) {
      const before = counts.get(slot.id) ?? 0;
      if (before === 0) violations.push(`${slot.id} released with nothing held`);
      else if (before === 1) counts.delete(slot.id);
      else counts.set(slot.id, before - 1);
      inner.release(slot);
    },
    occupancy: () => inner.occupancy(),
    close: () => inner.close(),
  };
  return { ledger, counts };
}

/** The local ledger made asynchronous: the scheduler decides when it decides, answers and releases. */
function scheduledLedger(inner: CapLedger, s: fc.Scheduler): CapLedger {
  return {
    acquire(slot, limit) {
      return s
        .schedule(Promise.resolve(), `decide ${slot.pool}/${slot.level}`)
        .then(() =>
          s.schedule(Promise.resolve(inner.acquire(slot, limit) as LedgerOutcome), `answer ${slot.level}`),
        );
    },
    release(slot) {
      void s
        .schedule(Promise.resolve(), `release ${slot.pool}/${slot.level}`)
        .then(() => inner.release(slot));
    },
    occupancy: () => inner.occupancy(),
    close: () => inner.close(),
  };
}

/**
 * The store test double with every call split in two scheduled steps: before it takes effect and
 * before its answer is delivered. Each call stays atomic; only their order and timing vary. Records
 * violations of the limits the double sees.
 */
function scheduledStore(
  double: LeaseStoreDouble,
  s: fc.Scheduler,
  limits: ConnectionCapLimits,
  violations: string[],
  failures: { acquires: number },
): LeaseStore<string> {
  const around = <T>(label: string, operation: () => Promise<T>): Promise<T> =>
    s
      .schedule(Promise.resolve(), label)
      .then(operation)
      .then((value) => s.schedule(Promise.resolve(value), `${label} answer`));
  return {
    leaseAcquire: (key, member, limit, ttlMs) =>
      around("leaseAcquire", async () => {
        const [, , pool, level] = key.split("/") as [string, string, CapPool, CapLevel];
        const configured = limits[pool][LIMIT_FIELD[level]];
        if (limit !== configured)
          violations.push(`asked ${key} with limit ${limit}, configured ${configured}`);
        const before = double.members(key).length;
        const admitted = await double.leaseAcquire(key, member, limit, ttlMs).catch((error: unknown) => {
          failures.acquires += 1;
          throw error;
        });
        if (!admitted && before < limit) violations.push(`${key} refused at ${before} < ${limit}`);
        const after = double.members(key).length;
        if (after > limit) violations.push(`${key} held ${after} > ${limit}`);
        return admitted;
      }),
    leaseRenew: (key, members, ttlMs) => around("leaseRenew", () => double.leaseRenew(key, members, ttlMs)),
    leaseRelease: (key, member) => around("leaseRelease", () => double.leaseRelease(key, member)),
    leaseCount: (key) => around("leaseCount", () => double.leaseCount(key)),
  };
}

/**
 * Outermost layer, between the reservations and whatever ledger: per slot object (ip, principal and
 * session slots belong to one reservation), how many are held as the reservation sees it, and how
 * many "full" answers were delivered per (pool, level).
 */
function observedLedger(inner: CapLedger, violations: string[]) {
  const heldBySlot = new Map<CapSlot, number>();
  const fulls = new Map<string, number>();
  const note = (slot: CapSlot, outcome: LedgerOutcome): LedgerOutcome => {
    if (outcome === "held") {
      const held = (heldBySlot.get(slot) ?? 0) + 1;
      heldBySlot.set(slot, held);
      if (slot.level !== "global" && held > 1) violations.push(`one reservation held ${slot.id} twice`);
    } else if (outcome === "full") {
      const key = `${slot.pool}/${slot.level}`;
      fulls.set(key, (fulls.get(key) ?? 0) + 1);
    }
    return outcome;
  };
  const ledger: CapLedger = {
    acquire(slot, limit) {
      const outcome = inner.acquire(slot, limit);
      return typeof outcome === "string" ? note(slot, outcome) : outcome.then((value) => note(slot, value));
    },
    release(slot) {
      const held = heldBySlot.get(slot) ?? 0;
      if (held === 0) violations.push(`${slot.id} returned by a reservation that did not hold it`);
      else heldBySlot.set(slot, held - 1);
      inner.release(slot);
    },
    occupancy: () => inner.occupancy(),
    close: () => inner.close(),
  };
  const stillHeld = (): number => [...heldBySlot.values()].reduce((sum, n) => sum + n, 0);
  return { ledger, fulls, stillHeld };
}

// ---------------------------------------------------------------------------------------------
// Model and commands.

type Phase = "edge-pending" | "reserved" | "extend-pending" | "extended" | "refused" | "ended";

interface Entry {
  readonly id: number;
  readonly pool: CapPool;
  readonly ip: string;
  readonly controller: AbortController;
  phase: Phase;
  reservation?: Reservation;
  principal?: string;
  session?: string | undefined;
}

interface Model {
  readonly entries: Entry[];
}

interface Real {
  readonly s: fc.Scheduler;
  readonly caps: ConnectionCaps;
  readonly limits: ConnectionCapLimits;
  readonly violations: string[];
  readonly refusals: Map<string, number>;
  readonly fulls: Map<string, number>;
  /** Acquires the store refused to answer; a "cap-store-unavailable" refusal needs one. */
  readonly storeFailures: { acquires: number };
  readonly store: LeaseStoreDouble | undefined;
  readonly seen: Set<"released" | "cap" | "unavailable">;
}

/** Runs in which each interesting path was taken, so the output shows the property is not vacuous. */
interface Coverage {
  runs: number;
  releasedWhilePending: number;
  capRefused: number;
  storeUnavailable: number;
  leasesLeftToExpire: number;
}

function recordRefusal(real: Real, refusal: CapRefusal): void {
  real.seen.add(
    refusal.reason === "released"
      ? "released"
      : refusal.reason === "cap-store-unavailable"
        ? "unavailable"
        : "cap",
  );
  if (refusal.reason === "released") return;
  const key = refusal.reason === "cap-store-unavailable" ? "unavailable" : `${refusal.pool}/${refusal.level}`;
  real.refusals.set(key, (real.refusals.get(key) ?? 0) + 1);
}

function checkStep(real: Real): void {
  assert.deepEqual(real.violations, [], "no violation so far");
  const unavailable = real.refusals.get("unavailable") ?? 0;
  assert.ok(unavailable <= real.storeFailures.acquires, "refused as unavailable only when the store failed");
  for (const [key, refused] of real.refusals) {
    if (key === "unavailable") continue;
    assert.ok(refused <= (real.fulls.get(key) ?? 0), `${key}: ${refused} refusals, fewer "full" answers`);
  }
}

function pick(model: Model, index: number, phases: readonly Phase[]): Entry | undefined {
  const candidates = model.entries.filter((entry) => phases.includes(entry.phase));
  return candidates.length === 0 ? undefined : candidates[index % candidates.length];
}

type Command = fc.AsyncCommand<Model, Real>;

function reserveEdge(pool: CapPool, ip: string): Command {
  return {
    check: () => true,
    async run(model, real) {
      const entry: Entry = {
        id: model.entries.length,
        pool,
        ip,
        controller: new AbortController(),
        phase: "edge-pending",
      };
      model.entries.push(entry);
      void real.caps.reserveEdge(pool, { ip, signal: entry.controller.signal }).then((result) => {
        if (result.refused) {
          recordRefusal(real, result);
          entry.phase = "refused";
        } else {
          entry.reservation = result;
          entry.phase = "reserved";
        }
      });
      checkStep(real);
    },
    toString: () => `reserveEdge(${pool}, ${ip})`,
  };
}

function extend(index: number, principal: string, session: string | undefined): Command {
  return {
    check: () => true,
    async run(model, real) {
      const entry = pick(model, index, ["reserved"]);
      if (entry !== undefined) {
        entry.phase = "extend-pending";
        entry.principal = principal;
        entry.session = session;
        void entry.reservation!.extend({ principalKey: principal, sessionKey: session }).then((result) => {
          if (result === true) {
            // A release may have come first; then the entry has already ended.
            if (entry.phase === "extend-pending") entry.phase = "extended";
          } else {
            recordRefusal(real, result);
            entry.phase = "ended";
          }
        });
      }
      checkStep(real);
    },
    toString: () => `extend(#${index}, ${principal}, ${session ?? "no session"})`,
  };
}

function release(index: number, twice: boolean): Command {
  return {
    check: () => true,
    async run(model, real) {
      const entry = pick(model, index, ["reserved", "extend-pending", "extended", "ended"]);
      if (entry?.reservation !== undefined) {
        entry.reservation.release();
        if (twice) entry.reservation.release();
        assert.equal(entry.reservation.released, true);
        entry.phase = "ended";
      }
      checkStep(real);
    },
    toString: () => `release(#${index}${twice ? ", twice" : ""})`,
  };
}

/** The client goes away while a stage is pending: the signal for the edge, release() for the owner stage. */
function abort(index: number): Command {
  return {
    check: () => true,
    async run(model, real) {
      const entry = pick(model, index, ["edge-pending", "extend-pending"]);
      if (entry?.phase === "edge-pending") {
        entry.controller.abort();
      } else if (entry?.phase === "extend-pending") {
        entry.reservation!.release();
        entry.phase = "ended";
      }
      checkStep(real);
    },
    toString: () => `abort(#${index})`,
  };
}

/** The store stops answering (every call rejects without effect) or comes back. */
function storeOutage(on: boolean): Command {
  return {
    check: () => true,
    async run(_model, real) {
      real.store!.outage = on;
      checkStep(real);
    },
    toString: () => (on ? "store down" : "store back"),
  };
}

const commandList = [
  fc.tuple(fc.constantFrom(...POOLS), fc.constantFrom(...IPS)).map(([pool, ip]) => reserveEdge(pool, ip)),
  fc
    .tuple(
      fc.nat(),
      fc.constantFrom(...PRINCIPALS),
      fc.option(fc.constantFrom(...SESSIONS), { nil: undefined }),
    )
    .map(([index, principal, session]) => extend(index, principal, session)),
  fc.tuple(fc.nat(), fc.boolean()).map(([index, twice]) => release(index, twice)),
  fc.nat().map((index) => abort(index)),
];
const commands = fc.commands(commandList, { maxCommands: MAX_COMMANDS });
const commandsWithOutages = fc.commands([...commandList, fc.boolean().map((on) => storeOutage(on))], {
  maxCommands: MAX_COMMANDS,
});

const limit = fc.option(fc.integer({ min: 0, max: 3 }), { nil: undefined, freq: 4 });
const poolLimits: fc.Arbitrary<PoolLimits> = fc.record({
  global: limit,
  perIp: limit,
  perPrincipal: limit,
  perSession: limit,
});
const capLimits: fc.Arbitrary<ConnectionCapLimits> = fc.record({ streams: poolLimits, inflight: poolLimits });

/** What the live reservations hold, per slot id, from the model alone. */
function expectedCounts(model: Model, limits: ConnectionCapLimits): Map<string, number> {
  const expected = new Map<string, number>();
  const add = (pool: CapPool, level: CapLevel, subject: string): void => {
    if (limits[pool][LIMIT_FIELD[level]] === undefined) return;
    const id = `${pool}/${level}/${subject}`;
    expected.set(id, (expected.get(id) ?? 0) + 1);
  };
  for (const entry of model.entries) {
    if (entry.phase !== "reserved" && entry.phase !== "extended") continue;
    add(entry.pool, "global", "");
    add(entry.pool, "ip", entry.ip);
    if (entry.phase === "extended") {
      add(entry.pool, "principal", entry.principal!);
      if (entry.session !== undefined) add(entry.pool, "session", entry.session);
    }
  }
  return expected;
}

/**
 * Runs the scheduler until nothing is left: `waitAll` returns as its last task resolves, before the
 * promise continuations behind that task have run, and those may schedule more.
 */
async function settle(s: fc.Scheduler): Promise<void> {
  do {
    await s.waitAll();
    await new Promise((resolve) => setImmediate(resolve));
  } while (s.count() > 0);
}

function sum(counts: Iterable<number>): number {
  let total = 0;
  for (const n of counts) total += n;
  return total;
}

// ---------------------------------------------------------------------------------------------
// The properties.

function property(variant: Variant, coverage: Coverage) {
  const outages = variant === "cluster, scheduled store with outages";
  const cluster = outages || variant === "cluster, scheduled store";
  return fc.asyncProperty(
    fc.scheduler(),
    capLimits,
    outages ? commandsWithOutages : commands,
    async (s, limits, cmds) => {
      const violations: string[] = [];
      const storeFailures = { acquires: 0 };
      let ledgerUnderTest: CapLedger;
      let counts: () => Map<string, number>;
      let store: LeaseStoreDouble | undefined;
      if (cluster) {
        const double = createLeaseStoreDouble();
        store = double;
        // Renewal is left to its timer, which never fires within a run: leases expire only when the
        // test moves the double's clock.
        ledgerUnderTest = createClusterLedger({
          store: scheduledStore(double, s, limits, violations, storeFailures),
          leaseKey: doubleLeaseKey,
          replicaId: "model",
          // Retries wait on real timers, outside the scheduler, so they would only ever run after the
          // outage ended (cluster-cap-ledger.test.ts covers them). One attempt makes a release that
          // fails in an outage leave its lease to expire, the path this variant must reach.
          releaseAttempts: outages ? 1 : 3,
          releaseRetryDelayMs: 0,
        });
        counts = () => {
          const byId = new Map<string, number>();
          for (const pool of POOLS) {
            for (const level of ["global", "ip", "principal", "session"] as const) {
              const subjects: readonly string[] =
                level === "global"
                  ? [""]
                  : level === "ip"
                    ? IPS
                    : level === "principal"
                      ? PRINCIPALS
                      : SESSIONS;
              for (const subject of subjects) {
                const key =
                  level === "global"
                    ? doubleLeaseKey("conn-cap", pool, level)
                    : doubleLeaseKey("conn-cap", pool, level, digest("conn-cap", subject));
                const n = double.members(key).length;
                if (n > 0) byId.set(`${pool}/${level}/${subject}`, n);
              }
            }
          }
          assert.equal(sum(byId.values()), double.totalMembers(), "no lease outside the expected keys");
          return byId;
        };
      } else {
        const counted = countedLocalLedger(limits, violations);
        ledgerUnderTest =
          variant === "local, scheduled" ? scheduledLedger(counted.ledger, s) : counted.ledger;
        counts = () => new Map(counted.counts);
      }
      const observed = observedLedger(ledgerUnderTest, violations);
      const real: Real = {
        s,
        caps: createConnectionCaps({ ledger: observed.ledger, limits }),
        limits,
        violations,
        refusals: new Map(),
        fulls: observed.fulls,
        storeFailures,
        store,
        seen: new Set(),
      };
      const model: Model = { entries: [] };

      await fc.scheduledModelRun(s, () => ({ model, real }), cmds);
      await settle(s);

      // Everything has settled: no stage is pending, and the counts are exactly the live reservations'.
      checkStep(real);
      for (const entry of model.entries) {
        assert.ok(entry.phase !== "edge-pending" && entry.phase !== "extend-pending", `#${entry.id} settled`);
      }
      const expected = expectedCounts(model, limits);
      if (!outages) {
        assert.deepEqual(counts(), expected, "counts match the live reservations");
      } else {
        // A release that failed through an outage leaves its lease until the TTL: at least, not exactly.
        const actual = counts();
        for (const [id, n] of expected)
          assert.ok((actual.get(id) ?? 0) >= n, `${id} counts every live reservation`);
        store!.outage = false;
      }

      for (const entry of model.entries) entry.reservation?.release();
      await s.waitFor(ledgerUnderTest.close());
      await settle(s);
      // Leases whose release failed every attempt expire with the TTL; nothing else is left.
      if (outages && store!.totalMembers() > 0) {
        coverage.leasesLeftToExpire += 1;
        store!.advance(30_000);
      }
      coverage.runs += 1;
      if (real.seen.has("released")) coverage.releasedWhilePending += 1;
      if (real.seen.has("cap")) coverage.capRefused += 1;
      if (real.seen.has("unavailable")) coverage.storeUnavailable += 1;

      checkStep(real);
      assert.deepEqual(counts(), new Map(), "every count is back to zero");
      assert.deepEqual(observed.ledger.occupancy(), [], "occupancy is empty");
      assert.equal(observed.stillHeld(), 0, "every slot a reservation held was returned");
      if (store !== undefined) {
        assert.equal(store.totalMembers(), 0);
        assert.deepEqual(store.strayReleases, [], "no lease was released twice");
        for (const [key, { peak, limit: asked }] of store.peaks)
          assert.ok(peak <= asked, `${key} peak ${peak}`);
      }
    },
  );
}

describe("connection caps, model-based (fast-check)", () => {
  for (const variant of [
    "local synchronous",
    "local, scheduled",
    "cluster, scheduled store",
    "cluster, scheduled store with outages",
  ] as const) {
    it(`L1 caps are never exceeded and every reservation is released exactly once (${variant})`, async (t) => {
      const parameters = fastCheckParameters(NUM_RUNS);
      t.diagnostic(
        `fast-check seed=${parameters.seed} numRuns=${parameters.numRuns} maxCommands=${MAX_COMMANDS}`,
      );
      const coverage: Coverage = {
        runs: 0,
        releasedWhilePending: 0,
        capRefused: 0,
        storeUnavailable: 0,
        leasesLeftToExpire: 0,
      };
      await fc.assert(property(variant, coverage), parameters);
      t.diagnostic(
        `runs ${coverage.runs}: stage ended while pending in ${coverage.releasedWhilePending}, cap refusal in ` +
          `${coverage.capRefused}, store-unavailable refusal in ${coverage.storeUnavailable}, ` +
          `leases left to expire in ${coverage.leasesLeftToExpire}`,
      );
    });
  }
});
