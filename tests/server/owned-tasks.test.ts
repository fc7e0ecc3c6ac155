/**
 * Owned tasks for server authors (issue 8) on every store backend: only the owner reaches a task
 * (T1), a record without a readable owner is refused (T3), creates and updates race safely across
 * two connections (the second in another process where the backend allows it).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { makePrincipal, ownerScope, type Principal } from "../../src/identity/principal.ts";
import { createOwnedTasks, type OwnedTasks } from "../../src/server/owned-tasks.ts";
import type { Store } from "../../src/store/contract.ts";
import { counterKey, ownedKey, ownerIndexKey, ownershipKey } from "../../src/store/keys.ts";
import { storeBackendCases } from "../support/store-cases.ts";
import { openTwoConnections, type TwoConnections } from "../support/two-connections.ts";

const principal = (subject: string, tenant = `t-${subject}`, issuer = "https://issuer.test"): Principal =>
  makePrincipal({ kind: "jwt", issuer, subject, tenant, scopes: [], expiresAt: null });
const alice = principal("alice");
const bob = principal("bob");
/** Same subject as alice, another tenant: someone else (THREATS A3). */
const aliceElsewhere = principal("alice", "t-bob");
/** Same tenant as alice, another subject (THREATS S5). */
const carol = principal("carol", "t-alice");

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The refusal a call ends with, as a client would see it and as a log would. */
async function refusal(call: Promise<unknown>): Promise<{ code: string; message: string; wire: string }> {
  try {
    await call;
  } catch (error) {
    assert.ok(isGateError(error), `expected a GateError, got ${String(error)}`);
    return { code: error.code, message: error.message, wire: JSON.stringify(error.toWire()) };
  }
  assert.fail("expected a refusal");
}

const unknownTask = { code: "ERR_TASK_NOT_FOUND", message: "unknown task" };

for (const backend of await storeBackendCases("owned-tasks")) {
  describe(`owned tasks on ${backend.name}`, { skip: backend.skip }, () => {
    let connections: TwoConnections;
    let store: Store;
    let tasks: OwnedTasks;
    before(async () => {
      connections = await openTwoConnections(backend);
      store = connections.first;
      tasks = createOwnedTasks({ store, ttlMs: 60_000 });
    });
    after(async () => {
      await connections.close();
    });

    it("T1 B cannot get, update, cancel, complete or read the result of A's task: the answer for an unknown id", async () => {
      const task = await tasks.create(alice, { state: { step: 1 } });
      for (const intruder of [bob, aliceElsewhere, carol]) {
        const calls: ((taskId: string) => Promise<unknown>)[] = [
          (id) => tasks.get(intruder, id),
          (id) => tasks.update(intruder, id, { state: { step: 99 } }),
          (id) => tasks.cancel(intruder, id),
          (id) => tasks.complete(intruder, id, "stolen"),
          (id) => tasks.getResult(intruder, id),
        ];
        for (const call of calls) {
          const foreign = await refusal(call(task.taskId));
          const unknown = await refusal(call("never-created"));
          assert.deepEqual(foreign, unknown);
          assert.deepEqual({ code: foreign.code, message: foreign.message }, unknownTask);
        }
      }
      // A's task is untouched by all of it.
      const mine = await tasks.get(alice, task.taskId);
      assert.equal(mine.revision, 0);
      assert.equal(mine.status, "working");
      assert.deepEqual(mine.state, { step: 1 });
      assert.equal(await tasks.getResult(alice, task.taskId), null);
    });

    it("T1 list shows each principal exactly its own tasks", async () => {
      const owner = principal("lister");
      const other = principal("lister", "t-other");
      const created = [
        await tasks.create(owner, { state: 1 }),
        await tasks.create(owner, { state: 2 }),
        await tasks.create(owner, { state: 3 }),
      ];
      const theirs = await tasks.create(other, { state: "x" });
      const listed = await tasks.list(owner);
      assert.deepEqual(listed.map((task) => task.taskId).sort(), created.map((task) => task.taskId).sort());
      assert.deepEqual(
        (await tasks.list(other)).map((task) => task.taskId),
        [theirs.taskId],
      );
      // What get can fetch, list lists, at its current revision.
      await tasks.update(owner, created[0]!.taskId, { status: "input_required" });
      const updated = (await tasks.list(owner)).find((task) => task.taskId === created[0]!.taskId);
      assert.equal(updated?.status, "input_required");
      assert.equal(updated?.revision, 1);
    });

    it("T1 an index entry is only a hint: A's task planted in B's index is not listed, and is dropped", async () => {
      const task = await tasks.create(alice);
      const digest = ownershipKey("owned-task", task.taskId).segments[1]!;
      const bobIndex = ownerIndexKey(ownerScope(bob), "owned-task");
      await store.indexAdd(bobIndex, digest, { ttlMs: 60_000 });
      await store.indexAdd(bobIndex, "not-a-digest", { ttlMs: 60_000 });
      assert.ok(!(await tasks.list(bob)).some((listed) => listed.taskId === task.taskId));
      const left = await store.indexList(bobIndex);
      assert.ok(!left.includes(digest) && !left.includes("not-a-digest"));
      assert.equal((await tasks.get(alice, task.taskId)).taskId, task.taskId);
    });

    it("T3 a task record whose owner is missing or garbled is refused, never served", async () => {
      const valid = (await store.get(ownershipKey("owned-task", (await tasks.create(alice)).taskId)))!;
      const parsed = JSON.parse(valid) as Record<string, unknown>;
      const damaged: Record<string, string> = {
        "not-json": "{garbled",
        "json-null": "null",
        array: "[]",
        "no-subject": JSON.stringify({ ...parsed, subject: undefined }),
        "empty-tenant": JSON.stringify({ ...parsed, tenant: "" }),
        "numeric-issuer": JSON.stringify({ ...parsed, issuer: 7 }),
        "no-version": JSON.stringify({ ...parsed, v: undefined }),
        "bad-status": JSON.stringify({ ...parsed, status: "done" }),
        "no-incarnation": JSON.stringify({ ...parsed, incarnation: undefined }),
      };
      for (const [label, value] of Object.entries(damaged)) {
        const taskId = `damaged-${label}`;
        await store.put(ownershipKey("owned-task", taskId), value, { ttlMs: 60_000 });
        for (const call of [
          () => tasks.get(alice, taskId),
          () => tasks.update(alice, taskId, { status: "failed" }),
          () => tasks.cancel(alice, taskId),
          () => tasks.getResult(alice, taskId),
        ]) {
          assert.deepEqual(await refusal(call()), await refusal(tasks.get(alice, "never-created")), label);
        }
        // A damaged record is never replaced by a create either: the id stays taken.
        const conflict = await refusal(tasks.create(alice, { taskId }));
        assert.equal(conflict.code, "ERR_TASK_CONFLICT", label);
      }
    });

    it("T3 a task whose revision head names a revision that is not there is refused, not guessed at", async () => {
      const task = await tasks.create(alice, { state: "initial" });
      const record = JSON.parse((await store.get(ownershipKey("owned-task", task.taskId)))!) as {
        incarnation: string;
      };
      await store.increment(counterKey("owned-task-head", record.incarnation), 3, { ttlMs: 60_000 });
      assert.deepEqual(await refusal(tasks.get(alice, task.taskId)), await refusal(tasks.get(alice, "nope")));
      assert.ok(!(await tasks.list(alice)).some((listed) => listed.taskId === task.taskId));
    });

    it("T3 create writes the owner and the task in one record, claimed once", async () => {
      const task = await tasks.create(carol, { taskId: "carol-chosen-id", state: { a: 1 } });
      const record = JSON.parse((await store.get(ownershipKey("owned-task", task.taskId)))!) as Record<
        string,
        unknown
      >;
      assert.deepEqual(
        [record["tenant"], record["issuer"], record["subject"], record["status"], record["state"]],
        [carol.tenant, carol.issuer, carol.subject, "working", { a: 1 }],
      );
      // The same id again, by anyone (the owner included), is a conflict and changes nothing.
      for (const who of [carol, bob]) {
        assert.equal(
          (await refusal(tasks.create(who, { taskId: "carol-chosen-id" }))).code,
          "ERR_TASK_CONFLICT",
        );
      }
      assert.deepEqual((await tasks.get(carol, "carol-chosen-id")).state, { a: 1 });
      assert.deepEqual(
        (await tasks.list(carol)).filter((listed) => listed.taskId === "carol-chosen-id").length,
        1,
      );
      assert.equal((await tasks.list(bob)).filter((listed) => listed.taskId === "carol-chosen-id").length, 0);
    });

    it("T3 concurrent creates of one task id over two connections have exactly one owner", async () => {
      const remoteTasks = createOwnedTasks({ store: connections.second, ttlMs: 60_000 });
      const racers = Array.from({ length: 24 }, (_, i) => principal(`racer-${i}`));
      const outcomes = await Promise.allSettled(
        racers.map((racer, i) =>
          (i % 2 === 0 ? tasks : remoteTasks).create(racer, { taskId: "raced-id", state: i }),
        ),
      );
      const winners = outcomes.flatMap((outcome, i) => (outcome.status === "fulfilled" ? [i] : []));
      assert.equal(winners.length, 1);
      for (const outcome of outcomes) {
        if (outcome.status === "rejected") assert.ok(isGateError(outcome.reason, "ERR_TASK_CONFLICT"));
      }
      const winner = winners[0]!;
      for (const [i, racer] of racers.entries()) {
        const reader = i % 2 === 0 ? remoteTasks : tasks;
        if (i === winner) {
          assert.equal((await reader.get(racer, "raced-id")).state, winner);
          assert.deepEqual(
            (await reader.list(racer)).map((task) => task.taskId),
            ["raced-id"],
          );
        } else {
          assert.equal((await refusal(reader.get(racer, "raced-id"))).code, "ERR_TASK_NOT_FOUND");
          assert.deepEqual(await reader.list(racer), []);
        }
      }
    });

    it("T3 concurrent updates over two connections are never lost silently", async () => {
      const remoteTasks = createOwnedTasks({ store: connections.second, ttlMs: 60_000 });
      // Several rounds: a lost update shows up only under some interleavings.
      for (let round = 0; round < 4; round++) {
        const task = await tasks.create(alice, { state: { count: 0 } });
        const updaters = 12;
        const outcomes = await Promise.allSettled(
          Array.from({ length: updaters }, (_, i) =>
            (i % 2 === 0 ? tasks : remoteTasks).update(alice, task.taskId, (current) => ({
              state: { count: (current.state as { count: number }).count + 1 },
            })),
          ),
        );
        const applied = outcomes.filter((outcome) => outcome.status === "fulfilled").length;
        for (const outcome of outcomes) {
          if (outcome.status === "rejected") assert.ok(isGateError(outcome.reason, "ERR_TASK_CONFLICT"));
        }
        const final = await tasks.get(alice, task.taskId);
        // Every update that reported success is in the final state, and nothing else is.
        assert.equal((final.state as { count: number }).count, applied);
        assert.equal(final.revision, applied);
        assert.equal(applied, updaters);
        // Each success saw its own revision.
        const revisions = outcomes.flatMap((outcome) =>
          outcome.status === "fulfilled" ? [outcome.value.revision] : [],
        );
        assert.deepEqual(
          revisions.sort((a, b) => a - b),
          Array.from({ length: applied }, (_, i) => i + 1),
        );
      }
    });

    it("T3 a slow update based on a superseded revision loses and retries; it never wins a revision twice", async () => {
      let release!: () => void;
      const gate = new Promise<void>((resolve) => {
        release = resolve;
      });
      let held = 0;
      // The slow writer's first claim waits until two other updates have committed.
      const slowStore = new Proxy(store, {
        get(target, name) {
          const value = Reflect.get(target, name, target) as unknown;
          if (name === "claim") {
            return async (...args: Parameters<Store["claim"]>) => {
              if (held++ === 0) await gate;
              return target.claim(...args);
            };
          }
          return typeof value === "function" ? value.bind(target) : value;
        },
      });
      const slow = createOwnedTasks({ store: slowStore, ttlMs: 60_000 });
      const task = await tasks.create(alice, { state: { count: 0 } });
      const increment = (current: { state: unknown }) => ({
        state: { count: (current.state as { count: number }).count + 1 },
      });
      const slowUpdate = slow.update(alice, task.taskId, increment);
      while (held === 0) await sleep(1);
      assert.equal((await tasks.update(alice, task.taskId, increment)).revision, 1);
      assert.equal((await tasks.update(alice, task.taskId, increment)).revision, 2);
      release();
      assert.equal((await slowUpdate).revision, 3);
      const final = await tasks.get(alice, task.taskId);
      assert.deepEqual([final.revision, final.state], [3, { count: 3 }]);
    });

    it("an update whose writer stopped between claiming its revision and committing it is committed by the next", async () => {
      const task = await tasks.create(alice, { state: { count: 0 } });
      const { incarnation } = JSON.parse((await store.get(ownershipKey("owned-task", task.taskId)))!) as {
        incarnation: string;
      };
      // Revision 1 claimed by a writer that then died: the head still says 0.
      const orphan = {
        v: 1,
        revision: 1,
        status: "working",
        statusMessage: null,
        state: { count: 1 },
        updatedAt: 1,
      };
      await store.claim(
        ownedKey(ownerScope(alice), "owned-task-rev", incarnation, "1"),
        JSON.stringify(orphan),
        { ttlMs: 60_000 },
      );
      assert.equal((await tasks.get(alice, task.taskId)).revision, 0);
      const next = await tasks.update(alice, task.taskId, (current) => ({
        state: { count: (current.state as { count: number }).count + 1 },
      }));
      // Built on the orphan, not on revision 0: nothing claimed is overwritten.
      assert.equal(next.revision, 2);
      assert.deepEqual(next.state, { count: 2 });
      assert.deepEqual((await tasks.get(alice, task.taskId)).state, { count: 2 });
    });

    it("a cancel racing a completion: exactly one finishes the task, and a result exists only if it completed", async () => {
      const remoteTasks = createOwnedTasks({ store: connections.second, ttlMs: 60_000 });
      for (let round = 0; round < 5; round++) {
        const task = await tasks.create(alice);
        const [completed, cancelled] = await Promise.allSettled([
          tasks.complete(alice, task.taskId, { rows: round }),
          remoteTasks.cancel(alice, task.taskId, "user asked"),
        ]);
        assert.equal([completed, cancelled].filter((o) => o.status === "fulfilled").length, 1);
        const final = await tasks.get(alice, task.taskId);
        const result = await tasks.getResult(alice, task.taskId);
        if (completed.status === "fulfilled") {
          assert.equal(final.status, "completed");
          assert.deepEqual(result, { result: { rows: round } });
        } else {
          assert.equal(final.status, "cancelled");
          assert.equal(result, null);
        }
      }
    });

    it("finished tasks take no updates; results go to the owner only once completed", async () => {
      const task = await tasks.create(alice, { status: "input_required", statusMessage: "need a file" });
      assert.equal(await tasks.getResult(alice, task.taskId), null);
      const done = await tasks.complete(alice, task.taskId, { url: null, rows: [1, 2] });
      assert.equal(done.status, "completed");
      assert.equal(done.statusMessage, "need a file");
      assert.deepEqual(await tasks.getResult(alice, task.taskId), { result: { url: null, rows: [1, 2] } });
      for (const call of [
        () => tasks.update(alice, task.taskId, { status: "working" }),
        () => tasks.cancel(alice, task.taskId),
        () => tasks.complete(alice, task.taskId, "again"),
      ]) {
        assert.equal((await refusal(call())).code, "ERR_TASK_CONFLICT");
      }
      assert.deepEqual(await tasks.getResult(alice, task.taskId), { result: { url: null, rows: [1, 2] } });
      await assert.rejects(
        tasks.update(alice, (await tasks.create(alice)).taskId, { status: "done" as never }),
        (error: unknown) => isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
    });

    it("T3 an expired task is gone for its owner too: by the record's expiry and by the store's TTL", async () => {
      let clock = Date.now();
      const clocked = createOwnedTasks({ store, ttlMs: 60_000, now: () => clock });
      const task = await clocked.create(alice);
      clock += 60_001;
      assert.equal((await refusal(clocked.get(alice, task.taskId))).code, "ERR_TASK_NOT_FOUND");
      assert.deepEqual(
        await clocked.list(alice).then((all) => all.filter((t) => t.taskId === task.taskId)),
        [],
      );

      const brief = createOwnedTasks({ store, ttlMs: 300 });
      const short = await brief.create(alice);
      await brief.update(alice, short.taskId, { state: "moved" });
      await sleep(700);
      assert.equal((await refusal(brief.get(alice, short.taskId))).code, "ERR_TASK_NOT_FOUND");
    });
  });
}

describe("owned tasks: arguments", () => {
  it("refuses a missing principal, bad ids, states that are not JSON, and bad options", async () => {
    const { MemoryStore } = await import("../../src/store/memory-store.ts");
    const store = new MemoryStore();
    const tasks = createOwnedTasks({ store, ttlMs: 1_000 });
    const invalid = (error: unknown) => isGateError(error, "ERR_ARGUMENT_INVALID");
    await assert.rejects(tasks.create(undefined as unknown as Principal), invalid);
    await assert.rejects(tasks.create(alice, { taskId: "has space" }), invalid);
    await assert.rejects(tasks.create(alice, { taskId: "" }), invalid);
    await assert.rejects(tasks.create(alice, { state: 10n }), invalid);
    await assert.rejects(tasks.create(alice, { status: "completed" as never }), invalid);
    await assert.rejects(tasks.list(undefined as unknown as Principal), invalid);
    assert.throws(() => createOwnedTasks({ store, ttlMs: 0 }), invalid);
    assert.throws(() => createOwnedTasks({ store, ttlMs: 31 * 24 * 3_600_000 }), invalid);
    // Malformed ids asked about are unknown, not errors: a probe learns nothing from the id's shape.
    assert.equal((await refusal(tasks.get(alice, "bad\nid"))).code, "ERR_TASK_NOT_FOUND");
    await store.close();
  });
});
