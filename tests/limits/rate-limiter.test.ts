/**
 * Per-principal rate limits on every store backend (THREATS L2), and the reduced local fallback when
 * the store is unreachable (DESIGN invariant 6), through a fault proxy in front of the real Redis and
 * PostgreSQL.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { GateError, isGateError } from "../../src/errors.ts";
import { createRateLimiter, type RateLimitFallback } from "../../src/limits/rate-limiter.ts";
import { storeUnavailable } from "../../src/store/arguments.ts";
import type { Store, StoreBackend } from "../../src/store/contract.ts";
import type { BucketKey } from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { openStore } from "../../src/store/open-store.ts";
import { FaultProxy } from "../support/fault-proxy.ts";
import { sharedHandle } from "../support/shared-handle.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const ISSUER = "https://issuer.example";

/** The scope key a gateway would build from a verified principal. */
function scopeKey(tenant: string, subject: string, issuer = ISSUER): string {
  return JSON.stringify([issuer, tenant, subject]);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const cases = await storeBackendCases("rate-limiter");

for (const backend of cases) {
  describe(`rate limiter on ${backend.name}`, { skip: backend.skip }, () => {
    let store: Store;
    let cleanup: () => Promise<void> = async () => undefined;

    before(async () => {
      const opened = await backend.open();
      cleanup = opened.cleanup;
      store = await openStore(opened.url);
    });

    after(async () => {
      await store?.close();
      await cleanup();
    });

    it(`L2 B exhausting its rate limit never affects A, in another tenant or the same one (${backend.name})`, async () => {
      const limiter = createRateLimiter({ store, capacity: 3, refillPerSecond: 0.01 });
      const a = scopeKey("tenant-a", "alice");
      const b = scopeKey("tenant-b", "alice");
      const sameTenant = scopeKey("tenant-a", "bob");
      const otherIssuer = scopeKey("tenant-a", "alice", "https://other-issuer.example");
      const bDecisions = [];
      for (let i = 0; i < 6; i++) bDecisions.push(await limiter.take(b));
      assert.deepEqual(
        bDecisions.map((d) => d.allowed),
        [true, true, true, false, false, false],
      );
      for (const scope of [a, sameTenant, otherIssuer]) {
        for (let i = 0; i < 3; i++) {
          assert.deepEqual(await limiter.take(scope), {
            allowed: true,
            retryAfterSeconds: 0,
            degraded: false,
          });
        }
        const refused = await limiter.take(scope);
        assert.equal(refused.allowed, false, "each principal has its own whole bucket, no more");
        assert.equal(refused.degraded, false);
      }
    });

    it(`a refusal carries a Retry-After in whole seconds that is honoured (${backend.name})`, async () => {
      const limiter = createRateLimiter({ store, capacity: 2, refillPerSecond: 1 });
      const scope = scopeKey("tenant-a", `retry-${Date.now()}`);
      assert.equal((await limiter.take(scope)).allowed, true);
      assert.equal((await limiter.take(scope)).allowed, true);
      const refused = await limiter.take(scope);
      assert.deepEqual(refused, { allowed: false, retryAfterSeconds: 1, degraded: false });
      await sleep(refused.retryAfterSeconds * 1_000);
      assert.deepEqual(await limiter.take(scope), { allowed: true, retryAfterSeconds: 0, degraded: false });

      const slow = createRateLimiter({ store, capacity: 1, refillPerSecond: 0.25, kind: "rate-slow" });
      assert.equal((await slow.take(scope)).allowed, true);
      assert.equal((await slow.take(scope)).retryAfterSeconds, 4, "one token at 0.25/s: ceil of ~4 s");
    });
  });
}

/** Replaces host and port with the proxy's, and shortens the store timeout. */
function viaProxy(url: string, port: number): string {
  const parsed = new URL(url);
  parsed.hostname = "127.0.0.1";
  parsed.port = String(port);
  parsed.searchParams.set("timeoutMs", "500");
  return parsed.toString();
}

function targetOf(url: string, defaultPort: number): { host: string; port: number } {
  const parsed = new URL(url);
  return {
    host: parsed.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1",
    port: Number(parsed.port || defaultPort),
  };
}

const networked = cases.filter((c) => c.name === "redis" || c.name === "postgres");

for (const backend of networked) {
  describe(`rate limiter fallback on ${backend.name}`, { skip: backend.skip }, () => {
    it(`falls back to the reduced local limit while ${backend.name} is unreachable, once per outage, and returns to the shared bucket`, async () => {
      const opened = await backend.open();
      const target = targetOf(opened.url, backend.name === "redis" ? 6379 : 5432);
      const proxy = await FaultProxy.start(target.host, target.port);
      const store = await openStore(viaProxy(opened.url, proxy.port));
      const fallbacks: RateLimitFallback[] = [];
      try {
        // Shared: 8 tokens. Local fallback (factor 0.25): 2 tokens, refilling at 0.0025/s.
        const limiter = createRateLimiter({
          store,
          capacity: 8,
          refillPerSecond: 0.01,
          fallbackFactor: 0.25,
          storeRetryIntervalMs: 50,
          onFallback: (event) => {
            fallbacks.push(event);
          },
        });
        const alice = scopeKey("tenant-a", "alice");
        const bob = scopeKey("tenant-b", "bob");
        for (let i = 0; i < 3; i++) assert.equal((await limiter.take(alice)).degraded, false);

        await proxy.setMode("refuse");
        for (const scope of [alice, bob]) {
          const decisions = [];
          for (let i = 0; i < 4; i++) decisions.push(await limiter.take(scope));
          assert.deepEqual(
            decisions.map((d) => [d.allowed, d.degraded]),
            [
              [true, true],
              [true, true],
              [false, true],
              [false, true],
            ],
            "the reduced local bucket: 2 of the shared 8",
          );
          assert.equal(decisions[2]!.retryAfterSeconds, 400, "one token at 0.0025/s");
        }
        assert.equal(fallbacks.length, 1, "one notice for the outage, not one per request");
        assert.deepEqual(fallbacks[0], { backend: backend.name });

        await proxy.setMode("pass");
        // A fresh principal polls until the store answers again.
        const carol = scopeKey("tenant-c", "carol");
        const deadline = Date.now() + 20_000;
        let decision = await limiter.take(carol);
        while (decision.degraded) {
          assert.ok(Date.now() < deadline, "the limiter did not return to the store");
          await sleep(50);
          decision = await limiter.take(carol);
        }
        assert.equal(decision.allowed, true);
        // Back on the shared bucket: alice took 3 of 8 before the outage, and nothing during it.
        for (let i = 0; i < 5; i++) {
          assert.deepEqual(await limiter.take(alice), {
            allowed: true,
            retryAfterSeconds: 0,
            degraded: false,
          });
        }
        assert.deepEqual(await limiter.take(alice), {
          allowed: false,
          retryAfterSeconds: 100,
          degraded: false,
        });
        assert.equal(fallbacks.length, 1);

        await proxy.setMode("refuse");
        assert.equal((await limiter.take(alice)).degraded, true);
        assert.equal(fallbacks.length, 2, "a new outage is a new notice");
        await proxy.setMode("pass");
      } finally {
        await store.close();
        await proxy.close();
        await opened.cleanup();
      }
    });
  });
}

interface Switchable {
  readonly store: Store;
  failWith: GateError | null;
  storeCalls: BucketKey[];
}

/** A store that reports itself as `backend` and fails takeTokens on demand. */
function switchable(inner: Store, backend: StoreBackend = "redis"): Switchable {
  const handle = sharedHandle(inner);
  const state: Switchable = {
    failWith: null,
    storeCalls: [],
    store: {
      ...handle,
      backend,
      takeTokens: async (key, bucket) => {
        state.storeCalls.push(key);
        if (state.failWith) throw state.failWith;
        return handle.takeTokens(key, bucket);
      },
    },
  };
  return state;
}

const unreachable = () => storeUnavailable("redis", new Error("connection refused"));

describe("rate limiter fallback rules", () => {
  it("decides from a reduced local bucket during an outage, at the reduced refill rate", async () => {
    const inner = new MemoryStore();
    const fake = switchable(inner);
    let now = 1_000_000;
    let notices = 0;
    const limiter = createRateLimiter({
      store: fake.store,
      capacity: 8,
      refillPerSecond: 4,
      now: () => now,
      onFallback: () => {
        notices++;
      },
    });
    const scope = scopeKey("t", "alice");
    fake.failWith = unreachable();
    const burst = await Promise.all(Array.from({ length: 10 }, () => limiter.take(scope)));
    assert.equal(burst.filter((d) => d.allowed).length, 2, "capacity 8 x 0.25");
    assert.ok(burst.every((d) => d.degraded));
    assert.equal(notices, 1, "concurrent failures are one outage");
    assert.deepEqual(await limiter.take(scope), { allowed: false, retryAfterSeconds: 1, degraded: true });
    now += 999;
    assert.equal((await limiter.take(scope)).allowed, false, "refill 4/s x 0.25 = one token a second");
    now += 1;
    assert.equal((await limiter.take(scope)).allowed, true);

    fake.failWith = null;
    now += 1_000;
    assert.deepEqual(await limiter.take(scope), { allowed: true, retryAfterSeconds: 0, degraded: false });
    assert.equal(notices, 1);
    fake.failWith = unreachable();
    assert.equal((await limiter.take(scope)).degraded, true);
    assert.equal(notices, 2);
    await inner.close();
  });

  it("asks the store again at most once per interval during an outage; other calls decide at once", async () => {
    const inner = new MemoryStore();
    const fake = switchable(inner);
    let now = 5_000;
    const limiter = createRateLimiter({
      store: fake.store,
      capacity: 100,
      refillPerSecond: 1,
      now: () => now,
      storeRetryIntervalMs: 1_000,
    });
    fake.failWith = unreachable();
    await limiter.take(scopeKey("t", "a"));
    assert.equal(fake.storeCalls.length, 1);
    for (let i = 0; i < 20; i++) await limiter.take(scopeKey("t", `u${i}`));
    assert.equal(fake.storeCalls.length, 1, "no call waits on a store known to be down");
    now += 1_000;
    await Promise.all([limiter.take(scopeKey("t", "a")), limiter.take(scopeKey("t", "b"))]);
    assert.equal(fake.storeCalls.length, 2, "one probe, not one per caller");
    fake.failWith = null;
    now += 1_000;
    assert.equal((await limiter.take(scopeKey("t", "a"))).degraded, false);
    await limiter.take(scopeKey("t", "b"));
    assert.equal(fake.storeCalls.length, 4, "recovered: every call goes to the store");
    await inner.close();
  });

  it("a store call that began before the outage and answers late does not end it", async () => {
    const inner = new MemoryStore();
    const handle = sharedHandle(inner);
    let release: () => void = () => undefined;
    let slow = true;
    let failing = false;
    let notices = 0;
    const store: Store = {
      ...handle,
      backend: "postgres",
      takeTokens: async (key, bucket) => {
        if (slow) {
          slow = false;
          await new Promise<void>((resolve) => {
            release = resolve;
          });
          return handle.takeTokens(key, bucket);
        }
        if (failing) throw storeUnavailable("postgres", new Error("down"));
        return handle.takeTokens(key, bucket);
      },
    };
    const limiter = createRateLimiter({
      store,
      capacity: 10,
      refillPerSecond: 1,
      storeRetryIntervalMs: 60_000,
      onFallback: () => {
        notices++;
      },
    });
    const late = limiter.take(scopeKey("t", "a"));
    failing = true;
    assert.equal((await limiter.take(scopeKey("t", "b"))).degraded, true);
    release();
    assert.equal((await late).degraded, false, "its own answer came from the store");
    assert.equal((await limiter.take(scopeKey("t", "c"))).degraded, true, "still in the outage");
    assert.equal(notices, 1);
    await inner.close();
  });

  it("local buckets are bounded: beyond the bound the least recently used is dropped", async () => {
    const inner = new MemoryStore();
    const fake = switchable(inner);
    const limiter = createRateLimiter({
      store: fake.store,
      capacity: 4,
      refillPerSecond: 0.01,
      maxLocalBuckets: 3,
      now: () => 1_000,
    });
    fake.failWith = unreachable();
    const [k1, k2, k3, k4] = ["k1", "k2", "k3", "k4"].map((s) => scopeKey("t", s)) as [
      string,
      string,
      string,
      string,
    ];
    // Local capacity: 4 x 0.25 = 1 token each.
    assert.equal((await limiter.take(k1)).allowed, true);
    assert.equal((await limiter.take(k1)).allowed, false);
    await limiter.take(k2);
    await limiter.take(k3);
    assert.equal((await limiter.take(k1)).allowed, false, "k1 is tracked, and now the most recent");
    await limiter.take(k4);
    assert.equal((await limiter.take(k1)).allowed, false, "k2, the least recent, was dropped, not k1");
    assert.equal((await limiter.take(k2)).allowed, true, "k2 starts again from a full local bucket");
    await inner.close();
  });

  it("a throwing or rejecting onFallback hook changes nothing", async () => {
    for (const onFallback of [
      () => {
        throw new Error("audit down");
      },
      async () => {
        throw new Error("audit down");
      },
    ]) {
      const inner = new MemoryStore();
      const fake = switchable(inner);
      const limiter = createRateLimiter({ store: fake.store, capacity: 4, refillPerSecond: 1, onFallback });
      fake.failWith = unreachable();
      assert.deepEqual(await limiter.take(scopeKey("t", "a")), {
        allowed: true,
        retryAfterSeconds: 0,
        degraded: true,
      });
      await inner.close();
    }
  });

  it("fails closed on anything but an unreachable store, and a memory store has no fallback", async () => {
    const inner = new MemoryStore();
    const fake = switchable(inner);
    const limiter = createRateLimiter({ store: fake.store, capacity: 4, refillPerSecond: 1 });
    fake.failWith = new GateError("ERR_STORE_FULL", "store full");
    await assert.rejects(limiter.take(scopeKey("t", "a")), (e) => isGateError(e, "ERR_STORE_FULL"));
    const memory = new MemoryStore();
    const local = createRateLimiter({ store: memory, capacity: 4, refillPerSecond: 1 });
    await memory.close();
    await assert.rejects(local.take(scopeKey("t", "a")), (e) => isGateError(e, "ERR_STORE_UNAVAILABLE"));
    await inner.close();
  });

  it("the bucket key holds a digest of the scope key, never the key itself", async () => {
    const inner = new MemoryStore();
    const fake = switchable(inner);
    const limiter = createRateLimiter({ store: fake.store, capacity: 1, refillPerSecond: 0.01 });
    // Two principals whose naive concatenation would be the same string.
    const forged = JSON.stringify([ISSUER, "tenant/x", "alice"]);
    const victim = JSON.stringify([ISSUER, "tenant", "x/alice"]);
    assert.equal((await limiter.take(forged)).allowed, true);
    assert.equal((await limiter.take(victim)).allowed, true, "distinct scope keys, distinct buckets");
    const [first, second] = fake.storeCalls as [BucketKey, BucketKey];
    assert.notEqual(first.encoded, second.encoded);
    for (const key of fake.storeCalls) {
      assert.match(key.encoded, /^bucket\/rate\/[A-Za-z0-9_-]{43}$/);
      for (const raw of ["tenant", "alice", "issuer"]) assert.ok(!key.encoded.includes(raw), raw);
    }
    await inner.close();
  });

  it("refuses options and scope keys it cannot honour", async () => {
    const store = new MemoryStore();
    const invalid = (options: Record<string, unknown>, what: string) =>
      assert.throws(
        () => createRateLimiter({ store, capacity: 4, refillPerSecond: 1, ...options }),
        (e) => isGateError(e, "ERR_ARGUMENT_INVALID"),
        what,
      );
    invalid({ fallbackFactor: 0 }, "factor 0");
    invalid({ fallbackFactor: 1.5 }, "factor over 1");
    invalid({ fallbackFactor: Number.NaN }, "NaN factor");
    invalid({ capacity: 0.5 }, "a bucket smaller than one request");
    invalid({ refillPerSecond: 0 }, "no refill");
    invalid({ maxLocalBuckets: 0 }, "no local buckets");
    invalid({ storeRetryIntervalMs: -1 }, "negative retry interval");
    invalid({ kind: "Rate/x" }, "bad kind");
    const limiter = createRateLimiter({ store, capacity: 4, refillPerSecond: 1 });
    for (const bad of ["", "\ud800", 42]) {
      await assert.rejects(limiter.take(bad as string), (e) => isGateError(e, "ERR_ARGUMENT_INVALID"));
    }
    await store.close();
  });
});
