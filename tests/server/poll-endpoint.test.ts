/**
 * The REST side of a task server, end to end over real HTTP on every store backend: progress and
 * download endpoints in the shape of docs/library.md's node:http example, callers authenticated by
 * API key. B holding A's valid poll or download token gets what an unknown task gets (T2), a token in
 * a query string is refused (T4), and a result is reachable only by its owner with a live token.
 */
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { digest } from "../../src/crypto/ids.ts";
import { GateError, isGateError, toWire } from "../../src/errors.ts";
import { createApiKeyAuthenticator } from "../../src/identity/api-key-authenticator.ts";
import { extractBearerToken } from "../../src/identity/bearer.ts";
import { createDownloadTokens, type DownloadTokens } from "../../src/server/download-tokens.ts";
import { createOwnedTasks, type OwnedTasks } from "../../src/server/owned-tasks.ts";
import { createPollTokens, type PollTokens } from "../../src/server/poll-tokens.ts";
import { readRequestToken } from "../../src/server/request-token.ts";
import type { Store } from "../../src/store/contract.ts";
import { ownershipKey } from "../../src/store/keys.ts";
import { openStore } from "../../src/store/open-store.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const KEYS = {
  alice: "alice-key-0123456789abcdefghijklmnopqrstuv",
  bob: "bob-key-0123456789abcdefghijklmnopqrstuvwx",
};
const apiKeys = createApiKeyAuthenticator([
  { id: "alice", digest: digest("api-key", KEYS.alice), subject: "alice", tenant: "acme", scopes: [] },
  { id: "bob", digest: digest("api-key", KEYS.bob), subject: "bob", tenant: "globex", scopes: [] },
]);

interface Library {
  readonly tasks: OwnedTasks;
  readonly polls: PollTokens;
  readonly downloads: DownloadTokens;
}

/** The endpoints a widget polls: GET /tasks/<id>/progress and GET /tasks/<id>/result. */
function taskEndpoints({ tasks, polls, downloads }: Library) {
  return async (req: IncomingMessage, res: ServerResponse) => {
    try {
      const principal = apiKeys.authenticate(extractBearerToken(req.headersDistinct));
      const path = /^\/tasks\/([A-Za-z0-9_-]{1,256})\/(progress|result)(?:\?|$)/.exec(req.url ?? "");
      if (req.method !== "GET" || path === null) throw new GateError("ERR_NOT_FOUND", "not found");
      const [, taskId, what] = path as unknown as [string, string, string];
      if (what === "progress") {
        await polls.check(principal, taskId, readRequestToken(req, { header: "Tenantgate-Poll-Token" }));
        const task = await tasks.get(principal, taskId);
        return send(res, 200, { status: task.status, statusMessage: task.statusMessage });
      }
      await downloads.redeem(
        principal,
        taskId,
        readRequestToken(req, { header: "Tenantgate-Download-Token" }),
      );
      const stored = await tasks.getResult(principal, taskId);
      if (stored === null) throw new GateError("ERR_NOT_FOUND", "not found");
      return send(res, 200, stored.result);
    } catch (error) {
      const wire = isGateError(error) ? error.toWire() : toWire("ERR_INTERNAL");
      // REST, not JSON-RPC: an unknown or foreign task, and any token refusal, are one 404.
      const unknown = ["ERR_TASK_NOT_FOUND", "ERR_TOKEN_INVALID", "ERR_NOT_FOUND"].includes(wire.code);
      return send(res, unknown ? 404 : wire.status, { error: unknown ? "not found" : wire.message });
    }
  };
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

for (const backend of await storeBackendCases("poll-endpoint")) {
  describe(`task REST endpoints over HTTP on ${backend.name}`, { skip: backend.skip }, () => {
    let store: Store;
    let cleanup: () => Promise<void>;
    let server: Server;
    let base: string;
    let library: Library;
    const alice = apiKeys.authenticate(KEYS.alice);
    const bob = apiKeys.authenticate(KEYS.bob);

    before(async () => {
      const opened = await backend.open();
      cleanup = opened.cleanup;
      store = await openStore(opened.url);
      library = {
        tasks: createOwnedTasks({ store, ttlMs: 60_000 }),
        polls: createPollTokens({ store }),
        downloads: createDownloadTokens({ store }),
      };
      server = createServer(taskEndpoints(library));
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    after(async () => {
      await new Promise((resolve) => server.close(resolve));
      await store.close();
      await cleanup();
    });

    const get = async (path: string, key: string, headers: Record<string, string> = {}) => {
      const response = await fetch(`${base}${path}`, {
        headers: { authorization: `Bearer ${key}`, ...headers },
      });
      return { status: response.status, body: (await response.json()) as unknown };
    };
    const unknownTask = () =>
      get("/tasks/never-created/progress", KEYS.bob, { "tenantgate-poll-token": "A".repeat(32) });

    it("T2 B presents A's valid poll token for A's task: the answer for an unknown task", async () => {
      const task = await library.tasks.create(alice);
      const { token } = await library.polls.issue(alice, task.taskId);
      const headers = { "tenantgate-poll-token": token };
      assert.deepEqual(await get(`/tasks/${task.taskId}/progress`, KEYS.alice, headers), {
        status: 200,
        body: { status: "working", statusMessage: null },
      });
      const stolen = await get(`/tasks/${task.taskId}/progress`, KEYS.bob, headers);
      assert.deepEqual(stolen, await unknownTask());
      assert.deepEqual(stolen, { status: 404, body: { error: "not found" } });
      // Without a token, or with B's own token for A's task id, B fares no better.
      assert.deepEqual(await get(`/tasks/${task.taskId}/progress`, KEYS.bob), stolen);
      const bobs = await library.polls.issue(bob, task.taskId);
      assert.deepEqual(
        await get(`/tasks/${task.taskId}/progress`, KEYS.bob, { "tenantgate-poll-token": bobs.token }),
        stolen,
      );
      assert.equal((await get(`/tasks/${task.taskId}/progress`, KEYS.alice, headers)).status, 200);
    });

    it("T2 B presents A's valid download token: refused, not burned; A downloads once", async () => {
      const task = await library.tasks.create(alice);
      await library.tasks.complete(alice, task.taskId, { rows: [1, 2, 3] });
      const { token } = await library.downloads.issue(alice, task.taskId);
      const headers = { "tenantgate-download-token": token };
      const stolen = await get(`/tasks/${task.taskId}/result`, KEYS.bob, headers);
      assert.deepEqual(stolen, { status: 404, body: { error: "not found" } });
      assert.deepEqual(await get(`/tasks/${task.taskId}/result`, KEYS.alice, headers), {
        status: 200,
        body: { rows: [1, 2, 3] },
      });
      assert.deepEqual(await get(`/tasks/${task.taskId}/result`, KEYS.alice, headers), stolen);
      // The result is never reachable by the task id alone, even for its owner.
      assert.deepEqual(await get(`/tasks/${task.taskId}/result`, KEYS.alice), stolen);
    });

    it("T4 a poll or download token in a query string is refused, even beside a valid header", async () => {
      const task = await library.tasks.create(alice);
      const { token } = await library.polls.issue(alice, task.taskId);
      for (const query of [`token=${token}`, `poll_token=${token}`, `access_token=${KEYS.alice}`]) {
        const refused = await get(`/tasks/${task.taskId}/progress?${query}`, KEYS.alice, {
          "tenantgate-poll-token": token,
        });
        assert.deepEqual(refused, { status: 400, body: { error: "invalid request" } });
        assert.ok(!JSON.stringify(refused).includes(token));
      }
      const alone = await get(`/tasks/${task.taskId}/progress?token=${token}`, KEYS.alice);
      assert.equal(alone.status, 400);
    });

    it("T3 a task whose owner record is gone refuses its valid poll token", async () => {
      const task = await library.tasks.create(alice);
      const { token } = await library.polls.issue(alice, task.taskId);
      await store.delete(ownershipKey("owned-task", task.taskId));
      assert.deepEqual(
        await get(`/tasks/${task.taskId}/progress`, KEYS.alice, { "tenantgate-poll-token": token }),
        { status: 404, body: { error: "not found" } },
      );
    });
  });
}
