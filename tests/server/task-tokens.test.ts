/**
 * Poll and download tokens (issue 8) on every store backend: possession is not identity (T2), a
 * token record that cannot be read refuses (T3), tokens expire, single-use downloads redeem once
 * across two connections, and the store holds digests only.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { anonymousPrincipal } from "../../src/identity/anonymous.ts";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";
import { createDownloadTokens, type DownloadTokens } from "../../src/server/download-tokens.ts";
import { createPollTokens, type PollTokens } from "../../src/server/poll-tokens.ts";
import type { Store } from "../../src/store/contract.ts";
import { ownershipKey } from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { storeBackendCases } from "../support/store-cases.ts";
import { openTwoConnections, type TwoConnections } from "../support/two-connections.ts";

const principal = (subject: string, tenant = `t-${subject}`, issuer = "https://issuer.test"): Principal =>
  makePrincipal({ kind: "jwt", issuer, subject, tenant, scopes: [], expiresAt: null });
const alice = principal("alice");
const bob = principal("bob");
const aliceElsewhere = principal("alice", "t-bob");
const aliceOtherIssuer = principal("alice", "t-alice", "https://other-issuer.test");
const carol = principal("carol", "t-alice");

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function refusal(call: Promise<unknown>): Promise<string> {
  try {
    await call;
  } catch (error) {
    assert.ok(isGateError(error), `expected a GateError, got ${String(error)}`);
    // Every refusal must read the same to the client, whatever its reason.
    assert.deepEqual(error.toWire(), { status: 404, code: "ERR_TOKEN_INVALID", message: "not found" });
    assert.equal(error.message, "not found");
    return error.detail ?? "";
  }
  assert.fail("expected a refusal");
}

for (const backend of await storeBackendCases("task-tokens")) {
  describe(`poll and download tokens on ${backend.name}`, { skip: backend.skip }, () => {
    let connections: TwoConnections;
    let store: Store;
    let polls: PollTokens;
    let downloads: DownloadTokens;
    before(async () => {
      connections = await openTwoConnections(backend);
      store = connections.first;
      polls = createPollTokens({ store });
      downloads = createDownloadTokens({ store });
    });
    after(async () => {
      await connections.close();
    });

    it("T2 B presents A's valid poll token for A's task: refused, and it still works for A", async () => {
      const { token } = await polls.issue(alice, "task-a");
      await polls.check(alice, "task-a", token);
      for (const intruder of [bob, aliceElsewhere, aliceOtherIssuer, carol, anonymousPrincipal()]) {
        assert.equal(await refusal(polls.check(intruder, "task-a", token)), "foreign");
        // The same answer for a token that never existed.
        await refusal(polls.check(intruder, "task-a", "A".repeat(32)));
      }
      await polls.check(alice, "task-a", token);
      assert.equal(await polls.revoke(bob, "task-a", token), false);
      await polls.check(alice, "task-a", token);
    });

    it("T2 a poll token is bound to its task: A's token for one task does not poll another", async () => {
      const { token } = await polls.issue(alice, "task-1");
      assert.equal(await refusal(polls.check(alice, "task-2", token)), "other-task");
      // A download token is not a poll token, and the reverse.
      assert.equal(await refusal(downloads.redeem(alice, "task-1", token)), "unknown");
      const download = await downloads.issue(alice, "task-1");
      assert.equal(await refusal(polls.check(alice, "task-1", download.token)), "unknown");
    });

    it("T2 B presents A's valid download token: refused and not consumed; A redeems it once", async () => {
      const { token } = await downloads.issue(alice, "task-a");
      for (const intruder of [bob, aliceElsewhere, carol]) {
        assert.equal(await refusal(downloads.redeem(intruder, "task-a", token)), "foreign");
      }
      assert.equal(await refusal(downloads.redeem(alice, "other-task", token)), "other-task");
      await downloads.redeem(alice, "task-a", token);
      assert.equal(await refusal(downloads.redeem(alice, "task-a", token)), "unknown");
    });

    it("T2 concurrent redemptions of one download token over two connections: exactly one succeeds", async () => {
      const remote = createDownloadTokens({ store: connections.second });
      const { token } = await downloads.issue(alice, "raced");
      const outcomes = await Promise.allSettled(
        Array.from({ length: 20 }, (_, i) =>
          (i % 2 === 0 ? downloads : remote).redeem(alice, "raced", token),
        ),
      );
      assert.equal(outcomes.filter((outcome) => outcome.status === "fulfilled").length, 1);
      for (const outcome of outcomes) {
        if (outcome.status === "rejected") assert.ok(isGateError(outcome.reason, "ERR_TOKEN_INVALID"));
      }
    });

    it("T2 expired poll and download tokens are refused: by their own expiry and by the store's TTL", async () => {
      let clock = Date.now();
      const clockedPolls = createPollTokens({ store, ttlMs: 60_000, now: () => clock });
      const clockedDownloads = createDownloadTokens({ store, ttlMs: 60_000, now: () => clock });
      const poll = await clockedPolls.issue(alice, "task-a");
      const download = await clockedDownloads.issue(alice, "task-a");
      clock += 60_000;
      assert.equal(await refusal(clockedPolls.check(alice, "task-a", poll.token)), "expired");
      assert.equal(await refusal(clockedDownloads.redeem(alice, "task-a", download.token)), "expired");

      const brief = createPollTokens({ store, ttlMs: 300 });
      const short = await brief.issue(alice, "task-a");
      await brief.check(alice, "task-a", short.token);
      await sleep(700);
      assert.equal(await refusal(brief.check(alice, "task-a", short.token)), "unknown");
    });

    it("T3 a token record that is missing, garbled or names no owner is refused", async () => {
      const { token } = await polls.issue(alice, "task-a");
      const key = ownershipKey("poll-token", token);
      const valid = JSON.parse((await store.get(key))!) as Record<string, unknown>;
      for (const value of [
        "{garbled",
        "null",
        JSON.stringify({ ...valid, subject: undefined }),
        JSON.stringify({ ...valid, tenant: "" }),
        JSON.stringify({ ...valid, expiresAt: "never" }),
        JSON.stringify({ ...valid, v: 2 }),
      ]) {
        await store.put(key, value, { ttlMs: 60_000 });
        await refusal(polls.check(alice, "task-a", token));
      }
      await store.delete(key);
      assert.equal(await refusal(polls.check(alice, "task-a", token)), "unknown");
      assert.equal(await refusal(polls.check(alice, "task-a", undefined)), "malformed");
      assert.equal(await refusal(polls.check(alice, "task-a", "short")), "malformed");
    });

    it("tokens are 192 random bits and only their digests are stored", async () => {
      const issued = await Promise.all(Array.from({ length: 50 }, () => polls.issue(alice, "task-a")));
      const tokens = new Set(issued.map((entry) => entry.token));
      assert.equal(tokens.size, 50);
      for (const { token, expiresAt } of issued) {
        assert.match(token, /^[A-Za-z0-9_-]{32}$/);
        assert.ok(expiresAt > Date.now());
        const stored = (await store.get(ownershipKey("poll-token", token)))!;
        assert.ok(!stored.includes(token));
        assert.ok(!stored.includes("task-a"), "the task is named by its digest");
        assert.ok(!ownershipKey("poll-token", token).encoded.includes(token));
      }
    });
  });
}

describe("tokens: options", () => {
  it("download tokens may be reusable until they expire; lifetimes are bounded", async () => {
    const store = new MemoryStore();
    const reusable = createDownloadTokens({ store, singleUse: false });
    const { token } = await reusable.issue(alice, "task-a");
    await reusable.redeem(alice, "task-a", token);
    await reusable.redeem(alice, "task-a", token);
    assert.equal(await refusal(reusable.redeem(bob, "task-a", token)), "foreign");
    assert.equal(await reusable.revoke(alice, "task-a", token), true);
    assert.equal(await refusal(reusable.redeem(alice, "task-a", token)), "unknown");
    const invalid = (error: unknown) => isGateError(error, "ERR_ARGUMENT_INVALID");
    assert.throws(() => createDownloadTokens({ store, ttlMs: 2 * 60 * 60 * 1000 }), invalid);
    assert.throws(() => createPollTokens({ store, ttlMs: 0 }), invalid);
    await assert.rejects(createPollTokens({ store }).issue(undefined as unknown as Principal, "t"), invalid);
    await store.close();
  });
});
