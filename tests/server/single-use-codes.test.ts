import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Keyring } from "../../src/crypto/keyring.ts";
import { isGateError } from "../../src/errors.ts";
import { createSingleUseCodes, type SingleUseCodes } from "../../src/server/single-use-codes.ts";
import type { Store } from "../../src/store/contract.ts";
import { ownershipKey } from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { openRacingStores } from "../support/racing-stores.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const TTL_MS = 60_000;
const RACERS = 20;
const ROUNDS = 5;

/** How many of the racers got something other than null. */
function winners(results: readonly (string | null)[]): number {
  return results.filter((result) => result !== null).length;
}

for (const backend of await storeBackendCases("codes")) {
  for (const sealed of [false, true]) {
    const label = `${backend.name}${sealed ? ", sealed" : ""}`;
    describe(`single-use codes on ${label}`, { skip: backend.skip }, () => {
      let stores: readonly [Store, Store];
      let closeStores: () => Promise<void>;
      // One issuer per store handle: the second handle is another connection (another process where
      // the backend allows it), so races below cross connections as they would across replicas.
      let codes: [SingleUseCodes, SingleUseCodes];
      const keyring = Keyring.ephemeral();

      before(async () => {
        const racing = await openRacingStores(backend);
        stores = racing.stores;
        closeStores = racing.close;
        const make = (store: Store) =>
          createSingleUseCodes({ store, ttlMs: TTL_MS, ...(sealed ? { keyring } : {}) });
        codes = [make(stores[0]), make(stores[1])];
      });
      after(async () => {
        await closeStores();
      });

      it("T6 a code redeems once: the second redemption fails, on either connection", async () => {
        const code = await codes[0].issue("grant:alice:read", { clientId: "client-a" });
        assert.ok(code.length >= 22, "at least 128 bits of base64url");
        assert.equal(await codes[1].redeem(code, "client-a"), "grant:alice:read");
        assert.equal(await codes[0].redeem(code, "client-a"), null);
        assert.equal(await codes[1].redeem(code, "client-a"), null);
      });

      it("T6 concurrent redemptions over two connections: exactly one wins", async () => {
        for (let round = 0; round < ROUNDS; round++) {
          const code = await codes[round % 2]!.issue(`grant-${round}`, { clientId: "client-a" });
          const results = await Promise.all(
            Array.from({ length: RACERS }, (_, index) => codes[index % 2]!.redeem(code, "client-a")),
          );
          assert.equal(winners(results), 1, `round ${round}`);
          assert.ok(results.includes(`grant-${round}`));
        }
      });

      it("T6 a code presented by the wrong client is refused and still works for the right one", async () => {
        const code = await codes[0].issue("grant:alice", { clientId: "client-a" });
        for (const intruder of ["client-b", "client-a ", "CLIENT-A", "client"]) {
          assert.equal(await codes[1].redeem(code, intruder), null, intruder);
        }
        assert.equal(await codes[1].redeem(code, "client-a"), "grant:alice");
        assert.equal(await codes[0].redeem(code, "client-a"), null);

        // Racing the rightful client: intruders never win and never stop it from winning.
        for (let round = 0; round < ROUNDS; round++) {
          const raced = await codes[0].issue(`raced-${round}`, { clientId: "client-a" });
          const results = await Promise.all(
            Array.from({ length: RACERS }, (_, index) =>
              codes[index % 2]!.redeem(raced, index === RACERS - 1 ? "client-a" : `intruder-${index}`),
            ),
          );
          assert.deepEqual(
            results.map((result, index) => (result === null ? null : index)),
            results.map((_, index) => (index === RACERS - 1 ? index : null)),
          );
        }
      });

      it("T6 OAuth state is bound to the session that started the flow", async () => {
        const state = await codes[0].issueState("session-cookie-1", "pkce-verifier-1");
        assert.equal(await codes[1].consumeState(state, "session-cookie-2"), null);
        assert.equal(await codes[0].consumeState(state, "session-cookie-1"), "pkce-verifier-1");
        assert.equal(await codes[1].consumeState(state, "session-cookie-1"), null);

        const plain = await codes[1].issueState("session-cookie-3");
        assert.equal(await codes[0].consumeState(plain, "session-cookie-3"), "");

        // A state is not a code and a code is not a state, whatever the binding strings say.
        const code = await codes[0].issue("grant", { clientId: "same-string" });
        const otherState = await codes[0].issueState("same-string");
        assert.equal(await codes[0].consumeState(code, "same-string"), null);
        assert.equal(await codes[0].redeem(otherState, "same-string"), null);
        assert.equal(await codes[0].redeem(code, "same-string"), "grant");
        assert.equal(await codes[0].consumeState(otherState, "same-string"), "");
      });

      it("T6 concurrent consumption of one state over two connections: exactly one wins", async () => {
        for (let round = 0; round < ROUNDS; round++) {
          const state = await codes[0].issueState("session-x", `v-${round}`);
          const results = await Promise.all(
            Array.from({ length: RACERS }, (_, index) =>
              codes[index % 2]!.consumeState(state, index % 3 === 0 ? "session-y" : "session-x"),
            ),
          );
          assert.equal(winners(results), 1, `round ${round}`);
        }
      });

      it("T6 the store holds neither the code nor the client id or session key", async () => {
        const code = await codes[0].issue("grant-value", { clientId: "client-visible" });
        const state = await codes[0].issueState("session-visible");
        const codeRecord = await stores[0].get(ownershipKey("code", code));
        const stateRecord = await stores[0].get(ownershipKey("oauth-state", state));
        for (const record of [codeRecord, stateRecord]) {
          assert.ok(record !== null);
          for (const secret of [code, state, "client-visible", "session-visible"]) {
            assert.ok(!record.includes(secret));
          }
        }
        // Sealed, the value is unreadable too.
        assert.equal(codeRecord?.includes("grant-value"), !sealed);
      });
    });
  }
}

describe("single-use codes: expiry and arguments", () => {
  it("T6 an expired code or state is refused", async () => {
    const codes = createSingleUseCodes({ store: new MemoryStore(), ttlMs: 50 });
    const code = await codes.issue("v", { clientId: "c" });
    const state = await codes.issueState("s");
    await new Promise((resolve) => setTimeout(resolve, 120));
    assert.equal(await codes.redeem(code, "c"), null);
    assert.equal(await codes.consumeState(state, "s"), null);
  });

  it("malformed codes and bindings are refused without a store lookup; bad arguments to issue throw", async () => {
    const store = new MemoryStore();
    const codes = createSingleUseCodes({ store, ttlMs: TTL_MS });
    const code = await codes.issue("v", { clientId: "c" });
    for (const bad of ["", "short", `${code}\n`, "x".repeat(2000)]) {
      assert.equal(await codes.redeem(bad, "c"), null);
    }
    assert.equal(await codes.redeem(code, ""), null);
    assert.equal(await codes.redeem(code, "\uD800"), null);
    assert.equal(await codes.redeem(code, "c"), "v");

    const refusals: [string, () => Promise<unknown>][] = [
      ["clientId", () => codes.issue("v", { clientId: "" })],
      ["value", () => codes.issue("x".repeat(64 * 1024 + 1), { clientId: "c" })],
      ["value", () => codes.issue("\uDC00", { clientId: "c" })],
      ["sessionKey", () => codes.issueState("")],
    ];
    for (const [name, call] of refusals) {
      await assert.rejects(
        call(),
        (error: unknown) => isGateError(error, "ERR_ARGUMENT_INVALID") && error.message.startsWith(name),
        name,
      );
    }
    assert.throws(() => createSingleUseCodes({ store, ttlMs: 0 }), /ttlMs/);
  });

  it("a store that cannot answer fails closed: redeem rejects, nothing is granted", async () => {
    const store = new MemoryStore();
    const codes = createSingleUseCodes({ store, ttlMs: TTL_MS });
    const code = await codes.issue("v", { clientId: "c" });
    await store.close();
    await assert.rejects(codes.redeem(code, "c"), (error: unknown) =>
      isGateError(error, "ERR_STORE_UNAVAILABLE"),
    );
  });
});
