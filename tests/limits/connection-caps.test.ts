import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { isGateError } from "../../src/errors.ts";
import {
  type CapLedger,
  type CapRefusal,
  type CapSlot,
  capSlot,
  createClusterLedger,
  createConnectionCaps,
  createLocalLedger,
  type LedgerOutcome,
  type Reservation,
} from "../../src/limits/connection-caps.ts";
import { fastCheckParameters } from "../support/fast-check.ts";
import { createLeaseStoreDouble, doubleLeaseKey } from "../support/lease-store-double.ts";

/** A ledger whose acquires wait until the test answers them; the inner local ledger decides. */
function deferredLedger() {
  const inner = createLocalLedger();
  const pending: { slot: CapSlot; limit: number; answer: (outcome?: LedgerOutcome) => void }[] = [];
  const calls = { acquire: 0, release: 0 };
  const ledger: CapLedger = {
    acquire(slot, limit) {
      calls.acquire += 1;
      return new Promise<LedgerOutcome>((resolve) => {
        // With no outcome given, the inner ledger decides at the moment of answering.
        pending.push({ slot, limit, answer: (outcome) => resolve(outcome ?? inner.acquire(slot, limit)) });
      });
    },
    release(slot) {
      calls.release += 1;
      inner.release(slot);
    },
    occupancy: () => inner.occupancy(),
    close: () => inner.close(),
  };
  const next = () => {
    const item = pending.shift();
    assert.ok(item, "an acquire is pending");
    return item;
  };
  return { ledger, pending, calls, next };
}

/** Counts calls on a local ledger, so tests can see which levels were asked. */
function countingLedger() {
  const inner = createLocalLedger();
  const acquired: string[] = [];
  let releases = 0;
  const ledger: CapLedger = {
    acquire(slot, limit) {
      acquired.push(slot.level);
      return inner.acquire(slot, limit);
    },
    release(slot) {
      releases += 1;
      inner.release(slot);
    },
    occupancy: () => inner.occupancy(),
    close: () => inner.close(),
  };
  return { ledger, acquired, releases: () => releases };
}

/** Lets every pending promise continuation run. */
const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function isReservation(value: Reservation | CapRefusal): value is Reservation {
  return value.refused === false;
}

async function reserve(
  caps: ReturnType<typeof createConnectionCaps>,
  ip: string,
  pool: "streams" | "inflight" = "streams",
): Promise<Reservation> {
  const result = await caps.reserveEdge(pool, { ip });
  assert.ok(isReservation(result), `expected a reservation, got ${JSON.stringify(result)}`);
  return result;
}

function held(ledger: CapLedger): Record<string, number> {
  return Object.fromEntries(ledger.occupancy().map((entry) => [`${entry.pool}.${entry.level}`, entry.held]));
}

const allLimits = { global: 10, perIp: 10, perPrincipal: 10, perSession: 10 };

describe("connection caps", () => {
  it("L1 accept: both stages hold one slot per level, release returns them all", async () => {
    const ledger = createLocalLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: allLimits, inflight: {} } });
    const reservation = await reserve(caps, "ip-a");
    assert.deepEqual(held(ledger), { "streams.global": 1, "streams.ip": 1 });
    assert.equal(await reservation.extend({ principalKey: "p-a", sessionKey: "s-a" }), true);
    assert.deepEqual(held(ledger), {
      "streams.global": 1,
      "streams.ip": 1,
      "streams.principal": 1,
      "streams.session": 1,
    });
    assert.deepEqual(caps.occupancy(), ledger.occupancy());
    reservation.release();
    assert.equal(reservation.released, true);
    assert.deepEqual(ledger.occupancy(), []);
  });

  it("L1 pools count separately, and a pool without limits asks the ledger nothing", async () => {
    const { ledger, acquired } = countingLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: { global: 1 }, inflight: {} } });
    const stream = await reserve(caps, "ip-a", "streams");
    const requests = await Promise.all([
      reserve(caps, "ip-a", "inflight"),
      reserve(caps, "ip-a", "inflight"),
    ]);
    assert.equal(await requests[0].extend({ principalKey: "p", sessionKey: "s" }), true);
    assert.deepEqual(acquired, ["global"], "only the configured level was asked");
    stream.release();
    for (const request of requests) request.release();
    assert.deepEqual(ledger.occupancy(), []);
  });

  it("L1 refusal at the global level returns the per-IP slot of the same stage at once", async () => {
    const ledger = createLocalLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: { global: 1, perIp: 5 }, inflight: {} } });
    const first = await reserve(caps, "ip-a");
    const refusal = await caps.reserveEdge("streams", { ip: "ip-b" });
    assert.deepEqual(refusal, { refused: true, pool: "streams", level: "global", reason: "cap-global" });
    assert.deepEqual(held(ledger), { "streams.global": 1, "streams.ip": 1 }, "ip-b's slot is back");
    first.release();
    assert.deepEqual(ledger.occupancy(), []);
  });

  it("L1 refusal at the per-IP level never touches the global count", async () => {
    const { ledger, acquired } = countingLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: { global: 5, perIp: 1 }, inflight: {} } });
    const first = await reserve(caps, "ip-a");
    acquired.length = 0;
    const refusal = await caps.reserveEdge("streams", { ip: "ip-a" });
    assert.deepEqual(refusal, { refused: true, pool: "streams", level: "ip", reason: "cap-ip" });
    assert.deepEqual(acquired, ["ip"]);
    assert.ok(
      isReservation(await caps.reserveEdge("streams", { ip: "ip-b" })),
      "another address is admitted",
    );
    first.release();
  });

  it("L1 refusal at the per-principal level ends the whole reservation, edge slots included", async () => {
    const ledger = createLocalLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: allLimits, inflight: {} } });
    const limited = createConnectionCaps({
      ledger,
      limits: { streams: { ...allLimits, perPrincipal: 1 }, inflight: {} },
    });
    const first = await reserve(limited, "ip-a");
    assert.equal(await first.extend({ principalKey: "p-a" }), true);
    const second = await reserve(limited, "ip-b");
    const refusal = await second.extend({ principalKey: "p-a", sessionKey: "s-2" });
    assert.deepEqual(refusal, {
      refused: true,
      pool: "streams",
      level: "principal",
      reason: "cap-principal",
    });
    assert.equal(second.released, true);
    assert.deepEqual(held(ledger), { "streams.global": 1, "streams.ip": 1, "streams.principal": 1 });
    second.release();
    assert.deepEqual(held(ledger), { "streams.global": 1, "streams.ip": 1, "streams.principal": 1 });
    first.release();
    assert.deepEqual(ledger.occupancy(), []);
    // The same ledger serves both; the unlimited caps object never refuses the principal.
    const third = await reserve(caps, "ip-c");
    assert.equal(await third.extend({ principalKey: "p-a" }), true);
    third.release();
  });

  it("L1 refusal at the per-session level returns nothing of the principal (session goes first)", async () => {
    const { ledger, acquired } = countingLedger();
    const caps = createConnectionCaps({
      ledger,
      limits: { streams: { perPrincipal: 5, perSession: 1 }, inflight: {} },
    });
    const first = await reserve(caps, "ip-a");
    assert.equal(await first.extend({ principalKey: "p-a", sessionKey: "s-a" }), true);
    acquired.length = 0;
    const second = await reserve(caps, "ip-a");
    const refusal = await second.extend({ principalKey: "p-a", sessionKey: "s-a" });
    assert.deepEqual(refusal, { refused: true, pool: "streams", level: "session", reason: "cap-session" });
    assert.deepEqual(acquired, ["session"]);
    const sessionless = await reserve(caps, "ip-a");
    assert.equal(await sessionless.extend({ principalKey: "p-a" }), true, "no session key: no session cap");
    first.release();
    sessionless.release();
    assert.deepEqual(ledger.occupancy(), []);
  });

  it("L1 a refusal names pool, level and reason, never the key", async () => {
    const ledger = createLocalLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: {}, inflight: { perIp: 0 } } });
    const refusal = await caps.reserveEdge("inflight", { ip: "tag-0123456789ab" });
    assert.deepEqual(Object.keys(refusal).sort(), ["level", "pool", "reason", "refused"]);
    assert.ok(!JSON.stringify(refusal).includes("tag-0123456789ab"));
  });

  it("L1 release twice returns each slot once and leaves other reservations' slots alone", async () => {
    const { ledger, releases } = countingLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: allLimits, inflight: {} } });
    const a = await reserve(caps, "ip-a");
    const b = await reserve(caps, "ip-a");
    assert.equal(await a.extend({ principalKey: "p", sessionKey: "s" }), true);
    assert.equal(await b.extend({ principalKey: "p", sessionKey: "s" }), true);
    a.release();
    a.release();
    assert.equal(releases(), 4);
    assert.deepEqual(held(ledger), {
      "streams.global": 1,
      "streams.ip": 1,
      "streams.principal": 1,
      "streams.session": 1,
    });
    b.release();
    assert.deepEqual(ledger.occupancy(), []);
  });

  it("L1 release while an extend is pending: the promise answers at once, the slot returns when granted", async () => {
    const { ledger, calls, next } = deferredLedger();
    const caps = createConnectionCaps({
      ledger,
      limits: { streams: { global: 5, perPrincipal: 5 }, inflight: {} },
    });
    const edge = caps.reserveEdge("streams", { ip: "ip-a" });
    next().answer();
    const reservation = await edge;
    assert.ok(isReservation(reservation));
    const extended = reservation.extend({ principalKey: "p-a" });
    const principalAcquire = next();
    reservation.release();
    assert.deepEqual(await extended, { refused: true, pool: "streams", level: null, reason: "released" });
    assert.deepEqual(ledger.occupancy(), []);
    assert.equal(calls.release, 1, "the global slot was returned at release");
    principalAcquire.answer();
    await flush();
    assert.equal(calls.release, 2, "the principal slot, granted late, was returned when it resolved");
    assert.deepEqual(ledger.occupancy(), []);
    reservation.release();
    assert.equal(calls.release, 2);
  });

  it("L1 release while an acquire is pending that then refuses returns nothing more", async () => {
    const { ledger, calls, next } = deferredLedger();
    const caps = createConnectionCaps({
      ledger,
      limits: { streams: { global: 5, perPrincipal: 5 }, inflight: {} },
    });
    const edge = caps.reserveEdge("streams", { ip: "ip-a" });
    next().answer();
    const reservation = (await edge) as Reservation;
    const extended = reservation.extend({ principalKey: "p-a" });
    reservation.release();
    next().answer("full");
    assert.deepEqual(await extended, { refused: true, pool: "streams", level: null, reason: "released" });
    await flush();
    assert.equal(calls.release, 1);
    assert.deepEqual(ledger.occupancy(), []);
  });

  it("L1 aborting a pending edge stage answers at once; the late slot returns and nothing more is asked", async () => {
    const { ledger, calls, next } = deferredLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: { global: 5, perIp: 5 }, inflight: {} } });
    const controller = new AbortController();
    const edge = caps.reserveEdge("streams", { ip: "ip-a", signal: controller.signal });
    const ipAcquire = next();
    controller.abort();
    assert.deepEqual(await edge, { refused: true, pool: "streams", level: null, reason: "released" });
    ipAcquire.answer();
    await flush();
    assert.equal(calls.acquire, 1, "the global level is never asked after the abort");
    assert.equal(calls.release, 1);
    assert.deepEqual(ledger.occupancy(), []);
  });

  it("L1 an already-aborted signal is refused without asking the ledger", async () => {
    const { ledger, acquired } = countingLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: allLimits, inflight: {} } });
    const result = await caps.reserveEdge("streams", { ip: "ip-a", signal: AbortSignal.abort() });
    assert.equal(result.refused, true);
    assert.deepEqual(acquired, []);
  });

  it("L1 a signal aborted after the edge stage completed does not release the reservation", async () => {
    const { ledger, next } = deferredLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: { global: 1 }, inflight: {} } });
    const controller = new AbortController();
    const edge = caps.reserveEdge("streams", { ip: "ip-a", signal: controller.signal });
    next().answer();
    const reservation = (await edge) as Reservation;
    controller.abort();
    assert.equal(reservation.released, false);
    assert.deepEqual(held(ledger), { "streams.global": 1 });
    reservation.release();
    assert.deepEqual(ledger.occupancy(), []);
  });

  it("L1 extend after release is refused and acquires nothing; extend twice is an argument error", async () => {
    const { ledger, acquired } = countingLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: allLimits, inflight: {} } });
    const reservation = await reserve(caps, "ip-a");
    reservation.release();
    acquired.length = 0;
    assert.deepEqual(await reservation.extend({ principalKey: "p", sessionKey: "s" }), {
      refused: true,
      pool: "streams",
      level: null,
      reason: "released",
    });
    assert.deepEqual(acquired, []);
    assert.deepEqual(ledger.occupancy(), []);
    const other = await reserve(caps, "ip-a");
    assert.equal(await other.extend({ principalKey: "p" }), true);
    assert.throws(
      () => other.extend({ principalKey: "p" }),
      (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
    other.release();
    assert.deepEqual(ledger.occupancy(), []);
  });

  it("L1 the local path takes every slot synchronously, inside the call", () => {
    const ledger = createLocalLedger();
    const caps = createConnectionCaps({ ledger, limits: { streams: allLimits, inflight: {} } });
    const pending = caps.reserveEdge("streams", { ip: "ip-a" });
    assert.deepEqual(held(ledger), { "streams.global": 1, "streams.ip": 1 }, "before any await");
    return pending.then((reservation) => {
      assert.ok(isReservation(reservation));
      void reservation.extend({ principalKey: "p", sessionKey: "s" });
      assert.equal(ledger.occupancy().length, 4);
      reservation.release();
      assert.deepEqual(ledger.occupancy(), []);
    });
  });

  it("L1 a ledger that throws or rejects is a store-unavailable refusal, and earlier slots are returned", async () => {
    const inner = createLocalLedger();
    const failing: CapLedger = {
      acquire(slot, limit) {
        if (slot.level === "global") throw new Error("ledger broke");
        if (slot.level === "principal") return Promise.reject(new Error("ledger broke"));
        return inner.acquire(slot, limit);
      },
      release: (slot) => inner.release(slot),
      occupancy: () => inner.occupancy(),
      close: () => inner.close(),
    };
    const edgeOnly = createConnectionCaps({
      ledger: failing,
      limits: { streams: { perIp: 3, global: 3 }, inflight: {} },
    });
    assert.deepEqual(await edgeOnly.reserveEdge("streams", { ip: "ip-a" }), {
      refused: true,
      pool: "streams",
      level: "global",
      reason: "cap-store-unavailable",
    });
    assert.deepEqual(inner.occupancy(), []);
    const owner = createConnectionCaps({
      ledger: failing,
      limits: { streams: { perIp: 3, perPrincipal: 3 }, inflight: {} },
    });
    const reservation = await reserve(owner, "ip-a");
    assert.equal(
      ((await reservation.extend({ principalKey: "p" })) as CapRefusal).reason,
      "cap-store-unavailable",
    );
    assert.deepEqual(inner.occupancy(), []);
  });

  it("L1 a cluster ledger whose store does not answer refuses new streams (fail closed)", async () => {
    const store = createLeaseStoreDouble();
    const ledger = createClusterLedger({ store, leaseKey: doubleLeaseKey, replicaId: "r1" });
    const caps = createConnectionCaps({ ledger, limits: { streams: { global: 5, perIp: 5 }, inflight: {} } });
    store.outage = true;
    assert.deepEqual(await caps.reserveEdge("streams", { ip: "ip-a" }), {
      refused: true,
      pool: "streams",
      level: "ip",
      reason: "cap-store-unavailable",
    });
    store.outage = false;
    const reservation = await reserve(caps, "ip-a");
    reservation.release();
    await ledger.close();
    assert.equal(store.totalMembers(), 0);
  });

  it("argument errors name the argument, never its value", () => {
    const ledger = createLocalLedger();
    for (const limits of [{ perIp: -1 }, { global: 1.5 }, { perSession: Number.NaN }]) {
      assert.throws(
        () => createConnectionCaps({ ledger, limits: { streams: limits, inflight: {} } }),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID") && error.message.startsWith("limits.streams."),
      );
    }
    const caps = createConnectionCaps({ ledger, limits: { streams: { perIp: 1 }, inflight: {} } });
    for (const ip of ["", "x".repeat(1025), "\ud800"]) {
      assert.throws(
        () => caps.reserveEdge("streams", { ip }),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID") && !error.message.includes("xxxx"),
      );
    }
    assert.deepEqual(ledger.occupancy(), []);
  });

  it("L1 slot ids are injective: no subject spells another pool's, level's or subject's id", () => {
    const pools = fc.constantFrom("streams" as const, "inflight" as const);
    const levels = fc.constantFrom("ip" as const, "principal" as const, "session" as const);
    const subject = fc.string({ unit: "grapheme", minLength: 1, maxLength: 12 });
    fc.assert(
      fc.property(pools, levels, subject, pools, levels, subject, (p1, l1, s1, p2, l2, s2) => {
        const same = p1 === p2 && l1 === l2 && s1 === s2;
        assert.equal(capSlot(p1, l1, s1).id === capSlot(p2, l2, s2).id, same);
        assert.notEqual(capSlot(p1, l1, s1).id, capSlot(p2, "global", "").id);
      }),
      fastCheckParameters(2_000),
    );
  });
});
