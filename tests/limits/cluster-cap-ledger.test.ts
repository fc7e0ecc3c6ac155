import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import {
  type CapRefusal,
  capSlot,
  createClusterLedger,
  createConnectionCaps,
  type LeaseOperation,
  type Reservation,
} from "../../src/limits/connection-caps.ts";
import { createLeaseStoreDouble, doubleLeaseKey } from "../support/lease-store-double.ts";

const TTL = 30_000;
/** Renewal timers are driven by hand (`renew()`), except in the one test about the timer. */
const NEVER = TTL - 1;

const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function replica(
  store: ReturnType<typeof createLeaseStoreDouble>,
  replicaId: string,
  errors?: LeaseOperation[],
) {
  return createClusterLedger({
    store,
    leaseKey: doubleLeaseKey,
    replicaId,
    leaseTtlMs: TTL,
    renewEveryMs: NEVER,
    releaseRetryDelayMs: 1,
    onStoreError: (operation) => errors?.push(operation),
  });
}

const globalKey = doubleLeaseKey("conn-cap", "streams", "global");

/** Members as `${replicaId}:${n}`, without the random instance id each ledger adds between. */
const named = (members: readonly string[]): string[] =>
  members.map((member) => member.replace(/:[A-Za-z0-9_-]{22}:/, ":"));

describe("cluster cap ledger", () => {
  it("L1 caps hold across two replicas on one store, and each slot is one lease member", async () => {
    const store = createLeaseStoreDouble();
    const a = replica(store, "replica-a");
    const b = replica(store, "replica-b");
    const limits = { streams: { global: 3, perIp: 2 }, inflight: {} };
    const capsA = createConnectionCaps({ ledger: a, limits });
    const capsB = createConnectionCaps({ ledger: b, limits });

    const results = await Promise.all([
      capsA.reserveEdge("streams", { ip: "ip-1" }),
      capsB.reserveEdge("streams", { ip: "ip-1" }),
      capsB.reserveEdge("streams", { ip: "ip-1" }),
      capsA.reserveEdge("streams", { ip: "ip-2" }),
      capsB.reserveEdge("streams", { ip: "ip-3" }),
    ]);
    const admitted = results.filter((r): r is Reservation => !r.refused);
    const refused = results.filter((r): r is CapRefusal => r.refused);
    assert.equal(admitted.length, 3);
    assert.deepEqual(refused.map((r) => r.reason).sort(), ["cap-global", "cap-ip"]);
    for (const [, { peak, limit }] of store.peaks)
      assert.ok(peak <= limit, "no lease set ever exceeded its limit");
    const members = store.members(globalKey);
    assert.equal(members.length, 3);
    for (const member of members) assert.match(member, /^replica-[ab]:[A-Za-z0-9_-]{22}:\d+$/);
    assert.equal(new Set(members).size, 3);
    assert.deepEqual(
      [...a.occupancy(), ...b.occupancy()].reduce(
        (sum, entry) => sum + (entry.level === "global" ? entry.held : 0),
        0,
      ),
      3,
    );

    for (const reservation of admitted) reservation.release();
    await Promise.all([a.close(), b.close()]);
    assert.equal(store.totalMembers(), 0);
    assert.deepEqual(store.strayReleases, []);
  });

  it("L1 lease keys carry no subject: it is digested, and pool and level are parts of the key", async () => {
    const store = createLeaseStoreDouble();
    const ledger = replica(store, "r1");
    assert.equal(await ledger.acquire(capSlot("inflight", "principal", "alice@example.com"), 5), "held");
    const keys = [...store.peaks.keys()];
    assert.equal(keys.length, 1);
    assert.match(keys[0]!, /^lease\/conn-cap\/inflight\/principal\/[A-Za-z0-9_-]{43}$/);
    assert.ok(!keys[0]!.includes("alice"));
    ledger.release(capSlot("inflight", "principal", "alice@example.com"));
    await ledger.close();
    assert.equal(store.totalMembers(), 0);
  });

  it("L1 a replica that dies (closes without releasing) frees its slots after the TTL; live leases are renewed", async () => {
    const store = createLeaseStoreDouble();
    const a = replica(store, "replica-a");
    const b = replica(store, "replica-b");
    const limits = { streams: { global: 2 }, inflight: {} };
    const capsA = createConnectionCaps({ ledger: a, limits });
    const capsB = createConnectionCaps({ ledger: b, limits });
    const onA = await capsA.reserveEdge("streams", { ip: "x" });
    const onB = await capsB.reserveEdge("streams", { ip: "y" });
    assert.equal(onA.refused, false);
    assert.equal(onB.refused, false);

    await a.close();
    assert.equal((await capsB.reserveEdge("streams", { ip: "z" })).refused, true, "A's slot still counts");
    store.advance(TTL / 2);
    assert.deepEqual(await b.renew(), { keys: 1, renewed: 1, missing: 0, failedKeys: 0 });
    assert.deepEqual(
      await a.renew(),
      { keys: 0, renewed: 0, missing: 0, failedKeys: 0 },
      "a dead replica renews nothing",
    );
    store.advance(TTL / 2);
    assert.deepEqual(named(store.members(globalKey)), ["replica-b:1"], "A's lease expired, B's was renewed");

    const after = await capsB.reserveEdge("streams", { ip: "z" });
    assert.equal(after.refused, false, "the dead replica's slot came back");
    (onB as Reservation).release();
    (after as Reservation).release();
    await b.close();
    assert.equal(store.totalMembers(), 0);
  });

  it("L1 one renewal call per lease set per pass, with every member this replica holds there", async () => {
    const store = createLeaseStoreDouble();
    const ledger = replica(store, "r1");
    const slots = [
      capSlot("streams", "global", ""),
      capSlot("streams", "ip", "a"),
      capSlot("streams", "ip", "b"),
    ];
    for (const slot of [...slots, slots[0]!, slots[0]!]) assert.equal(await ledger.acquire(slot, 10), "held");
    const renewals: { key: string; members: readonly string[] }[] = [];
    const renew = store.leaseRenew.bind(store);
    store.leaseRenew = (key, members, ttlMs) => {
      renewals.push({ key, members: [...members] });
      return renew(key, members, ttlMs);
    };
    assert.deepEqual(await ledger.renew(), { keys: 3, renewed: 5, missing: 0, failedKeys: 0 });
    assert.equal(renewals.length, 3);
    assert.deepEqual(named(renewals.find((r) => r.key === globalKey)?.members ?? []), [
      "r1:1",
      "r1:4",
      "r1:5",
    ]);
    for (const slot of [...slots, slots[0]!, slots[0]!]) ledger.release(slot);
    await ledger.close();
    assert.equal(store.totalMembers(), 0);
  });

  it("L1 the renewal timer keeps leases alive past the TTL and stops at close", async (t) => {
    t.mock.timers.enable({ apis: ["setInterval"] });
    const store = createLeaseStoreDouble();
    const reports: number[] = [];
    const ledger = createClusterLedger({
      store,
      leaseKey: doubleLeaseKey,
      replicaId: "r1",
      leaseTtlMs: 300,
      onRenewal: (report) => reports.push(report.renewed),
    });
    assert.equal(await ledger.acquire(capSlot("streams", "global", ""), 1), "held");
    for (let i = 0; i < 9; i++) {
      store.advance(100);
      t.mock.timers.tick(100);
      await flush();
    }
    assert.equal(reports.length, 9, "default interval: a third of the TTL");
    assert.deepEqual(
      named(store.members(globalKey)),
      ["r1:1"],
      "900 ms later, a 300 ms lease is still there",
    );
    await ledger.close();
    t.mock.timers.tick(1_000);
    await flush();
    assert.equal(reports.length, 9, "no pass after close");
    store.advance(300);
    assert.deepEqual(store.members(globalKey), []);
  });

  it("L1 a renewal that finds its leases gone reports them missing; a failed one is reported per key", async () => {
    const store = createLeaseStoreDouble();
    const errors: LeaseOperation[] = [];
    const ledger = replica(store, "r1", errors);
    assert.equal(await ledger.acquire(capSlot("streams", "global", ""), 5), "held");
    assert.equal(await ledger.acquire(capSlot("streams", "ip", "a"), 5), "held");
    store.outage = true;
    assert.deepEqual(await ledger.renew(), { keys: 2, renewed: 0, missing: 0, failedKeys: 2 });
    assert.deepEqual(errors, ["renew", "renew"]);
    store.outage = false;
    store.advance(TTL);
    assert.deepEqual(await ledger.renew(), { keys: 2, renewed: 0, missing: 2, failedKeys: 0 });
    await ledger.close();
  });

  it("L1 a store that does not answer: acquire is unavailable and nothing is held", async () => {
    const store = createLeaseStoreDouble();
    const errors: LeaseOperation[] = [];
    const ledger = replica(store, "r1", errors);
    store.outage = true;
    assert.equal(await ledger.acquire(capSlot("streams", "global", ""), 5), "unavailable");
    assert.deepEqual(ledger.occupancy(), []);
    assert.deepEqual(errors, ["acquire"]);
    await ledger.close();
    store.outage = false;
    assert.equal(
      ledger.acquire(capSlot("streams", "global", ""), 5),
      "unavailable",
      "a closed ledger refuses",
    );
  });

  it("L1 an acquire whose answer is lost leaves a lease that is never renewed and expires", async () => {
    const store = createLeaseStoreDouble();
    const ledger = replica(store, "r1");
    store.loseNextAcquireAnswer = true;
    assert.equal(await ledger.acquire(capSlot("streams", "global", ""), 5), "unavailable");
    assert.deepEqual(named(store.members(globalKey)), ["r1:1"]);
    assert.deepEqual(await ledger.renew(), { keys: 0, renewed: 0, missing: 0, failedKeys: 0 });
    store.advance(TTL);
    assert.deepEqual(store.members(globalKey), []);
    await ledger.close();
  });

  it("L1 a failed release is retried a bounded number of times, then the lease is left to expire", async () => {
    const store = createLeaseStoreDouble();
    const errors: LeaseOperation[] = [];
    const ledger = replica(store, "r1", errors);
    const slot = capSlot("streams", "global", "");
    assert.equal(await ledger.acquire(slot, 5), "held");
    store.failReleases = 2;
    ledger.release(slot);
    assert.deepEqual(ledger.occupancy(), [], "released at once from this replica's view");
    await ledger.close();
    assert.equal(store.calls.release, 3);
    assert.deepEqual(store.members(globalKey), [], "the third attempt succeeded");

    const again = replica(store, "r2", errors);
    assert.equal(await again.acquire(slot, 5), "held");
    store.failReleases = 3;
    again.release(slot);
    assert.deepEqual(
      await again.renew(),
      { keys: 0, renewed: 0, missing: 0, failedKeys: 0 },
      "no longer renewed",
    );
    await again.close();
    assert.equal(store.calls.release, 6, "three attempts, no more");
    assert.deepEqual(named(store.members(globalKey)), ["r2:1"]);
    store.advance(TTL);
    assert.deepEqual(store.members(globalKey), [], "it expires");
    assert.deepEqual(errors, ["release", "release", "release", "release", "release"]);
  });

  it("a release with nothing held is ignored", async () => {
    const store = createLeaseStoreDouble();
    const ledger = replica(store, "r1");
    ledger.release(capSlot("streams", "global", ""));
    await ledger.close();
    assert.equal(store.calls.release, 0);
  });

  it("argument errors name the argument", () => {
    const store = createLeaseStoreDouble();
    const bad = [
      { replicaId: "" },
      { replicaId: "has space" },
      { replicaId: "r", leaseTtlMs: 0 },
      { replicaId: "r", leaseTtlMs: 1_000, renewEveryMs: 1_000 },
      { replicaId: "r", releaseAttempts: 0 },
    ];
    for (const options of bad) {
      assert.throws(
        () => createClusterLedger({ store, leaseKey: doubleLeaseKey, ...options }),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
    }
  });
});
