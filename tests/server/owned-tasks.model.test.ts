/**
 * Owned tasks against a model (fast-check): any sequence of creates, reads, updates, cancels,
 * completions, result reads and lists by three principals (two of them in one tenant) over a few
 * shared ids gives exactly the model's answers. Only the owner ever reaches a task (T1); everyone
 * else gets the unknown-task answer.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { isGateError } from "../../src/errors.ts";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";
import { createOwnedTasks, type OwnedTaskStatus } from "../../src/server/owned-tasks.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { fastCheckParameters } from "../support/fast-check.ts";

const principals: Principal[] = [
  makePrincipal({
    kind: "jwt",
    issuer: "https://i.test",
    subject: "a",
    tenant: "t1",
    scopes: [],
    expiresAt: null,
  }),
  makePrincipal({
    kind: "jwt",
    issuer: "https://i.test",
    subject: "b",
    tenant: "t1",
    scopes: [],
    expiresAt: null,
  }),
  makePrincipal({
    kind: "jwt",
    issuer: "https://i.test",
    subject: "a",
    tenant: "t2",
    scopes: [],
    expiresAt: null,
  }),
];
const IDS = ["id-0", "id-1", "id-2", "id-3"];
const TERMINAL = new Set<OwnedTaskStatus>(["completed", "failed", "cancelled"]);

type Op =
  | { kind: "create"; who: number; id: number; state: number }
  | { kind: "get"; who: number; id: number }
  | { kind: "update"; who: number; id: number; status: OwnedTaskStatus; state: number }
  | { kind: "cancel"; who: number; id: number }
  | { kind: "complete"; who: number; id: number; result: number }
  | { kind: "result"; who: number; id: number }
  | { kind: "list"; who: number };

const who = fc.integer({ min: 0, max: principals.length - 1 });
const id = fc.integer({ min: 0, max: IDS.length - 1 });
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant("create" as const), who, id, state: fc.integer() }),
  fc.record({ kind: fc.constant("get" as const), who, id }),
  fc.record({
    kind: fc.constant("update" as const),
    who,
    id,
    status: fc.constantFrom<OwnedTaskStatus>("working", "input_required", "failed"),
    state: fc.integer(),
  }),
  fc.record({ kind: fc.constant("cancel" as const), who, id }),
  fc.record({ kind: fc.constant("complete" as const), who, id, result: fc.integer() }),
  fc.record({ kind: fc.constant("result" as const), who, id }),
  fc.record({ kind: fc.constant("list" as const), who }),
);

interface ModelTask {
  owner: number;
  status: OwnedTaskStatus;
  state: number;
  revision: number;
  result: number | null;
}

async function outcome(call: Promise<unknown>): Promise<unknown> {
  try {
    return { ok: await call };
  } catch (error) {
    assert.ok(isGateError(error), String(error));
    return { error: error.code };
  }
}

describe("owned tasks model", () => {
  it("T1 any sequence of calls by three principals gives the model's answers", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 40 }), async (ops) => {
        const store = new MemoryStore();
        const tasks = createOwnedTasks({ store, ttlMs: 60_000 });
        const model = new Map<string, ModelTask>();
        const notFound = { error: "ERR_TASK_NOT_FOUND" };
        const conflict = { error: "ERR_TASK_CONFLICT" };
        const view = (task: ModelTask) => ({
          status: task.status,
          state: task.state,
          revision: task.revision,
        });
        const pick = (value: unknown) => {
          const task = value as { status: string; state: unknown; revision: number };
          return { status: task.status, state: task.state, revision: task.revision };
        };
        try {
          for (const step of ops) {
            const p = principals[step.who]!;
            if (step.kind === "list") {
              const listed = (await tasks.list(p)).map((task) => task.taskId).sort();
              const expected = [...model].filter(([, t]) => t.owner === step.who).map(([taskId]) => taskId);
              assert.deepEqual(listed, expected.sort());
              continue;
            }
            const taskId = IDS[step.id]!;
            const task = model.get(taskId);
            const mine = task !== undefined && task.owner === step.who ? task : undefined;
            switch (step.kind) {
              case "create": {
                const got = await outcome(tasks.create(p, { taskId, state: step.state }));
                if (task !== undefined) assert.deepEqual(got, conflict);
                else {
                  model.set(taskId, {
                    owner: step.who,
                    status: "working",
                    state: step.state,
                    revision: 0,
                    result: null,
                  });
                  assert.deepEqual(pick((got as { ok: unknown }).ok), view(model.get(taskId)!));
                }
                break;
              }
              case "get": {
                const got = await outcome(tasks.get(p, taskId));
                if (!mine) assert.deepEqual(got, notFound);
                else assert.deepEqual(pick((got as { ok: unknown }).ok), view(mine));
                break;
              }
              case "update":
              case "cancel":
              case "complete": {
                const got = await outcome(
                  step.kind === "update"
                    ? tasks.update(p, taskId, { status: step.status, state: step.state })
                    : step.kind === "cancel"
                      ? tasks.cancel(p, taskId)
                      : tasks.complete(p, taskId, step.result),
                );
                if (!mine) assert.deepEqual(got, notFound);
                else if (TERMINAL.has(mine.status)) assert.deepEqual(got, conflict);
                else {
                  mine.revision += 1;
                  if (step.kind === "update") {
                    mine.status = step.status;
                    mine.state = step.state;
                  } else if (step.kind === "cancel") mine.status = "cancelled";
                  else {
                    mine.status = "completed";
                    mine.result = step.result;
                  }
                  assert.deepEqual(pick((got as { ok: unknown }).ok), view(mine));
                }
                break;
              }
              case "result": {
                const got = await outcome(tasks.getResult(p, taskId));
                if (!mine) assert.deepEqual(got, notFound);
                else
                  assert.deepEqual(got, { ok: mine.status === "completed" ? { result: mine.result } : null });
                break;
              }
            }
          }
        } finally {
          await store.close();
        }
      }),
      fastCheckParameters(150),
    );
  });
});
