import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import {
  bucketKey,
  counterKey,
  leaseKey,
  ownedKey,
  ownerIndexKey,
  ownershipKey,
} from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { openStore } from "../../src/store/open-store.ts";
import { sharedHandle } from "../support/shared-handle.ts";
import { describeStoreConformance, type StoreHarness } from "./conformance.ts";

export const memoryHarness: StoreHarness = {
  name: "memory",
  raceRounds: 20,
  propertyRuns: 150,
  async fixture() {
    const store = new MemoryStore();
    return {
      durable: false,
      timeoutMs: 0,
      open: async () => sharedHandle(store),
      cleanup: () => store.close(),
    };
  },
};

describeStoreConformance(memoryHarness);

const scope = { tenant: "t", issuer: "https://i.example", subject: "s" };

describe("memory store bounds (L6)", () => {
  it("L6 a full memory store refuses new entries and never evicts a live one", async () => {
    const store = new MemoryStore({ maxEntries: 3 });
    await store.put(ownedKey(scope, "note", "victim"), "victim-data");
    await store.claim(ownershipKey("session", "victim-session"), "victim");
    await store.increment(counterKey("c", "x"), 1);
    await assert.rejects(store.put(ownedKey(scope, "note", "flood"), "x"), (e) =>
      isGateError(e, "ERR_STORE_FULL"),
    );
    await assert.rejects(store.claim(ownershipKey("session", "flood"), "attacker"), (e) =>
      isGateError(e, "ERR_STORE_FULL"),
    );
    await assert.rejects(store.indexAdd(ownerIndexKey(scope, "session"), "m"), (e) =>
      isGateError(e, "ERR_STORE_FULL"),
    );
    assert.equal(await store.get(ownedKey(scope, "note", "victim")), "victim-data");
    assert.equal(await store.get(ownershipKey("session", "victim-session")), "victim");
    // Updating what exists is not a new entry.
    await store.put(ownedKey(scope, "note", "victim"), "updated");
    assert.deepEqual(await store.increment(counterKey("c", "x"), 1), { applied: true, value: 2 });
    // Freeing an entry makes room again.
    assert.equal(await store.delete(ownedKey(scope, "note", "victim")), true);
    await store.put(ownedKey(scope, "note", "next"), "x");
    await store.close();
  });

  it("expired entries are reclaimed before a new one is refused", async () => {
    let now = 1_000;
    const store = new MemoryStore({ maxEntries: 2, now: () => now });
    await store.put(ownedKey(scope, "note", "a"), "a", { ttlMs: 10 });
    await store.put(ownedKey(scope, "note", "b"), "b", { ttlMs: 10 });
    now += 11;
    await store.put(ownedKey(scope, "note", "c"), "c");
    await store.put(ownedKey(scope, "note", "d"), "d");
    assert.equal(store.size, 2);
    await store.close();
  });

  it("L6 the byte bound refuses a new entry that would pass it, and growing an entry past it", async () => {
    const store = new MemoryStore({ maxBytes: 4_000 });
    await store.put(ownedKey(scope, "note", "victim"), "v".repeat(1_000));
    await assert.rejects(store.put(ownedKey(scope, "note", "big"), "x".repeat(1_000)), (e) =>
      isGateError(e, "ERR_STORE_FULL"),
    );
    await assert.rejects(store.put(ownedKey(scope, "note", "victim"), "v".repeat(2_000)), (e) =>
      isGateError(e, "ERR_STORE_FULL"),
    );
    assert.equal(await store.get(ownedKey(scope, "note", "victim")), "v".repeat(1_000));
    await store.put(ownedKey(scope, "note", "victim"), "short");
    await store.put(ownedKey(scope, "note", "next"), "x".repeat(1_000));
    await store.close();
  });

  it("refuses bounds that are not positive integers", () => {
    for (const maxEntries of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.throws(
        () => new MemoryStore({ maxEntries }),
        (e) => isGateError(e, "ERR_ARGUMENT_INVALID"),
        `${maxEntries}`,
      );
    }
    assert.throws(
      () => new MemoryStore({ sweepIntervalMs: 0 }),
      (e) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
  });

  it("openStore('memory:?maxEntries=N') applies the bound", async () => {
    const store = await openStore("memory:?maxEntries=1");
    await store.put(ownedKey(scope, "note", "a"), "a");
    await assert.rejects(store.put(ownedKey(scope, "note", "b"), "b"), (e) =>
      isGateError(e, "ERR_STORE_FULL"),
    );
    await store.close();
  });
});

describe("memory store buckets and leases under its bounds", () => {
  it("L6 a full store refuses a new bucket or lease member, evicts nothing, and still renews and releases", async () => {
    const store = new MemoryStore({ maxEntries: 3 });
    const slow = { capacity: 5, refillPerSecond: 0.01 };
    await store.put(ownedKey(scope, "note", "victim"), "victim-data");
    assert.equal((await store.takeTokens(bucketKey("rate", "a"), slow)).allowed, true);
    assert.equal(await store.leaseAcquire(leaseKey("connections", "k"), "held", 5, 60_000), true);
    await assert.rejects(store.takeTokens(bucketKey("rate", "b"), slow), (e) =>
      isGateError(e, "ERR_STORE_FULL"),
    );
    await assert.rejects(store.leaseAcquire(leaseKey("connections", "k"), "new", 5, 60_000), (e) =>
      isGateError(e, "ERR_STORE_FULL"),
    );
    // What exists goes on working: a take from an existing bucket, a renewal, a refresh.
    assert.equal((await store.takeTokens(bucketKey("rate", "a"), slow)).remaining, 3);
    assert.equal(await store.leaseRenew(leaseKey("connections", "k"), ["held"], 60_000), 1);
    assert.equal(await store.leaseAcquire(leaseKey("connections", "k"), "held", 5, 60_000), true);
    assert.equal(await store.get(ownedKey(scope, "note", "victim")), "victim-data");
    assert.equal(await store.leaseRelease(leaseKey("connections", "k"), "held"), true);
    assert.equal(
      await store.leaseAcquire(leaseKey("connections", "k"), "new", 5, 60_000),
      true,
      "room again",
    );
    await store.close();
  });

  it("a bucket takes an entry only until it is full again; expired lease members free theirs", async () => {
    let now = 1_000;
    const store = new MemoryStore({ now: () => now });
    // 10 tokens a second: 3 taken are back in 300 ms.
    await store.takeTokens(bucketKey("rate", "a"), { capacity: 5, refillPerSecond: 10, cost: 3 });
    await store.leaseAcquire(leaseKey("connections", "k"), "m", 5, 100);
    assert.equal(store.size, 2);
    now += 100;
    assert.equal(store.size, 1, "the lease member expired");
    now += 200;
    assert.equal(store.size, 0, "the bucket is full again and gone");
    assert.deepEqual(await store.takeTokens(bucketKey("rate", "a"), { capacity: 5, refillPerSecond: 10 }), {
      allowed: true,
      remaining: 4,
      retryAfterMs: 0,
    });
    await store.close();
  });
});

describe("memory store accounting under a full store", () => {
  it("an index add that sweeps its own expired index does not lose the member or its slot", async () => {
    let now = 1_000;
    const store = new MemoryStore({ maxEntries: 2, now: () => now });
    const index = ownerIndexKey(scope, "session");
    await store.indexAdd(index, "old", { ttlMs: 10 });
    await store.put(ownedKey(scope, "note", "r"), "v");
    now += 20;
    await store.indexAdd(index, "new");
    assert.deepEqual(await store.indexList(index), ["new"]);
    assert.equal(store.size, 2);
    assert.equal(await store.indexRemove(index, "new"), true);
    await store.put(ownedKey(scope, "note", "r2"), "v", {});
    await store.close();
  });

  it("a put over an entry that expires while the store is full neither loses the value nor drifts", async () => {
    let now = 1_000;
    // A clock that moves on every reading: each operation must read it once, or the entry it found
    // live could be swept (and released) by the same operation before it writes.
    const store = new MemoryStore({ maxBytes: 300, now: () => now++ });
    const key = ownedKey(scope, "note", "k");
    await store.put(key, "a".repeat(20), { ttlMs: 3 });
    // Growing it does not fit beside itself; it would fit only if the entry itself were swept.
    await assert.rejects(store.put(key, "b".repeat(90)), (e) => isGateError(e, "ERR_STORE_FULL"));
    assert.equal(await store.get(key), "a".repeat(20));
    now += 10;
    assert.equal(store.size, 0, "expired and reclaimed, counted once");
    await store.put(ownedKey(scope, "note", "fits"), "c".repeat(50));
    await store.close();
  });
});
