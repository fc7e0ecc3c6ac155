/**
 * State handles (issue 8) on every store backend: a handle is keyed under its owner, so another
 * principal presenting it reads and writes nothing (T1), and no handle is adopted that `create` did
 * not hand out.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { digest } from "../../src/crypto/ids.ts";
import { isGateError } from "../../src/errors.ts";
import { makePrincipal, ownerScope, type Principal } from "../../src/identity/principal.ts";
import { createStateHandles, type StateHandles } from "../../src/server/state-handles.ts";
import type { Store } from "../../src/store/contract.ts";
import { ownedKey } from "../../src/store/keys.ts";
import { openStore } from "../../src/store/open-store.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const principal = (subject: string, tenant = `t-${subject}`): Principal =>
  makePrincipal({ kind: "jwt", issuer: "https://issuer.test", subject, tenant, scopes: [], expiresAt: null });
const alice = principal("alice");
const bob = principal("bob");
const aliceElsewhere = principal("alice", "t-bob");
const carol = principal("carol", "t-alice");

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const notFound = (error: unknown) => isGateError(error, "ERR_NOT_FOUND");

for (const backend of await storeBackendCases("state-handles")) {
  describe(`state handles on ${backend.name}`, { skip: backend.skip }, () => {
    let store: Store;
    let cleanup: () => Promise<void>;
    let handles: StateHandles;
    before(async () => {
      const opened = await backend.open();
      cleanup = opened.cleanup;
      store = await openStore(opened.url);
      handles = createStateHandles({ store, ttlMs: 60_000 });
    });
    after(async () => {
      await store.close();
      await cleanup();
    });

    it("T1 B presenting A's handle reads nothing, writes nothing and deletes nothing", async () => {
      const handle = await handles.create(alice, '{"cursor":42}');
      assert.equal(await handles.get(alice, handle), '{"cursor":42}');
      for (const intruder of [bob, aliceElsewhere, carol]) {
        assert.equal(await handles.get(intruder, handle), null);
        await assert.rejects(handles.put(intruder, handle, "overwritten"), notFound);
        assert.equal(await handles.delete(intruder, handle), false);
      }
      assert.equal(await handles.get(alice, handle), '{"cursor":42}');
    });

    it("the handle is stored as <principal>:<digest(handle)>, never in the clear", async () => {
      const handle = await handles.create(alice, "value");
      assert.match(handle, /^[A-Za-z0-9_-]{32}$/);
      const key = ownedKey(ownerScope(alice), "state-handle", digest("state-handle", handle));
      assert.equal(await store.get(key), "value");
      assert.ok(!key.encoded.includes(handle));
    });

    it("put replaces only a live handle of the caller; unknown and invented handles are never adopted", async () => {
      const handle = await handles.create(alice, "v1");
      await handles.put(alice, handle, "v2");
      assert.equal(await handles.get(alice, handle), "v2");
      await assert.rejects(handles.put(alice, "A".repeat(32), "fixated"), notFound);
      assert.equal(await handles.get(alice, "A".repeat(32)), null);
      await assert.rejects(handles.put(alice, "not a handle", "x"), notFound);
      assert.equal(await handles.get(alice, "not a handle"), null);
      assert.equal(await handles.delete(alice, handle), true);
      assert.equal(await handles.get(alice, handle), null);
      await assert.rejects(handles.put(alice, handle, "resurrected"), notFound);
      assert.equal(await handles.delete(alice, handle), false);
    });

    it("handles expire after their lifetime since the last write", async () => {
      const brief = createStateHandles({ store, ttlMs: 400 });
      const handle = await brief.create(alice, "short");
      await sleep(250);
      await brief.put(alice, handle, "renewed");
      await sleep(250);
      assert.equal(await brief.get(alice, handle), "renewed");
      await sleep(400);
      assert.equal(await brief.get(alice, handle), null);
    });
  });
}
