import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";
import type { Store } from "../../src/store/contract.ts";
import { openStore } from "../../src/store/open-store.ts";
import { createTaskRegistry, type TaskRegistry } from "../../src/tasks/task-registry.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const principal = (subject: string, tenant = `t-${subject}`, issuer = "https://issuer.test"): Principal =>
  makePrincipal({ kind: "jwt", issuer, subject, tenant, scopes: [], expiresAt: null });
const alice = principal("alice");
const bob = principal("bob");

for (const backend of await storeBackendCases("tasks")) {
  describe(`task registry on ${backend.name}`, { skip: backend.skip }, () => {
    let store: Store;
    let tasks: TaskRegistry;
    let cleanup: () => Promise<void>;
    before(async () => {
      const opened = await backend.open();
      cleanup = opened.cleanup;
      store = await openStore(opened.url);
      tasks = createTaskRegistry({ store });
    });
    after(async () => {
      await store.close();
      await cleanup();
    });

    it("the first principal a task id is handed to owns it; nobody else does", async () => {
      assert.equal(await tasks.claim(alice, "up", "task-1", 60_000), "owned");
      assert.equal(await tasks.owns(alice, "up", "task-1"), true);
      assert.equal(await tasks.owns(bob, "up", "task-1"), false);
      // The same id handed to bob afterwards stays alice's (THREATS T7).
      assert.equal(await tasks.claim(bob, "up", "task-1", 60_000), "foreign");
      assert.equal(await tasks.owns(bob, "up", "task-1"), false);
      // Handed to alice again (a retried answer): still hers.
      assert.equal(await tasks.claim(alice, "up", "task-1", null), "owned");
    });

    it("an id is owned at its upstream only; the same subject in another tenant or issuer is someone else", async () => {
      await tasks.claim(alice, "up", "task-2", 60_000);
      assert.equal(await tasks.owns(alice, "other-up", "task-2"), false);
      assert.equal(await tasks.owns(principal("alice", "another-tenant"), "up", "task-2"), false);
      assert.equal(
        await tasks.owns(principal("alice", "t-alice", "https://other.test"), "up", "task-2"),
        false,
      );
    });

    it("a task without an owner record is nobody's (fail closed), and a malformed id is refused the same way", async () => {
      assert.equal(await tasks.owns(alice, "up", "never-handed-out"), false);
      assert.equal(await tasks.owns(alice, "up", "bad\nid"), false);
      await assert.rejects(tasks.claim(alice, "up", "bad\nid", null));
    });

    it("two principals racing for one task id: exactly one owns it", async () => {
      const racers = Array.from({ length: 20 }, (_, i) => principal(`racer-${i}`));
      const outcomes = await Promise.all(racers.map((racer) => tasks.claim(racer, "up", "raced", 60_000)));
      assert.equal(outcomes.filter((outcome) => outcome === "owned").length, 1);
      const owners = await Promise.all(racers.map((racer) => tasks.owns(racer, "up", "raced")));
      assert.equal(owners.filter(Boolean).length, 1);
      assert.equal(owners.indexOf(true), outcomes.indexOf("owned"));
    });

    it("revoking a principal's tasks leaves others' alone", async () => {
      const carol = principal("carol");
      await tasks.claim(carol, "up", "carol-1", 60_000);
      await tasks.claim(carol, "up", "carol-2", 60_000);
      await tasks.claim(bob, "up", "bob-1", 60_000);
      assert.equal(await tasks.revokeAll(carol), 2);
      assert.equal(await tasks.owns(carol, "up", "carol-1"), false);
      assert.equal(await tasks.owns(bob, "up", "bob-1"), true);
    });
  });
}
