/**
 * Findings of the security review of the limits work: token buckets and lease sets in every store,
 * the rate limiter, and the cluster cap ledger. Each case runs on real stores (memory, SQLite, Redis,
 * PostgreSQL) where the finding is a store's, or on a real memory store under the ledger where it is
 * the ledger's own.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import type { Store } from "../../src/store/contract.ts";
import { bucketKey } from "../../src/store/keys.ts";
import { openStore } from "../../src/store/open-store.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const cases = await storeBackendCases("limits-review");

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
