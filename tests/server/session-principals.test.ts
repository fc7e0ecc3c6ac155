/**
 * A server without authentication (issue 8; DESIGN invariant 2): every session gets its own throwaway
 * principal, so the library works (nothing throws for want of a user) and two sessions never share
 * tasks, handles or tokens. On every store backend.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { ANONYMOUS_ISSUER, makePrincipal, samePrincipal } from "../../src/identity/principal.ts";
import { createOwnedTasks } from "../../src/server/owned-tasks.ts";
import { createPollTokens } from "../../src/server/poll-tokens.ts";
import { createSessionPrincipals } from "../../src/server/session-principals.ts";
import { createStateHandles } from "../../src/server/state-handles.ts";
import type { Store } from "../../src/store/contract.ts";
import { openStore } from "../../src/store/open-store.ts";
import { storeBackendCases } from "../support/store-cases.ts";

for (const backend of await storeBackendCases("session-principals")) {
  describe(`no-auth servers on ${backend.name}`, { skip: backend.skip }, () => {
    let store: Store;
    let cleanup: () => Promise<void>;
    before(async () => {
      const opened = await backend.open();
      cleanup = opened.cleanup;
      store = await openStore(opened.url);
    });
    after(async () => {
      await store.close();
      await cleanup();
    });

    it("T2 anonymous mode works across two sessions without sharing tasks, handles or poll tokens", async () => {
      const sessions = createSessionPrincipals();
      const tasks = createOwnedTasks({ store, ttlMs: 60_000 });
      const handles = createStateHandles({ store, ttlMs: 60_000 });
      const polls = createPollTokens({ store });
      const first = { id: "session-1" };
      const second = { id: "session-2" };

      // Each session's calls, as a no-auth server makes them: no principal from a credential.
      const one = sessions.principalFor(first, undefined);
      const two = sessions.principalFor(second, null);
      assert.equal(one.issuer, ANONYMOUS_ISSUER);
      assert.ok(!samePrincipal(one, two));
      assert.equal(sessions.principalFor(first), one, "stable for the session's lifetime");

      const task = await tasks.create(sessions.principalFor(first), { state: "one's" });
      const handle = await handles.create(sessions.principalFor(first), "one's handle");
      const { token } = await polls.issue(sessions.principalFor(first), task.taskId);

      // The same session, later: everything is there.
      assert.equal((await tasks.get(sessions.principalFor(first), task.taskId)).state, "one's");
      assert.equal(await handles.get(sessions.principalFor(first), handle), "one's handle");
      await polls.check(sessions.principalFor(first), task.taskId, token);
      assert.deepEqual(
        (await tasks.list(sessions.principalFor(first))).map((listed) => listed.taskId),
        [task.taskId],
      );

      // The other session, holding every id and token: nothing.
      await assert.rejects(tasks.get(sessions.principalFor(second), task.taskId), (error: unknown) =>
        isGateError(error, "ERR_TASK_NOT_FOUND"),
      );
      await assert.rejects(tasks.cancel(sessions.principalFor(second), task.taskId), (error: unknown) =>
        isGateError(error, "ERR_TASK_NOT_FOUND"),
      );
      assert.deepEqual(await tasks.list(sessions.principalFor(second)), []);
      assert.equal(await handles.get(sessions.principalFor(second), handle), null);
      await assert.rejects(polls.check(sessions.principalFor(second), task.taskId, token), (error: unknown) =>
        isGateError(error, "ERR_TOKEN_INVALID"),
      );

      // Its own work goes through as well.
      const theirs = await tasks.create(sessions.principalFor(second));
      assert.deepEqual(
        (await tasks.list(sessions.principalFor(second))).map((listed) => listed.taskId),
        [theirs.taskId],
      );

      // An ended session's principal is gone: a new one is minted, which owns nothing.
      sessions.end(first);
      const after = sessions.principalFor(first);
      assert.ok(!samePrincipal(after, one));
      assert.deepEqual(await tasks.list(after), []);
    });
  });
}

describe("session principals", () => {
  it("a verified principal wins; a session must be an object, never a client-chosen string", () => {
    const sessions = createSessionPrincipals();
    const verified = makePrincipal({
      kind: "jwt",
      issuer: "https://issuer.test",
      subject: "alice",
      tenant: "acme",
      scopes: [],
      expiresAt: null,
    });
    const session = {};
    assert.equal(sessions.principalFor(session, verified), verified);
    assert.notEqual(sessions.principalFor(session).subject, "alice");
    assert.throws(
      () => sessions.principalFor("session-id" as unknown as object),
      (error: unknown) => isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
    assert.throws(
      () => sessions.principalFor(null as unknown as object),
      (error: unknown) => isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
  });
});
