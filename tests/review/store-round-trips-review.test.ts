/**
 * Review of eb03064 (one store round trip before forwarding: getMany, the early rate take).
 * Each test here failed before the fix committed with it.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createRateLimiter } from "../../src/limits/rate-limiter.ts";
import { storeUnavailable } from "../../src/store/arguments.ts";
import type { Store } from "../../src/store/contract.ts";
import {
  type Harness,
  initializeSession,
  mcpHeaders,
  sessionToolsList,
  startHarness,
} from "../support/gateway-harness.ts";

/** The store as the gateway sees it: every call fails as unreachable while `outage.down` is set. */
function switchable(store: Store, outage: { down: boolean }): Store {
  return new Proxy(store, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== "function" || property === "close") return value;
      return async (...args: unknown[]) => {
        if (outage.down) throw storeUnavailable(target.backend, new Error("simulated outage"));
        return (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
      };
    },
  });
}

describe("E3 / invariant 6: requests refused 503 during a store outage spend no rate budget", () => {
  let dir: string;
  let harness: Harness;
  const outage = { down: false };
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "tg-review-rt-"));
    harness = await startHarness({
      // A networked-like backend (not memory), so the rate limiter keeps a reduced local fallback.
      store: `sqlite:${join(dir, "store.db")}`,
      wrapStore: (opened) => switchable(opened, outage),
      // Shared bucket 4 tokens, local fallback 2, refills too slowly to matter during the test.
      extra: { limits: { rate: { burst: 4, perSecond: 0.05, fallbackFactor: 0.5 } } },
    });
  });
  after(async () => {
    outage.down = false;
    await harness?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("the owner's first request once the store is back is served, not 429", async () => {
    const url = `${harness.url}/mcp`;
    const token = await harness.token("alice");
    const sessionId = await initializeSession(url, token); // spends 1 of the shared 4
    outage.down = true;
    for (let i = 0; i < 4; i++) {
      const refused = await sessionToolsList(url, token, sessionId);
      await refused.arrayBuffer();
      assert.equal(refused.status, 503, `request ${i} during the outage fails closed`);
    }
    outage.down = false;
    // Nothing was admitted during the outage: the shared bucket still holds 3 tokens. Before the fix
    // the 503s had each taken a token from the reduced local bucket (early take), so the owner was
    // refused 429 after the store came back (and tests/e2e/store-outage.test.ts saw "status 429").
    const back = await sessionToolsList(url, token, sessionId);
    await back.arrayBuffer();
    assert.equal(back.status, 200);
  });
});

describe("rate limiter: takeShared never decides from the local fallback", () => {
  it("answers null, taking nothing locally and starting no outage, when the store does not answer", async () => {
    let down = true;
    let takes = 0;
    const store = {
      backend: "redis",
      async takeTokens() {
        takes++;
        if (down) throw storeUnavailable("redis", new Error("down"));
        return { allowed: true, remaining: 0, retryAfterMs: 0 };
      },
    } as unknown as Store;
    let fallbacks = 0;
    const limiter = createRateLimiter({
      store,
      capacity: 2,
      refillPerSecond: 0.001,
      fallbackFactor: 0.5,
      onFallback: () => void fallbacks++,
      // Every call after the first local one may probe the store (no retry interval to wait out).
      storeRetryIntervalMs: 0,
    });
    assert.ok(limiter.takeShared, "the gateway's limiter offers a shared-only take");
    for (let i = 0; i < 5; i++) assert.equal(await limiter.takeShared("scope"), null);
    assert.equal(fallbacks, 0, "no outage was started by a take that decided nothing");
    // The local bucket (capacity 1) is untouched: the first ordinary take in the outage is allowed.
    const local = await limiter.take("scope");
    assert.deepEqual([local.allowed, local.degraded], [true, true]);
    // Once degraded, takeShared does not probe (take does): it answers null without a store call.
    const before = takes;
    assert.equal(await limiter.takeShared("scope"), null);
    assert.equal(takes, before);
    // The store answers again: an ordinary take probes it and ends the outage; then takeShared answers.
    down = false;
    const probe = await limiter.take("scope");
    assert.equal(probe.degraded, false);
    assert.deepEqual(await limiter.takeShared("scope"), {
      allowed: true,
      retryAfterSeconds: 0,
      degraded: false,
    });
  });

  it("passes every other store failure on (fail closed)", async () => {
    const store = {
      backend: "redis",
      async takeTokens() {
        throw new Error("boom");
      },
    } as unknown as Store;
    const limiter = createRateLimiter({ store, capacity: 2, refillPerSecond: 1 });
    assert.ok(limiter.takeShared);
    await assert.rejects(limiter.takeShared("scope"), /boom/);
  });
});

describe("DELETE stays exempt from the rate limit: no early take", () => {
  let harness: Harness;
  const names: string[] = [];
  before(async () => {
    harness = await startHarness({
      wrapStore: (opened) =>
        new Proxy(opened, {
          get(target, property, receiver) {
            const value: unknown = Reflect.get(target, property, receiver);
            if (typeof value !== "function" || property === "close") return value;
            return (...args: unknown[]) => {
              names.push(String(property));
              return (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
            };
          },
        }),
    });
  });
  after(async () => {
    await harness?.close();
  });

  it("ending a session takes no rate token", async () => {
    const url = `${harness.url}/mcp`;
    const token = await harness.token("alice");
    const sessionId = await initializeSession(url, token);
    names.length = 0;
    const ended = await fetch(url, {
      method: "DELETE",
      headers: mcpHeaders({
        authorization: `Bearer ${token}`,
        "mcp-session-id": sessionId,
        "mcp-protocol-version": "2025-11-25",
      }),
    });
    await ended.arrayBuffer();
    assert.ok(ended.status < 300, `status ${ended.status}`);
    assert.ok(!names.includes("takeTokens"), `operations: ${names.join(", ")}`);
  });
});
