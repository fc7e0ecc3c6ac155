/**
 * The conformance suite proves it can fail: each deliberately broken adapter below reproduces a bug
 * from a real incident (../shared/INCIDENTS.md) and must fail the conformance case aimed at it.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { CounterOptions, Store, TtlOptions } from "../../src/store/contract.ts";
import type { CounterKey, IndexKey, LeaseKey, RecordKey } from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { sharedHandle } from "../support/shared-handle.ts";
import { failingCases, type StoreHarness } from "./conformance.ts";

type Mutation = (inner: Store) => Partial<Store>;

// everyrow: check-then-consume; the await between the read and the write is the race window.
const claimAsGetThenPut: Mutation = (inner) => ({
  async claim(key: RecordKey, value: string, options?: TtlOptions) {
    const existing = await inner.get(key);
    if (existing !== null) return { won: false, winner: existing };
    await inner.put(key, value, options);
    return { won: true, winner: value };
  },
});

const takeWithoutDelete: Mutation = (inner) => ({
  take: (key: RecordKey) => inner.get(key),
});

// everyrow's fix put a code back when the wrong client presented it; this one destroys it.
const takeIfEqualsDestroysOnMismatch: Mutation = (inner) => ({
  async takeIfEquals(key: RecordKey, expected: string) {
    return (await inner.take(key)) === expected;
  },
});

// A compare-and-set written as a read and a write: every racer that read the old value "wins", and
// a re-seal overwrites the put that landed in between.
const replaceIfEqualsAsGetThenPut: Mutation = (inner) => ({
  async replaceIfEquals(key: RecordKey, expected: string, value: string) {
    if ((await inner.get(key)) !== expected) return false;
    await inner.put(key, value);
    return true;
  },
});

// HumaneProxy: owner records that never expire.
const ttlIgnored: Mutation = (inner) => ({
  put: (key: RecordKey, value: string) => inner.put(key, value),
  claim: (key: RecordKey, value: string) => inner.claim(key, value),
  increment: (key: CounterKey, delta: number, options?: CounterOptions) =>
    inner.increment(key, delta, options?.limit === undefined ? {} : { limit: options.limit }),
  indexAdd: (key: IndexKey, member: string) => inner.indexAdd(key, member),
});

// juniper-canopy: the cap check and the add separated by an await.
const limitCheckedBeforeAdd: Mutation = (inner) => ({
  async increment(key: CounterKey, delta: number, options?: CounterOptions) {
    const ttl = options?.ttlMs === undefined ? {} : { ttlMs: options.ttlMs };
    const { value } = await inner.increment(key, 0, ttl);
    if (options?.limit !== undefined && value + delta > options.limit) return { applied: false, value };
    return inner.increment(key, delta, ttl);
  },
});

// juniper-canopy again, for connection caps across replicas: the count and the add separated.
const leaseCountedBeforeAdd: Mutation = (inner) => ({
  async leaseAcquire(key: LeaseKey, member: string, limit: number, ttlMs: number) {
    if ((await inner.leaseCount(key)) >= limit) return false;
    return inner.leaseAcquire(key, member, 2 ** 32, ttlMs);
  },
});

// everyrow: keys built by string concatenation, without escaping the segments.
const keyWithoutBuilder: Mutation = (inner) => {
  const naive = <K extends { namespace: string; segments: readonly string[] }>(key: K): K =>
    ({ ...key, encoded: `${key.namespace}:${key.segments.join(":")}` }) as K;
  return {
    get: (key: RecordKey) => inner.get(naive(key)),
    put: (key: RecordKey, value: string, options?: TtlOptions) => inner.put(naive(key), value, options),
    claim: (key: RecordKey, value: string, options?: TtlOptions) => inner.claim(naive(key), value, options),
    take: (key: RecordKey) => inner.take(naive(key)),
    takeIfEquals: (key: RecordKey, expected: string) => inner.takeIfEquals(naive(key), expected),
    replaceIfEquals: (key: RecordKey, expected: string, value: string) =>
      inner.replaceIfEquals(naive(key), expected, value),
    delete: (key: RecordKey) => inner.delete(naive(key)),
    increment: (key: CounterKey, delta: number, options?: CounterOptions) =>
      inner.increment(naive(key), delta, options),
    indexAdd: (key: IndexKey, member: string, options?: TtlOptions) =>
      inner.indexAdd(naive(key), member, options),
    indexRemove: (key: IndexKey, member: string) => inner.indexRemove(naive(key), member),
    indexList: (key: IndexKey) => inner.indexList(naive(key)),
  };
};

/** Each mutant, and the start of the name of the conformance case that must catch it. */
const mutants: Record<string, { mutation: Mutation; caughtBy: string }> = {
  "claim as get-then-put": { mutation: claimAsGetThenPut, caughtBy: "S8 claim race" },
  "take that does not delete": { mutation: takeWithoutDelete, caughtBy: "take returns the value once" },
  "takeIfEquals that deletes on a mismatch": {
    mutation: takeIfEqualsDestroysOnMismatch,
    caughtBy: "takeIfEquals deletes only on a match",
  },
  "replaceIfEquals as get-then-put": {
    mutation: replaceIfEqualsAsGetThenPut,
    caughtBy: "replaceIfEquals race",
  },
  "TTL ignored": { mutation: ttlIgnored, caughtBy: "records expire after their TTL" },
  "limit checked before the add": { mutation: limitCheckedBeforeAdd, caughtBy: "counter race" },
  "lease counted before the add": { mutation: leaseCountedBeforeAdd, caughtBy: "lease race" },
  "key built without the builder": { mutation: keyWithoutBuilder, caughtBy: "property: distinct" },
};

function mutantHarness(name: string, mutation: Mutation): StoreHarness {
  return {
    name: `mutant: ${name}`,
    raceRounds: 2,
    propertyRuns: 100,
    async fixture() {
      const store = new MemoryStore();
      return {
        durable: false,
        timeoutMs: 0,
        open: async () => {
          const handle = sharedHandle(store);
          return { ...handle, ...mutation(handle) };
        },
        cleanup: () => store.close(),
      };
    },
  };
}

describe("store conformance rejects broken adapters", () => {
  for (const [name, { mutation, caughtBy }] of Object.entries(mutants)) {
    it(`rejects the mutant "${name}"`, async (t) => {
      const failed = await failingCases(mutantHarness(name, mutation));
      t.diagnostic(`mutant "${name}" rejected by ${failed.length} case(s): ${failed.join(" | ") || "none"}`);
      assert.ok(
        failed.some((caseName) => caseName.startsWith(caughtBy)),
        `the case "${caughtBy}…" passed a store whose ${name}`,
      );
    });
  }
});
