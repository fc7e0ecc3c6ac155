/**
 * The store conformance suite: one set of cases that every backend must pass (memory, SQLite, Redis,
 * PostgreSQL), in the style of unstorage's testDriver. The same cases are run against deliberately
 * broken adapters (mutants.test.ts), each of which must fail at least one case: the suite proves it
 * can fail.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import fc from "fast-check";
import { isGateError } from "../../src/errors.ts";
import type { Store } from "../../src/store/contract.ts";
import {
  bucketKey,
  counterKey,
  leaseKey,
  type OwnerScope,
  ownedKey,
  ownerIndexKey,
  ownershipKey,
} from "../../src/store/keys.ts";
import { fastCheckParameters } from "../support/fast-check.ts";
import { FaultProxy } from "../support/fault-proxy.ts";

export interface StoreFixture {
  /** A new handle on this fixture's data (a new connection where the backend has connections). */
  open(): Promise<Store>;
  /** A handle whose calls run in another process, for backends other processes can share. */
  openInOtherProcess?(): Promise<Store>;
  /** The backend's TCP address, and a handle whose connection goes to `port` on loopback instead. */
  network?: {
    host: string;
    port: number;
    openVia(port: number): Promise<Store>;
  };
  /** True if data survives closing every handle and opening a new one. */
  readonly durable: boolean;
  /** The adapter's configured operation timeout, for liveness bounds. */
  readonly timeoutMs: number;
  /** Removes everything this fixture wrote. */
  cleanup(): Promise<void>;
}

export interface StoreHarness {
  readonly name: string;
  /** A fresh, isolated namespace (its own prefix, schema or file). */
  fixture(): Promise<StoreFixture>;
  /** Rounds for the race cases (each round races 1,000 callers). */
  readonly raceRounds?: number;
  /** fast-check runs for the key property. */
  readonly propertyRuns?: number;
}

export type Requirement = "otherProcess" | "network" | "durable";

export interface ConformanceCase {
  readonly name: string;
  readonly requires?: readonly Requirement[];
  run(fixture: StoreFixture, harness: StoreHarness): Promise<void>;
}

/** Generous margin over the adapter's timeout: liveness, not speed, is asserted. */
const LIVENESS_MARGIN_MS = 4_000;
const RACERS = 1_000;

const scopeA: OwnerScope = { tenant: "tenant-a", issuer: "https://issuer.example", subject: "alice" };
const scopeB: OwnerScope = { tenant: "tenant-b", issuer: "https://issuer.example", subject: "alice" };

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function unique(label: string): string {
  return `${label}-${randomUUID()}`;
}

async function withStore<T>(fixture: StoreFixture, body: (store: Store) => Promise<T>): Promise<T> {
  const store = await fixture.open();
  try {
    return await body(store);
  } finally {
    await store.close();
  }
}

/** Two handles racing: one in another process where the backend allows it, else another connection. */
async function withRacers<T>(fixture: StoreFixture, body: (racers: Store[]) => Promise<T>): Promise<T> {
  const first = await fixture.open();
  const second = fixture.openInOtherProcess ? await fixture.openInOtherProcess() : await fixture.open();
  try {
    return await body([first, second]);
  } finally {
    await Promise.all([first.close(), second.close()]);
  }
}

async function expectCode(promise: Promise<unknown>, code: string, what: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isGateError(error), `${what}: expected a GateError, got ${String(error)}`);
    assert.equal(error.code, code, `${what}: wrong code`);
    return true;
  });
}

/** Calls `operation` until it succeeds or `withinMs` passes. */
async function eventually(operation: () => Promise<unknown>, withinMs: number): Promise<void> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    try {
      await operation();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
}

/** Segments dense in separators and escapes. */
const segment = fc
  .array(fc.constantFrom("a", "b", "/", ":", "%", "2F", "3A", ".", "-", "é", "🙂", " "), {
    minLength: 1,
    maxLength: 4,
  })
  .map((parts) => parts.join(""));

type Tuple = [string, string, string, string];

/**
 * The forging attack on a key: move a separator across a segment boundary. From five atoms and a
 * separator this makes two distinct tuples, (x0+s+x1, x2, x3, x4) and (x0, x1+s+x2, x3, x4) shifted
 * to a random boundary, that any builder joining with `s` unescaped maps to one key; plus a random
 * tuple.
 */
const tupleFamily: fc.Arbitrary<Tuple[]> = fc
  .record({
    atoms: fc.array(segment, { minLength: 5, maxLength: 5 }),
    separator: fc.constantFrom(":", "/", "|", ".", "-", "_", " ", "%", "%2F", "\0"),
    at: fc.integer({ min: 0, max: 2 }),
    random: fc.tuple(segment, segment, segment, segment),
  })
  .map(({ atoms, separator, at, random }) => {
    const merge = (i: number): Tuple => {
      const merged = [...atoms];
      merged.splice(i, 2, `${atoms[i]}${separator}${atoms[i + 1]}`);
      return merged as Tuple;
    };
    return [merge(at), merge(at + 1), random];
  });

export const conformanceCases: readonly ConformanceCase[] = [
  {
    name: "get returns what put wrote, put overwrites, absent keys read as null",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = ownedKey(scopeA, "note", unique("k"));
        assert.equal(await store.get(key), null);
        await store.put(key, "v1");
        assert.equal(await store.get(key), "v1");
        await store.put(key, 'v2 with ünïcode and "quotes" and \n newline');
        assert.equal(await store.get(key), 'v2 with ünïcode and "quotes" and \n newline');
        await store.put(key, "");
        assert.equal(await store.get(key), "", "an empty string is a value, not absence");
        await store.put(key, "nul\u0000inside 🙂");
        assert.equal(await store.get(key), "nul\u0000inside 🙂", "U+0000 and astral characters round-trip");
        const index = ownerIndexKey({ ...scopeA, subject: unique("s") }, "session");
        await store.indexAdd(index, "member\u0000x");
        assert.deepEqual(await store.indexList(index), ["member\u0000x"]);
      });
    },
  },
  {
    name: "getMany reads each key's value in the order given: absent, expired and repeated keys included",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const a = ownedKey(scopeA, "note", unique("a"));
        const b = ownedKey(scopeA, "note", unique("b"));
        const short = ownedKey(scopeA, "note", unique("short"));
        const absent = ownedKey(scopeA, "note", unique("absent"));
        // Same segments, another owner's scope: a distinct key that must not answer for `a`.
        const foreign = ownedKey(scopeB, "note", a.segments.at(-1) ?? "");
        await store.put(a, "nul\u0000inside 🙂");
        await store.put(b, "");
        await store.put(short, "soon gone", { ttlMs: 300 });
        await store.increment(counterKey("note", unique("counter")), 1);
        assert.deepEqual(await store.getMany([]), []);
        assert.deepEqual(await store.getMany([absent, b, a, short, a, foreign]), [
          null,
          "",
          "nul\u0000inside 🙂",
          "soon gone",
          "nul\u0000inside 🙂",
          null,
        ]);
        await sleep(700);
        assert.deepEqual(await store.getMany([short, a]), [null, "nul\u0000inside 🙂"], "read after expiry");
        const many = Array.from({ length: 65 }, (_, i) => ownedKey(scopeA, "note", `k${i}`));
        await expectCode(store.getMany(many), "ERR_ARGUMENT_INVALID", "65 keys");
        assert.equal((await store.getMany(many.slice(0, 64))).length, 64, "64 keys are allowed");
      });
    },
  },
  {
    name: "delete removes a record and reports whether one was there",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = ownedKey(scopeA, "note", unique("k"));
        assert.equal(await store.delete(key), false);
        await store.put(key, "v");
        assert.equal(await store.delete(key), true);
        assert.equal(await store.get(key), null);
        assert.equal(await store.delete(key), false);
      });
    },
  },
  {
    name: "records expire after their TTL and read as absent; entries without TTL stay",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const short = ownedKey(scopeA, "note", unique("short"));
        const lasting = ownedKey(scopeA, "note", unique("lasting"));
        await store.put(short, "v", { ttlMs: 300 });
        await store.put(lasting, "v");
        assert.equal(await store.get(short), "v", "read before expiry");
        await sleep(700);
        assert.equal(await store.get(short), null, "read after expiry");
        assert.equal(await store.take(short), null, "take after expiry");
        assert.equal(await store.delete(short), false, "delete after expiry");
        assert.equal(await store.get(lasting), "v");
      });
    },
  },
  {
    name: "claim: the first writer wins and later callers learn the winner; an expired claim is free again",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = ownershipKey("session", unique("id"));
        assert.deepEqual(await store.claim(key, "owner-1", { ttlMs: 400 }), { won: true, winner: "owner-1" });
        assert.deepEqual(await store.claim(key, "owner-2"), { won: false, winner: "owner-1" });
        assert.deepEqual(await store.claim(key, "owner-1"), { won: false, winner: "owner-1" });
        assert.equal(await store.get(key), "owner-1");
        await sleep(800);
        assert.deepEqual(await store.claim(key, "owner-3"), { won: true, winner: "owner-3" });
        assert.equal(await store.get(key), "owner-3");
      });
    },
  },
  {
    name: "S8 claim race: 1,000 concurrent claims by distinct owners over two handles give exactly one winner all agree on",
    async run(fixture, harness) {
      await withRacers(fixture, async (racers) => {
        for (let round = 0; round < (harness.raceRounds ?? 10); round++) {
          const key = ownershipKey("task", unique(`race-${round}`));
          const outcomes = await Promise.all(
            Array.from({ length: RACERS }, (_, i) => racers[i % racers.length]!.claim(key, `owner-${i}`)),
          );
          const winners = outcomes.filter((outcome) => outcome.won);
          assert.equal(winners.length, 1, `round ${round}: ${winners.length} callers were told they won`);
          const winner = winners[0]!.winner;
          for (const outcome of outcomes)
            assert.equal(outcome.winner, winner, `round ${round}: callers disagree`);
          assert.equal(await racers[0]!.get(key), winner);
          assert.equal(await racers[1]!.get(key), winner);
        }
      });
    },
  },
  {
    name: "take returns the value once and deletes it",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = ownershipKey("code", unique("c"));
        assert.equal(await store.take(key), null);
        await store.put(key, "grant");
        assert.equal(await store.take(key), "grant");
        assert.equal(await store.take(key), null);
        assert.equal(await store.get(key), null);
      });
    },
  },
  {
    name: "take race: of 1,000 concurrent takers over two handles exactly one gets the value",
    async run(fixture, harness) {
      await withRacers(fixture, async (racers) => {
        for (let round = 0; round < Math.max(2, Math.floor((harness.raceRounds ?? 10) / 2)); round++) {
          const key = ownershipKey("code", unique(`take-${round}`));
          await racers[0]!.put(key, "single-use");
          const taken = await Promise.all(
            Array.from({ length: RACERS }, (_, i) => racers[i % racers.length]!.take(key)),
          );
          assert.equal(taken.filter((value) => value !== null).length, 1, `round ${round}`);
          assert.equal(await racers[1]!.get(key), null);
        }
      });
    },
  },
  {
    name: "takeIfEquals deletes only on a match, leaves a mismatched value intact, and has one winner under concurrency",
    async run(fixture) {
      await withRacers(fixture, async (racers) => {
        const [store] = racers as [Store, Store];
        const key = ownershipKey("code", unique("c"));
        assert.equal(await store.takeIfEquals(key, "client-a"), false, "absent");
        await store.put(key, "client-a");
        assert.equal(await store.takeIfEquals(key, "client-b"), false, "wrong client");
        assert.equal(await store.get(key), "client-a", "the rightful client's code survives");
        assert.equal(await store.takeIfEquals(key, "client-a"), true);
        assert.equal(await store.get(key), null);
        await store.put(key, "client-a");
        const results = await Promise.all(
          Array.from({ length: 200 }, (_, i) =>
            racers[i % 2]!.takeIfEquals(key, i % 3 === 0 ? "client-b" : "client-a"),
          ),
        );
        assert.equal(results.filter(Boolean).length, 1);
      });
    },
  },
  {
    name: "replaceIfEquals replaces only the exact live value and keeps its TTL; otherwise it writes nothing",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = ownedKey(scopeA, "note", unique("k"));
        assert.equal(await store.replaceIfEquals(key, "v1", "v2"), false, "absent");
        assert.equal(await store.get(key), null, "nothing was written for an absent record");

        await store.put(key, "v1", { ttlMs: 600 });
        assert.equal(await store.replaceIfEquals(key, "v0", "v2"), false, "different value");
        assert.equal(await store.replaceIfEquals(key, "v", "v2"), false, "a prefix is not equal");
        assert.equal(await store.get(key), "v1", "a mismatch leaves the value");
        assert.equal(await store.replaceIfEquals(key, "v1", "v2 ünï\u0000🙂"), true);
        assert.equal(await store.get(key), "v2 ünï\u0000🙂");
        await sleep(900);
        assert.equal(await store.get(key), null, "the replaced value expired with the record's TTL");
        assert.equal(await store.replaceIfEquals(key, "v2 ünï\u0000🙂", "v3"), false, "expired");
        assert.equal(await store.get(key), null, "nothing was written for an expired record");

        const lasting = ownedKey(scopeA, "note", unique("lasting"));
        await store.put(lasting, "");
        assert.equal(await store.replaceIfEquals(lasting, "", "filled"), true, "an empty value matches");
        await sleep(50);
        assert.equal(await store.get(lasting), "filled", "a record without TTL still has none");

        const marked = ownershipKey("code", unique("c"));
        await store.put(marked, "\ufffd");
        assert.equal(await store.replaceIfEquals(marked, "\ud800", "x"), false, "ill-formed expected");
        assert.equal(await store.get(marked), "\ufffd");
        await expectCode(
          store.replaceIfEquals(marked, "\ufffd", "\ud800"),
          "ERR_ARGUMENT_INVALID",
          "ill-formed value",
        );
        assert.equal(await store.get(marked), "\ufffd", "nothing was written by a refused call");
      });
    },
  },
  {
    name: "replaceIfEquals race: of concurrent replacements of one value over two handles exactly one wins",
    async run(fixture, harness) {
      await withRacers(fixture, async (racers) => {
        for (let round = 0; round < Math.max(2, Math.floor((harness.raceRounds ?? 10) / 2)); round++) {
          const key = ownedKey(scopeA, "note", unique(`replace-${round}`));
          await racers[0]!.put(key, "sealed-under-old-key", { ttlMs: 60_000 });
          const results = await Promise.all(
            Array.from({ length: 200 }, (_, i) =>
              racers[i % racers.length]!.replaceIfEquals(key, "sealed-under-old-key", `writer-${i}`),
            ),
          );
          const winners = results.flatMap((won, i) => (won ? [i] : []));
          assert.equal(winners.length, 1, `round ${round}: ${winners.length} winners`);
          assert.equal(await racers[1]!.get(key), `writer-${winners[0]}`, "the winner's value is stored");
        }
      });
    },
  },
  {
    name: "counters: increments add up, negative deltas subtract, a limit refuses without changing the value",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = counterKey("test-counter", unique("c"));
        assert.deepEqual(await store.increment(key, 1), { applied: true, value: 1 });
        assert.deepEqual(await store.increment(key, 4), { applied: true, value: 5 });
        assert.deepEqual(await store.increment(key, -2), { applied: true, value: 3 });
        assert.deepEqual(await store.increment(key, 0), { applied: true, value: 3 });
        assert.deepEqual(await store.increment(key, 2, { limit: 4 }), { applied: false, value: 3 });
        assert.deepEqual(await store.increment(key, 1, { limit: 4 }), { applied: true, value: 4 });
        const fresh = counterKey("test-counter", unique("c"));
        assert.deepEqual(await store.increment(fresh, 5, { limit: 4 }), { applied: false, value: 0 });
        assert.deepEqual(await store.increment(fresh, 0), { applied: true, value: 0 });
      });
    },
  },
  {
    name: "counters expire with their TTL, which later increments do not extend",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = counterKey("test-window", unique("c"));
        await store.increment(key, 3, { ttlMs: 500 });
        await sleep(250);
        assert.deepEqual(await store.increment(key, 1, { ttlMs: 500 }), { applied: true, value: 4 });
        await sleep(500);
        assert.deepEqual(await store.increment(key, 1, { ttlMs: 500 }), { applied: true, value: 1 });
      });
    },
  },
  {
    name: "counters never go below zero, a release is never refused by the limit, and a counter at zero is gone",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const absent = counterKey("test-floor", unique("c"));
        assert.deepEqual(
          await store.increment(absent, -3),
          { applied: true, value: 0 },
          "release of nothing",
        );
        assert.deepEqual(await store.increment(absent, 2), { applied: true, value: 2 });
        assert.deepEqual(await store.increment(absent, -5), { applied: true, value: 0 }, "floored at zero");
        const capped = counterKey("test-floor", unique("c"));
        await store.increment(capped, 5);
        assert.deepEqual(await store.increment(capped, -1, { limit: 2 }), { applied: true, value: 4 });
        // A counter that reached zero was removed: the next increment starts a fresh TTL window.
        const windowed = counterKey("test-floor", unique("c"));
        await store.increment(windowed, 1, { ttlMs: 500 });
        await store.increment(windowed, -1);
        await sleep(300);
        await store.increment(windowed, 1, { ttlMs: 500 });
        await sleep(350);
        assert.deepEqual(
          await store.increment(windowed, 0),
          { applied: true, value: 1 },
          "recreated with a new TTL",
        );
      });
    },
  },
  {
    name: "counter race: 1,000 concurrent increments over two handles are exact, and a limit is never exceeded",
    async run(fixture) {
      await withRacers(fixture, async (racers) => {
        const key = counterKey("test-race", unique("c"));
        await Promise.all(Array.from({ length: RACERS }, (_, i) => racers[i % 2]!.increment(key, 1)));
        assert.deepEqual(await racers[1]!.increment(key, 0), { applied: true, value: RACERS });
        const capped = counterKey("test-cap", unique("c"));
        const outcomes = await Promise.all(
          Array.from({ length: 500 }, (_, i) => racers[i % 2]!.increment(capped, 1, { limit: 100 })),
        );
        assert.equal(outcomes.filter((outcome) => outcome.applied).length, 100);
        for (const outcome of outcomes) assert.ok(outcome.value <= 100, `saw ${outcome.value} over the cap`);
        assert.deepEqual(await racers[0]!.increment(capped, 0), { applied: true, value: 100 });
      });
    },
  },
  {
    name: "indexes: add, list, remove; members expire; re-adding refreshes",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const index = ownerIndexKey({ ...scopeA, subject: unique("s") }, "session");
        assert.deepEqual(await store.indexList(index), []);
        await store.indexAdd(index, "m1");
        await store.indexAdd(index, "m2", { ttlMs: 300 });
        await store.indexAdd(index, "m3", { ttlMs: 300 });
        await store.indexAdd(index, "m1");
        assert.deepEqual((await store.indexList(index)).sort(), ["m1", "m2", "m3"]);
        await store.indexAdd(index, "m3", { ttlMs: 60_000 });
        assert.equal(await store.indexRemove(index, "m1"), true);
        assert.equal(await store.indexRemove(index, "m1"), false);
        await sleep(700);
        assert.deepEqual((await store.indexList(index)).sort(), ["m3"]);
        assert.equal(await store.indexRemove(index, "m2"), false, "an expired member is not there");
      });
    },
  },
  {
    name: "tenants and principals never see each other's data, indexes or ownership",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const part = unique("p");
        const sameTenantOtherUser: OwnerScope = { ...scopeA, subject: "bob" };
        const otherIssuerSameSub: OwnerScope = { ...scopeA, issuer: "https://other-issuer.example" };
        const scopes = [scopeA, scopeB, sameTenantOtherUser, otherIssuerSameSub];
        for (const [i, scope] of scopes.entries()) {
          await store.put(ownedKey(scope, "note", part), `value-${i}`);
          await store.indexAdd(ownerIndexKey(scope, "session"), `${part}-${i}`);
        }
        for (const [i, scope] of scopes.entries()) {
          assert.equal(await store.get(ownedKey(scope, "note", part)), `value-${i}`);
          const members = await store.indexList(ownerIndexKey(scope, "session"));
          assert.deepEqual(
            members.filter((m) => m.startsWith(part)),
            [`${part}-${i}`],
          );
        }
        const id = unique("id");
        await store.claim(ownershipKey("session", id), "owner-a");
        assert.equal(await store.get(ownershipKey("task", id)), null, "ownership is per kind of id");
      });
    },
  },
  {
    name: "property: distinct (tenant, issuer, subject, id) tuples never share a key",
    async run(fixture, harness) {
      await withStore(fixture, async (store) => {
        await fc.assert(
          fc.asyncProperty(fc.array(tupleFamily, { minLength: 1, maxLength: 3 }), async (families) => {
            const run = unique("run");
            const seen = new Set<string>();
            const tuples = families
              .flat()
              .filter((t) => !seen.has(JSON.stringify(t)) && seen.add(JSON.stringify(t)));
            const keys = tuples.map(([tenant, issuer, subject, id]) =>
              ownedKey({ tenant, issuer, subject }, "prop", run, id),
            );
            for (const [i, key] of keys.entries()) await store.put(key, `v${i}`);
            for (const [i, key] of keys.entries()) {
              assert.equal(
                await store.get(key),
                `v${i}`,
                `tuple ${JSON.stringify(tuples[i])} was overwritten`,
              );
            }
          }),
          fastCheckParameters(harness.propertyRuns ?? 60),
        );
      });
    },
  },
  {
    name: "ill-formed Unicode never matches a stored U+FFFD (no driver conversion creates a match)",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = ownershipKey("code", unique("c"));
        await store.put(key, "\ufffd");
        assert.equal(await store.takeIfEquals(key, "\ud800"), false);
        assert.equal(await store.get(key), "\ufffd");
        const index = ownerIndexKey({ ...scopeA, subject: unique("s") }, "session");
        await store.indexAdd(index, "\ufffd");
        assert.equal(await store.indexRemove(index, "\udc00"), false);
        assert.deepEqual(await store.indexList(index), ["\ufffd"]);
      });
    },
  },
  {
    name: "invalid arguments are refused alike on every backend",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = ownedKey(scopeA, "note", unique("k"));
        for (const ttlMs of [0, -1, 1.5, Number.NaN, 31 * 24 * 3_600_000]) {
          await expectCode(store.put(key, "v", { ttlMs }), "ERR_ARGUMENT_INVALID", `ttlMs ${ttlMs}`);
        }
        await expectCode(store.put(key, "\ud800"), "ERR_ARGUMENT_INVALID", "lone surrogate value");
        await expectCode(
          store.increment(counterKey("c", unique("c")), 0.5),
          "ERR_ARGUMENT_INVALID",
          "fractional delta",
        );
        await expectCode(
          store.increment(counterKey("c", unique("c")), 2 ** 32 + 1),
          "ERR_ARGUMENT_INVALID",
          "delta beyond 2^32",
        );
        await expectCode(
          store.indexAdd(ownerIndexKey(scopeA, "s"), ""),
          "ERR_ARGUMENT_INVALID",
          "empty member",
        );
        assert.equal(await store.get(key), null, "nothing was written by a refused call");
      });
    },
  },
  {
    name: "token buckets: start full, refuse when empty with a retry time that is honoured, and refill up to capacity",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        // 2 tokens a second: one every 500 ms.
        const bucket = { capacity: 3, refillPerSecond: 2 };
        const key = bucketKey("test-rate", unique("b"));
        const drainedAt = Date.now();
        for (const left of [2, 1, 0]) {
          assert.deepEqual(await store.takeTokens(key, bucket), {
            allowed: true,
            remaining: left,
            retryAfterMs: 0,
          });
        }
        const refused = await store.takeTokens(key, bucket);
        const sinceDrain = Date.now() - drainedAt;
        assert.equal(refused.allowed, false);
        assert.equal(refused.remaining, 0);
        assert.ok(refused.retryAfterMs >= 1 && refused.retryAfterMs <= 500, `retry ${refused.retryAfterMs}`);
        // Not early either: a token takes 500 ms, less what has passed since the bucket ran dry.
        assert.ok(
          refused.retryAfterMs >= 500 - sinceDrain - 20,
          `retry ${refused.retryAfterMs} ms, ${sinceDrain} ms after draining`,
        );
        const two = await store.takeTokens(key, { ...bucket, cost: 2 });
        assert.equal(two.allowed, false);
        assert.ok(two.retryAfterMs > refused.retryAfterMs, "two tokens take longer than one");
        await sleep(refused.retryAfterMs + 30);
        const honoured = await store.takeTokens(key, bucket);
        assert.equal(honoured.allowed, true, "allowed once the retry time has passed");
        assert.equal((await store.takeTokens(key, bucket)).allowed, false, "and that token was taken");
        // Refill stops at capacity: 3 tokens take 1,500 ms; waiting longer gives no fourth.
        await sleep(2_000);
        for (const left of [2, 1, 0]) assert.equal((await store.takeTokens(key, bucket)).remaining, left);
        assert.equal((await store.takeTokens(key, bucket)).allowed, false);
      });
    },
  },
  {
    name: "token buckets: cost, exact retry times on a slow bucket, and keys that never share tokens",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        // One token every 1,000 s: nothing refills during the test, so every number is exact.
        const bucket = { capacity: 5, refillPerSecond: 0.001 };
        const key = bucketKey("test-rate", unique("b"));
        assert.deepEqual(await store.takeTokens(key, { ...bucket, cost: 3 }), {
          allowed: true,
          remaining: 2,
          retryAfterMs: 0,
        });
        const refused = await store.takeTokens(key, { ...bucket, cost: 3 });
        assert.equal(refused.allowed, false);
        assert.equal(refused.remaining, 2, "a refused take takes nothing");
        assert.ok(
          refused.retryAfterMs > 990_000 && refused.retryAfterMs <= 1_000_000,
          `one token short: about 1,000 s, got ${refused.retryAfterMs} ms`,
        );
        assert.deepEqual(await store.takeTokens(key, { ...bucket, cost: 2 }), {
          allowed: true,
          remaining: 0,
          retryAfterMs: 0,
        });
        // Another key (another tenant's bucket, another kind) is full whatever this one holds.
        const other = bucketKey("test-rate", unique("b"));
        assert.deepEqual(await store.takeTokens(other, bucket), {
          allowed: true,
          remaining: 4,
          retryAfterMs: 0,
        });
        const otherKind = bucketKey("test-other", ...key.segments.slice(1));
        assert.equal((await store.takeTokens(otherKind, bucket)).remaining, 4);
        // A fractional cost and capacity are honoured as such.
        const fractional = bucketKey("test-rate", unique("b"));
        const half = { capacity: 1.5, refillPerSecond: 0.001, cost: 0.5 };
        for (const left of [1, 0, 0])
          assert.equal((await store.takeTokens(fractional, half)).remaining, left);
        assert.equal((await store.takeTokens(fractional, half)).allowed, false);
      });
    },
  },
  {
    name: "token bucket race: concurrent takes over two handles on a bucket of capacity K allow exactly K",
    async run(fixture, harness) {
      await withRacers(fixture, async (racers) => {
        for (let round = 0; round < Math.max(2, Math.floor((harness.raceRounds ?? 10) / 3)); round++) {
          const key = bucketKey("test-race", unique(`bucket-${round}`));
          const bucket = { capacity: 100, refillPerSecond: 0.001 };
          const outcomes = await Promise.all(
            Array.from({ length: 500 }, (_, i) => racers[i % 2]!.takeTokens(key, bucket)),
          );
          const allowed = outcomes.filter((outcome) => outcome.allowed);
          assert.equal(allowed.length, 100, `round ${round}: ${allowed.length} takes allowed`);
          assert.deepEqual(
            allowed.map((outcome) => outcome.remaining).sort((a, b) => a - b),
            Array.from({ length: 100 }, (_, i) => i),
            `round ${round}: each allowed take saw its own bucket state`,
          );
          for (const outcome of outcomes.filter((o) => !o.allowed)) {
            assert.ok(outcome.retryAfterMs >= 1, `round ${round}: a refusal without a retry time`);
          }
          assert.equal((await racers[1]!.takeTokens(key, bucket)).allowed, false);
        }
      });
    },
  },
  {
    name: "leases: acquire up to the limit, a present member is refreshed, release frees a slot, count",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = leaseKey("test-lease", unique("l"));
        assert.equal(await store.leaseCount(key), 0);
        assert.equal(await store.leaseAcquire(key, "a", 2, 60_000), true);
        assert.equal(await store.leaseAcquire(key, "b", 2, 60_000), true);
        assert.equal(await store.leaseAcquire(key, "c", 2, 60_000), false, "over the limit");
        assert.equal(await store.leaseAcquire(key, "a", 2, 60_000), true, "already present");
        assert.equal(await store.leaseCount(key), 2);
        assert.equal(await store.leaseRelease(key, "b"), true);
        assert.equal(await store.leaseRelease(key, "b"), false, "released once");
        assert.equal(await store.leaseRelease(key, "never"), false);
        assert.equal(await store.leaseAcquire(key, "c", 2, 60_000), true, "the freed slot");
        assert.equal(await store.leaseCount(key), 2);
        assert.equal(await store.leaseAcquire(key, "d", 0, 60_000), false, "limit 0 admits no one new");
        assert.equal(await store.leaseAcquire(key, "a", 1, 60_000), true, "a present member stays acquired");
        assert.equal(await store.leaseCount(key), 2, "a lowered limit evicts no one");
        assert.equal(await store.leaseAcquire(key, "member\u0000🙂", 3, 60_000), true);
        assert.equal(await store.leaseRenew(key, ["member\u0000🙂", "a", "a", "never"], 60_000), 2);
        assert.equal(await store.leaseRenew(key, [], 60_000), 0);
        const other = leaseKey("test-lease", unique("l"));
        assert.equal(await store.leaseCount(other), 0, "lease sets are per key");
        assert.equal(await store.leaseAcquire(other, "a", 1, 60_000), true);
        assert.equal(await store.leaseRelease(key, "\udc00"), false, "an ill-formed member is not there");
      });
    },
  },
  {
    name: "leases expire unless renewed; an expired member is never renewed and its slot is free",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const key = leaseKey("test-lease", unique("l"));
        assert.equal(await store.leaseAcquire(key, "kept", 2, 300), true);
        assert.equal(await store.leaseAcquire(key, "lapsed", 2, 300), true);
        assert.equal(await store.leaseAcquire(key, "late", 2, 300), false);
        assert.equal(await store.leaseRenew(key, ["kept"], 60_000), 1);
        await sleep(700);
        assert.equal(await store.leaseCount(key), 1, "the member not renewed has expired");
        assert.equal(await store.leaseRenew(key, ["kept", "lapsed"], 60_000), 1, "only the live one");
        assert.equal(await store.leaseCount(key), 1, "renewal did not bring the expired member back");
        assert.equal(await store.leaseRelease(key, "lapsed"), false, "an expired member is not there");
        assert.equal(await store.leaseAcquire(key, "late", 2, 60_000), true, "its slot is free");
        assert.equal(await store.leaseAcquire(key, "lapsed", 2, 60_000), false, "and taken");
        assert.equal(await store.leaseCount(key), 2);
        // A dead holder's slot frees itself: nobody releases it.
        const solo = leaseKey("test-lease", unique("l"));
        assert.equal(await store.leaseAcquire(solo, "crashed-replica", 1, 300), true);
        assert.equal(await store.leaseAcquire(solo, "survivor", 1, 60_000), false);
        await sleep(700);
        assert.equal(await store.leaseAcquire(solo, "survivor", 1, 60_000), true);
      });
    },
  },
  {
    name: "lease race: concurrent acquires of distinct members over two handles admit exactly the limit",
    async run(fixture, harness) {
      await withRacers(fixture, async (racers) => {
        for (let round = 0; round < Math.max(2, Math.floor((harness.raceRounds ?? 10) / 3)); round++) {
          const key = leaseKey("test-race", unique(`lease-${round}`));
          const outcomes = await Promise.all(
            Array.from({ length: 300 }, (_, i) => racers[i % 2]!.leaseAcquire(key, `m-${i}`, 10, 60_000)),
          );
          assert.equal(outcomes.filter(Boolean).length, 10, `round ${round}`);
          assert.equal(await racers[0]!.leaseCount(key), 10);
          // Releases and acquires racing: the count never passes the limit.
          const winners = outcomes.flatMap((won, i) => (won ? [`m-${i}`] : []));
          const mixed = await Promise.all([
            ...winners.slice(0, 5).map((member, i) => racers[i % 2]!.leaseRelease(key, member)),
            ...Array.from({ length: 100 }, (_, i) => racers[i % 2]!.leaseAcquire(key, `n-${i}`, 10, 60_000)),
          ]);
          assert.ok(mixed.slice(0, 5).every(Boolean), `round ${round}: every release found its member`);
          const admitted = mixed.slice(5).filter(Boolean).length;
          assert.ok(admitted <= 5, `round ${round}: ${admitted} admitted into 5 free slots`);
          assert.equal(await racers[1]!.leaseCount(key), 5 + admitted);
        }
      });
    },
  },
  {
    name: "token bucket and lease arguments are refused alike on every backend",
    async run(fixture) {
      await withStore(fixture, async (store) => {
        const bucket = bucketKey("test-args", unique("b"));
        const invalidBuckets: [string, unknown][] = [
          ["capacity 0", { capacity: 0, refillPerSecond: 1 }],
          ["negative capacity", { capacity: -1, refillPerSecond: 1 }],
          ["NaN capacity", { capacity: Number.NaN, refillPerSecond: 1 }],
          ["infinite capacity", { capacity: Number.POSITIVE_INFINITY, refillPerSecond: 1 }],
          ["capacity past 1e9", { capacity: 2e9, refillPerSecond: 1e6 }],
          ["refill 0", { capacity: 1, refillPerSecond: 0 }],
          ["refill past 1e6", { capacity: 10, refillPerSecond: 2e6 }],
          ["refill slower than 30 days", { capacity: 100, refillPerSecond: 0.00001 }],
          ["cost over capacity", { capacity: 2, refillPerSecond: 1, cost: 3 }],
          ["cost 0", { capacity: 2, refillPerSecond: 1, cost: 0 }],
          ["capacity below the default cost of 1", { capacity: 0.5, refillPerSecond: 1 }],
          ["string capacity", { capacity: "5", refillPerSecond: 1 }],
          ["no bucket", null],
        ];
        for (const [what, options] of invalidBuckets) {
          await expectCode(
            store.takeTokens(bucket, options as { capacity: number; refillPerSecond: number }),
            "ERR_ARGUMENT_INVALID",
            what,
          );
        }
        assert.equal(
          (await store.takeTokens(bucket, { capacity: 1, refillPerSecond: 1 })).remaining,
          0,
          "no refused call took a token",
        );
        const lease = leaseKey("test-args", unique("l"));
        for (const limit of [-1, 1.5, Number.NaN, 2 ** 32 + 1]) {
          await expectCode(
            store.leaseAcquire(lease, "m", limit, 1_000),
            "ERR_ARGUMENT_INVALID",
            `limit ${limit}`,
          );
        }
        for (const ttlMs of [0, -1, 1.5, Number.NaN, 31 * 24 * 3_600_000, undefined]) {
          await expectCode(
            store.leaseAcquire(lease, "m", 1, ttlMs as number),
            "ERR_ARGUMENT_INVALID",
            `acquire ttlMs ${ttlMs}`,
          );
          await expectCode(
            store.leaseRenew(lease, ["m"], ttlMs as number),
            "ERR_ARGUMENT_INVALID",
            `renew ttlMs ${ttlMs}`,
          );
        }
        for (const member of ["", "x".repeat(1_025), "\ud800"]) {
          await expectCode(store.leaseAcquire(lease, member, 1, 1_000), "ERR_ARGUMENT_INVALID", "bad member");
          await expectCode(store.leaseRenew(lease, [member], 1_000), "ERR_ARGUMENT_INVALID", "bad renewal");
        }
        await expectCode(
          store.leaseRenew(
            lease,
            Array.from({ length: 10_001 }, (_, i) => `m-${i}`),
            1_000,
          ),
          "ERR_ARGUMENT_INVALID",
          "too many members",
        );
        assert.equal(await store.leaseCount(lease), 0, "nothing was acquired by a refused call");
      });
    },
  },
  {
    name: "a closed handle refuses calls with ERR_STORE_UNAVAILABLE",
    async run(fixture) {
      const store = await fixture.open();
      await store.close();
      await expectCode(store.get(ownedKey(scopeA, "note", "k")), "ERR_STORE_UNAVAILABLE", "get after close");
    },
  },
  {
    name: "a closed handle refuses getMany with ERR_STORE_UNAVAILABLE, an empty or oversized batch too",
    async run(fixture) {
      const store = await fixture.open();
      await store.close();
      const key = ownedKey(scopeA, "note", "k");
      await expectCode(store.getMany([key]), "ERR_STORE_UNAVAILABLE", "getMany after close");
      // Like get, and like every other backend: closed is the answer before anything else is judged.
      await expectCode(store.getMany([]), "ERR_STORE_UNAVAILABLE", "empty getMany after close");
      const many = Array.from({ length: 65 }, (_, i) => ownedKey(scopeA, "note", `k${i}`));
      await expectCode(store.getMany(many), "ERR_STORE_UNAVAILABLE", "65 keys after close");
    },
  },
  {
    name: "data survives closing the adapter and opening it again",
    requires: ["durable"],
    async run(fixture) {
      const key = ownedKey(scopeA, "note", unique("k"));
      const owner = ownershipKey("session", unique("id"));
      const counter = counterKey("test-durable", unique("c"));
      const index = ownerIndexKey(scopeA, unique("idx").toLowerCase().slice(0, 30));
      await withStore(fixture, async (store) => {
        await store.put(key, "kept");
        await store.claim(owner, "owner-a", { ttlMs: 60_000 });
        await store.increment(counter, 7);
        await store.indexAdd(index, "m");
      });
      await withStore(fixture, async (store) => {
        assert.equal(await store.get(key), "kept");
        assert.deepEqual(await store.claim(owner, "owner-b"), { won: false, winner: "owner-a" });
        assert.deepEqual(await store.increment(counter, 0), { applied: true, value: 7 });
        assert.deepEqual(await store.indexList(index), ["m"]);
      });
    },
  },
  {
    name: "outage: refused, hung and reset connections fail with ERR_STORE_UNAVAILABLE within the timeout, then recover",
    requires: ["network"],
    async run(fixture) {
      const network = fixture.network!;
      const proxy = await FaultProxy.start(network.host, network.port);
      const store = await network.openVia(proxy.port);
      const bound = fixture.timeoutMs + LIVENESS_MARGIN_MS;
      try {
        const key = ownedKey(scopeA, "note", unique("k"));
        await store.put(key, "before");
        for (const mode of ["refuse", "hang", "reset"] as const) {
          await proxy.setMode(mode);
          for (const attempt of [1, 2]) {
            const started = Date.now();
            await expectCode(store.get(key), "ERR_STORE_UNAVAILABLE", `${mode} attempt ${attempt}`);
            const elapsed = Date.now() - started;
            assert.ok(elapsed < bound, `${mode}: failed after ${elapsed} ms, bound ${bound} ms`);
            // getMany (the session read on the hot path) fails closed the same way, as fast.
            const manyStarted = Date.now();
            await expectCode(
              store.getMany([key, key]),
              "ERR_STORE_UNAVAILABLE",
              `${mode} getMany ${attempt}`,
            );
            const manyElapsed = Date.now() - manyStarted;
            assert.ok(
              manyElapsed < bound,
              `${mode}: getMany failed after ${manyElapsed} ms, bound ${bound} ms`,
            );
          }
          // Callers queued behind the outage are bounded too, not only the first in line.
          const started = Date.now();
          const queued = await Promise.allSettled(Array.from({ length: 50 }, () => store.get(key)));
          const elapsed = Date.now() - started;
          assert.ok(
            queued.every((r) => r.status === "rejected" && isGateError(r.reason, "ERR_STORE_UNAVAILABLE")),
            `${mode}: every queued caller fails with ERR_STORE_UNAVAILABLE`,
          );
          assert.ok(elapsed < bound, `${mode}: 50 queued callers took ${elapsed} ms, bound ${bound} ms`);
          await proxy.setMode("pass");
          await eventually(async () => assert.equal(await store.get(key), "before"), 20_000);
        }
      } finally {
        await store.close();
        await proxy.close();
      }
    },
  },
  {
    name: "outage: opening against a closed port fails with ERR_STORE_UNAVAILABLE within the timeout",
    requires: ["network"],
    async run(fixture) {
      const network = fixture.network!;
      // A port that was just free: listen on it, then close, so nothing is there.
      const proxy = await FaultProxy.start(network.host, network.port);
      const port = proxy.port;
      await proxy.close();
      const started = Date.now();
      await expectCode(network.openVia(port), "ERR_STORE_UNAVAILABLE", "open on a closed port");
      assert.ok(Date.now() - started < fixture.timeoutMs + LIVENESS_MARGIN_MS);
    },
  },
];

function missing(
  fixtureFlags: Record<Requirement, boolean>,
  requires: readonly Requirement[] = [],
): Requirement[] {
  return requires.filter((requirement) => !fixtureFlags[requirement]);
}

function flagsOf(fixture: StoreFixture): Record<Requirement, boolean> {
  return { otherProcess: !!fixture.openInOtherProcess, network: !!fixture.network, durable: fixture.durable };
}

/** Registers every conformance case as a node:test case for one backend. */
export function describeStoreConformance(
  harness: StoreHarness,
  options: { skip?: string | false } = {},
): void {
  describe(`store conformance: ${harness.name}`, { skip: options.skip ?? false }, () => {
    for (const testCase of conformanceCases) {
      it(testCase.name, async (t) => {
        const fixture = await harness.fixture();
        try {
          const absent = missing(flagsOf(fixture), testCase.requires);
          if (absent.length > 0) {
            t.skip(`${harness.name} has no ${absent.join(", ")} (not applicable to this backend)`);
            return;
          }
          await testCase.run(fixture, harness);
        } finally {
          await fixture.cleanup();
        }
      });
    }
  });
}

/** Runs every applicable case and returns the names of those that failed (for the mutant check). */
export async function failingCases(harness: StoreHarness): Promise<string[]> {
  const failed: string[] = [];
  for (const testCase of conformanceCases) {
    const fixture = await harness.fixture();
    try {
      if (missing(flagsOf(fixture), testCase.requires).length > 0) continue;
      await testCase.run(fixture, harness);
    } catch {
      failed.push(testCase.name);
    } finally {
      await fixture.cleanup();
    }
  }
  return failed;
}
