/**
 * Review of the stdio bridge's process lifecycle as merged (src/upstreams/stdio-upstream.ts):
 * revocation, session expiry, the tenant cap and credential changes, and how they interleave with a
 * process start. Real child processes (tests/support/stdio-probe-server.ts); the vault is the
 * in-memory test double, held where a race needs a slow store round trip.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { isGateError } from "../../src/errors.ts";
import type { UpstreamClient } from "../../src/gateway/upstream-client.ts";
import { ownerScope } from "../../src/identity/principal.ts";
import type { StdioUpstreamOptions } from "../../src/upstreams/stdio-upstream.ts";
import { eventually } from "../support/process-watch.ts";
import {
  modernToolValue as call,
  countEvents as count,
  heldVault,
  legacyPost as legacy,
  modernBridges,
  testPrincipal,
} from "../support/stdio-bridge.ts";

const TOKEN_ENV = { GITHUB_TOKEN: "vault:github_token" };

const alice = testPrincipal("alice");
/** alice's subject and tenant under another issuer: someone else (THREATS A3). */
const otherAlice = testPrincipal("alice", "acme", "https://other-issuer.example");
const openBridge = modernBridges();
const bridge = (options: StdioUpstreamOptions, env: Record<string, string> = TOKEN_ENV) =>
  openBridge(options, env);

const INITIALIZE = {
  id: 0,
  method: "initialize",
  params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "t", version: "1" } },
};

/** The GITHUB_TOKEN a legacy session's process holds, or undefined if the session is gone (404). */
async function sessionToken(client: UpstreamClient, session: string): Promise<string | undefined> {
  const answer = await legacy(
    client,
    alice,
    { id: 1, method: "tools/call", params: { name: "env", arguments: {} } },
    session,
  );
  if (answer.status === 404) return undefined;
  const result = answer.json["result"] as { content: { text: string }[] };
  return (JSON.parse(result.content[0]?.text ?? "null") as Record<string, string>)["GITHUB_TOKEN"];
}

describe("review: stdio process lifecycle", () => {
  it("a legacy initialize whose vault read raced a credential change leaves no session on the old value", async () => {
    const held = heldVault();
    const { client } = bridge({ vault: held.vault });
    await held.put(ownerScope(alice), "github_token", "alice-old-token");
    const release = held.holdNext();
    const starting = legacy(client, alice, INITIALIZE);
    await delay(50);
    // Rotated through the gateway while the initialize's store read is on its way back.
    await held.put(ownerScope(alice), "github_token", "alice-new-token");
    client.credentialsChanged?.(ownerScope(alice), "github_token");
    release();
    const [outcome] = await Promise.allSettled([starting]);
    if (outcome.status === "rejected") {
      assert.ok(isGateError(outcome.reason, "ERR_UPSTREAM_UNAVAILABLE"), String(outcome.reason));
    } else if (outcome.value.session !== undefined) {
      assert.notEqual(
        await sessionToken(client, outcome.value.session),
        "alice-old-token",
        "a session started after the change acts with the replaced credential for its whole life",
      );
    }
  });

  it("a legacy process still being prepared when its credential changes does not run on the old value", async () => {
    const held = heldVault();
    const { client, events } = bridge({ vault: held.vault });
    await held.put(ownerScope(alice), "github_token", "alice-old-token");
    const release = held.holdNext();
    const starting = legacy(client, alice, INITIALIZE);
    await delay(50);
    release();
    // The read has answered; the process directory is being made (several file system round trips).
    await new Promise((done) => setImmediate(done));
    assert.equal(count(events, "process.started"), 0, "precondition: the process is not started yet");
    await held.remove(ownerScope(alice), "github_token");
    client.credentialsChanged?.(ownerScope(alice), "github_token");
    const [outcome] = await Promise.allSettled([starting]);
    if (outcome.status === "rejected") {
      assert.ok(isGateError(outcome.reason, "ERR_UPSTREAM_UNAVAILABLE"), String(outcome.reason));
    } else if (outcome.value.session !== undefined) {
      assert.equal(
        await sessionToken(client, outcome.value.session),
        undefined,
        "a session started with a credential removed before its process began keeps using it",
      );
    }
    await eventually(
      () => count(events, "process.started") === count(events, "process.ended"),
      "no process holds the removed credential",
      3_000,
    );
  });

  it("a modern process whose vault read raced a removal through the gateway is ended without a next request", async () => {
    const held = heldVault();
    const { client, events } = bridge({ vault: held.vault });
    await held.put(ownerScope(alice), "github_token", "alice-removed-token");
    const release = held.holdNext();
    const pending = call(client, alice, "whoami");
    await delay(50);
    await held.remove(ownerScope(alice), "github_token");
    client.credentialsChanged?.(ownerScope(alice), "github_token");
    release();
    const [outcome] = await Promise.allSettled([pending]);
    if (outcome.status === "rejected") {
      assert.ok(isGateError(outcome.reason, "ERR_CREDENTIAL_REQUIRED"), String(outcome.reason));
    }
    // No further request of alice's comes to notice the removal: only the change itself can end it.
    await eventually(
      () => count(events, "process.started") === count(events, "process.ended"),
      "no process holds the removed credential",
      3_000,
    );
  });

  it("a modern request whose vault read raced a rotation through the gateway is served with the new value", async () => {
    const held = heldVault();
    const { client, events } = bridge({ vault: held.vault });
    await held.put(ownerScope(alice), "github_token", "alice-old-token");
    const release = held.holdNext();
    const pending = call(client, alice, "env");
    await delay(50);
    await held.put(ownerScope(alice), "github_token", "alice-new-token");
    client.credentialsChanged?.(ownerScope(alice), "github_token");
    release();
    assert.equal((await pending)["GITHUB_TOKEN"], "alice-new-token");
    assert.equal(count(events, "process.started"), 1, "no process was started on the old value");
  });
  it("guard: a credential change of someone else during a start leaves that start alone", async () => {
    const held = heldVault();
    const { client, events } = bridge({ vault: held.vault });
    await held.put(ownerScope(alice), "github_token", "alice-token");
    await held.put(ownerScope(otherAlice), "github_token", "other-token");
    const release = held.holdNext();
    const modern = call(client, alice, "env");
    await delay(50);
    // Same subject and tenant, another issuer: not alice.
    await held.put(ownerScope(otherAlice), "github_token", "other-token-two");
    client.credentialsChanged?.(ownerScope(otherAlice), "github_token");
    release();
    assert.equal((await modern)["GITHUB_TOKEN"], "alice-token");
    const session = (await legacy(client, alice, INITIALIZE)).session;
    assert.ok(session);
    client.credentialsChanged?.(ownerScope(otherAlice), null);
    assert.equal(await sessionToken(client, session), "alice-token");
    assert.equal(count(events, "process.ended"), 0);
  });
  it("a session revoked (or evicted) before its process was bound does not leave the process running", async () => {
    // The gateway's interleaving: two initializes of one principal at its session cap (evict-oldest);
    // the second create evicts the first while the first is still writing its records, so the
    // eviction notice (revokeHere, and the bus's echo) reaches the bridge before the first is bound.
    const { client, events } = bridge({}, {});
    const { session } = await legacy(client, alice, INITIALIZE);
    assert.ok(session);
    client.applyRevocation?.({ kind: "session", sessionDigest: "digest-of-the-evicted-session" });
    client.bindSession?.(session, {
      sessionDigest: "digest-of-the-evicted-session",
      killGeneration: 0,
      // The session no longer resolves: it was evicted.
      stillValid: async () => false,
      expiresAt: Date.now() + 3_600_000,
    });
    await eventually(
      () => events.some((event) => event.type === "process.ended" && event.reason === "revoked"),
      "the process of the revoked session ends",
      3_000,
    );
  });
  it("guard: another session's notice before bind leaves a still valid session's process running", async () => {
    const { client, events } = bridge({}, {});
    const { session } = await legacy(client, alice, INITIALIZE);
    assert.ok(session);
    client.applyRevocation?.({ kind: "session", sessionDigest: "someone-elses-session" });
    client.bindSession?.(session, {
      sessionDigest: "this-session",
      killGeneration: 0,
      stillValid: async () => true,
      expiresAt: Date.now() + 3_600_000,
    });
    await delay(300);
    assert.equal(count(events, "process.ended"), 0);
    assert.equal((await legacy(client, alice, { id: 2, method: "ping" }, session)).status, 200);
  });
});
