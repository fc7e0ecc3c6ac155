/**
 * Findings of the security review of the limits work: token buckets and lease sets in every store,
 * the rate limiter, and the cluster cap ledger. Each case runs on real stores (memory, SQLite, Redis,
 * PostgreSQL) where the finding is a store's, or on a real memory store under the ledger where it is
 * the ledger's own.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, describe, it } from "node:test";
import pg from "pg";
import { digest } from "../../src/crypto/ids.ts";
import { isGateError } from "../../src/errors.ts";
import { capSlot, createClusterLedger, type LeaseStore } from "../../src/limits/connection-caps.ts";
import { createRateLimiter } from "../../src/limits/rate-limiter.ts";
import { MAX_LEASE_RENEW_MEMBERS } from "../../src/store/arguments.ts";
import type { Store } from "../../src/store/contract.ts";
import { bucketKey, type LeaseKey, leaseKey } from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { openStore } from "../../src/store/open-store.ts";
import { openPostgresStore } from "../../src/store/postgres-store.ts";
import { postgresBackend } from "../support/backends.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const cases = await storeBackendCases("limits-review");
const postgres = await postgresBackend();

function unique(prefix: string): string {
  return `${prefix}-${randomBytes(6).toString("hex")}`;
}

async function withEachStore(body: (store: Store, name: string) => Promise<void>): Promise<void> {
  for (const backend of cases) {
    if (backend.skip) continue;
    const { url, cleanup } = await backend.open();
    const store = await openStore(url);
    try {
      await body(store, backend.name);
    } finally {
      await store.close();
      await cleanup();
    }
  }
}

describe("limits review: token buckets", () => {
  it("L2 a take no larger than the rounding slack is refused as an argument, never admitted without end", async () => {
    await withEachStore(async (store, name) => {
      // The comparison allows 1e-6 tokens of slack and the tokens lacking are capped at capacity, so
      // a cost of 1e-6 passed "lacking + cost <= capacity + slack" on every take however empty the
      // bucket was: 20 takes of a bucket holding 10 were all admitted.
      const tiny = { capacity: 1e-5, refillPerSecond: 1e-9, cost: 1e-6 };
      const key = bucketKey("review-rate", unique("tiny"));
      let admitted = 0;
      let refusedAsArgument = 0;
      for (let i = 0; i < 20; i++) {
        try {
          if ((await store.takeTokens(key, tiny)).allowed) admitted++;
        } catch (error) {
          assert.ok(isGateError(error, "ERR_ARGUMENT_INVALID"), `${name}: ${String(error)}`);
          refusedAsArgument++;
        }
      }
      assert.ok(admitted <= 10, `${name}: ${admitted} takes of 1e-6 from a bucket of 1e-5`);
      assert.equal(refusedAsArgument, 20, `${name}: a cost inside the slack is not a bucket anyone can hold`);
      // Underflowed rates too: a refill of 1e-320 per second is 0 per ms (an endless wait, or a
      // division by zero in SQL).
      await assert.rejects(
        store.takeTokens(bucketKey("review-rate", unique("denormal")), {
          capacity: 1e-320,
          refillPerSecond: 1e-320,
          cost: 1e-320,
        }),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
        name,
      );
      // The smallest cost still taken is honoured exactly: a bucket of ten takes admits ten.
      const small = { capacity: 0.01, refillPerSecond: 1e-6, cost: 0.001 };
      const smallKey = bucketKey("review-rate", unique("small"));
      let smallAdmitted = 0;
      for (let i = 0; i < 15; i++) if ((await store.takeTokens(smallKey, small)).allowed) smallAdmitted++;
      assert.equal(smallAdmitted, 10, name);
    });
  });
});

describe("limits review: cluster cap ledger", () => {
  it("L1 a replica holding more members of one lease set than a renewal call takes still renews them all", async () => {
    const store = new MemoryStore({ maxEntries: 50_000 });
    const ledger = createClusterLedger({
      store,
      leaseKey,
      replicaId: "busy-replica",
      leaseTtlMs: 30_000,
      renewEveryMs: 29_999,
    });
    try {
      // A global stream cap of 20,000 across the cluster, 10,001 streams open on this replica: one
      // lease set, more members than leaseRenew accepts in a call. The renewal used to fail for the
      // whole set, every pass, so every slot lapsed after the TTL while its stream stayed open.
      const slot = capSlot("streams", "global", "");
      const held = MAX_LEASE_RENEW_MEMBERS + 1;
      for (let i = 0; i < held; i++) assert.equal(await ledger.acquire(slot, 20_000), "held");
      const report = await ledger.renew();
      assert.deepEqual(report, { keys: 1, renewed: held, missing: 0, failedKeys: 0 });
    } finally {
      await ledger.close();
      await store.close();
    }
  });

  it("L1 two ledgers started with one replicaId never share a lease member, so a cap of 1 admits one", async () => {
    // Two containers with one host name, or a replica restarted within the TTL: both count from 1,
    // and the second's acquire of "<id>:1" found the first's member present and was "refreshed"
    // into a slot it never took.
    const store = new MemoryStore();
    const first = createClusterLedger({ store, leaseKey, replicaId: "gateway", renewEveryMs: 9_999 });
    const second = createClusterLedger({ store, leaseKey, replicaId: "gateway", renewEveryMs: 9_999 });
    try {
      const slot = capSlot("streams", "ip", "ip-1");
      assert.equal(await first.acquire(slot, 1), "held");
      assert.equal(await second.acquire(slot, 1), "full");
      first.release(slot);
      await first.close();
      assert.equal(await second.acquire(slot, 1), "held", "the slot the first gave back");
    } finally {
      await second.close();
      await store.close();
    }
  });
});

describe("limits review: cluster cap ledger after a long outage", () => {
  it("L1 once the store answers again after an outage longer than the lease TTL, streams still open count again", async () => {
    // A real memory store on a clock the test moves, behind a switch that makes every call fail as
    // an unreachable store does.
    let now = 1_000_000;
    const memory = new MemoryStore({ now: () => now });
    let down = false;
    const unreachable = () => Promise.reject(new Error("store unreachable"));
    const store: LeaseStore<LeaseKey> = {
      leaseAcquire: (...args) => (down ? unreachable() : memory.leaseAcquire(...args)),
      leaseRenew: (...args) => (down ? unreachable() : memory.leaseRenew(...args)),
      leaseRelease: (...args) => (down ? unreachable() : memory.leaseRelease(...args)),
      leaseCount: (...args) => (down ? unreachable() : memory.leaseCount(...args)),
    };
    const options = { store, leaseKey, leaseTtlMs: 30_000, renewEveryMs: 29_999, releaseRetryDelayMs: 0 };
    const a = createClusterLedger({ ...options, replicaId: "replica-a" });
    const b = createClusterLedger({ ...options, replicaId: "replica-b" });
    const slot = capSlot("streams", "principal", "alice");
    const key = leaseKey("conn-cap", "streams", "principal", digest("conn-cap", "alice"));
    try {
      assert.equal(await a.acquire(slot, 2), "held");
      assert.equal(await a.acquire(slot, 2), "held");
      down = true;
      now += 31_000;
      assert.equal((await a.renew()).failedKeys, 1);
      down = false;
      // The store answers again; A's two streams are still open but their leases lapsed.
      assert.equal((await a.renew()).missing, 2, "reported");
      assert.equal(await memory.leaseCount(key), 2, "and counted again");
      assert.equal(await b.acquire(slot, 2), "full", "so the cap of 2 holds across replicas");
      a.release(slot);
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(await b.acquire(slot, 2), "held", "the slot A gave back");
      a.release(slot);
      b.release(slot);
      await a.close();
      await b.close();
      assert.equal(await memory.leaseCount(key), 0, "every slot returned");
    } finally {
      await a.close();
      await b.close();
      await memory.close();
    }
  });
});

describe("limits review: PostgreSQL isolation", { skip: postgres.skip }, () => {
  const schemas: string[] = [];
  after(async () => {
    const client = new pg.Client({ connectionString: postgres.url, connectionTimeoutMillis: 5_000 });
    await client.connect();
    try {
      for (const schema of schemas) await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    } finally {
      await client.end();
    }
  });

  /**
   * Two stores (two pools) on a server whose default isolation is REPEATABLE READ, as an
   * `ALTER DATABASE … SET default_transaction_isolation` or `ALTER ROLE … SET` would make it; the
   * startup option stands in for those here so no other test sees it.
   */
  async function openRepeatableRead(): Promise<[Store, Store]> {
    const schema = `tgtest_${process.pid}_${randomBytes(6).toString("hex")}`;
    schemas.push(schema);
    const url = new URL(postgres.url);
    url.search = "";
    url.searchParams.set("options", "-c default_transaction_isolation=repeatable\\ read");
    const open = () => openPostgresStore({ url: url.toString(), schema, poolSize: 4 });
    const first = await open();
    return [first, await open()];
  }

  it("L1 S8 concurrent lease acquires over two pools never pass the limit when the database defaults to repeatable read", async () => {
    const [a, b] = await openRepeatableRead();
    try {
      // Under REPEATABLE READ the function's statements all read the snapshot taken before its
      // advisory lock: an acquirer that waited on the lock counted without the inserts it waited
      // for, and a limit of 10 admitted 17.
      for (let round = 0; round < 3; round++) {
        const key = leaseKey("review-lease", unique(`round-${round}`));
        const results = await Promise.all(
          Array.from({ length: 200 }, (_, i) => [a, b][i % 2]!.leaseAcquire(key, `m-${i}`, 10, 60_000)),
        );
        assert.equal(results.filter(Boolean).length, 10, `round ${round}`);
        assert.equal(await a.leaseCount(key), 10, `round ${round}`);
      }
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("L2 concurrent takes from one bucket answer (no serialization failure, so no fallback) when the database defaults to repeatable read", async () => {
    const [a, b] = await openRepeatableRead();
    try {
      // A serialization failure (40001) surfaced as ERR_STORE_UNAVAILABLE: two concurrent requests
      // of one principal were enough to put the rate limiter into its fallback at will.
      const fallbacks: unknown[] = [];
      const limiter = createRateLimiter({
        store: a,
        capacity: 50,
        refillPerSecond: 0.001,
        onFallback: (event) => {
          fallbacks.push(event);
        },
      });
      const key = bucketKey("review-rate", unique("rr"));
      const outcomes = await Promise.all(
        Array.from({ length: 200 }, (_, i) =>
          [a, b][i % 2]!.takeTokens(key, { capacity: 50, refillPerSecond: 0.001 }),
        ),
      );
      assert.equal(outcomes.filter((o) => o.allowed).length, 50);
      const decisions = await Promise.all(Array.from({ length: 100 }, () => limiter.take("principal")));
      assert.equal(decisions.filter((d) => d.allowed).length, 50);
      assert.ok(decisions.every((d) => !d.degraded));
      assert.equal(fallbacks.length, 0);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
