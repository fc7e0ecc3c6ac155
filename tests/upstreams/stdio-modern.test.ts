/**
 * `stdio.modern: "per-principal"`: the stdio bridge (src/upstreams/stdio-upstream.ts) serving
 * 2026-07-28 requests from one process per principal, driven directly with request objects that
 * carry principals, against real child processes (tests/support/stdio-probe-server.ts). Nothing about
 * child processes is mocked; the vault is the in-memory test double.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { isGateError } from "../../src/errors.ts";
import type { UpstreamClient } from "../../src/gateway/upstream-client.ts";
import { anonymousPrincipal } from "../../src/identity/anonymous.ts";
import { ownerScope, type Principal } from "../../src/identity/principal.ts";
import { principalDigest } from "../../src/sessions/revocation-bus.ts";
import { alive, eventually } from "../support/process-watch.ts";
import {
  modernToolCall as call,
  modernEnvelope as envelope,
  MODERN_VERSION as MODERN,
  modernBridges,
  modernPost,
  testPrincipal,
} from "../support/stdio-bridge.ts";
import { createVaultDouble } from "../support/vault-double.ts";

const alice = testPrincipal("alice");
const bob = testPrincipal("bob");
const bridge = modernBridges();

/** A modern POST; its answer with the body parsed (undefined when empty). */
async function send(
  client: UpstreamClient,
  caller: Principal,
  message: Record<string, unknown>,
  signal?: AbortSignal,
): Promise<{ status: number; headers: Record<string, unknown>; json: Record<string, unknown> | undefined }> {
  const answer = await modernPost(client, caller, message, signal !== undefined ? { signal } : {});
  const json = answer.text === "" ? undefined : (JSON.parse(answer.text) as Record<string, unknown>);
  return { status: answer.status, headers: answer.headers, json };
}

/** A probe tools/call, as a modern client that takes SSE sends it; every message of the answer, in order. */
async function sendStreaming(
  client: UpstreamClient,
  caller: Principal,
  id: number,
  name: string,
  args: Record<string, unknown>,
  progressToken: string | undefined,
  accept = "application/json, text/event-stream",
): Promise<{ contentType: unknown; messages: Record<string, unknown>[] }> {
  const meta = envelope(progressToken === undefined ? {} : { progressToken });
  const answer = await modernPost(
    client,
    caller,
    { id, method: "tools/call", params: { name, arguments: args, _meta: meta } },
    { accept },
  );
  assert.equal(answer.status, 200);
  const contentType = answer.headers["content-type"];
  if (contentType !== "text/event-stream") {
    return { contentType, messages: [JSON.parse(answer.text) as Record<string, unknown>] };
  }
  const messages = answer.text
    .split("\n\n")
    .filter((event) => event.startsWith("data: "))
    .map((event) => JSON.parse(event.slice("data: ".length)) as Record<string, unknown>);
  return { contentType, messages };
}

async function pidOf(client: UpstreamClient, caller: Principal): Promise<number> {
  return (await call(client, caller, "whoami")).value["pid"] as number;
}

describe("stdio bridge, modern requests served by one process per principal", () => {
  it("answers server/discover from the server's own initialize, with no session anywhere", async () => {
    const { client } = bridge();
    const answer = await send(client, alice, {
      id: "d-1",
      method: "server/discover",
      params: { _meta: envelope() },
    });
    assert.equal(answer.status, 200);
    assert.equal(answer.headers["mcp-session-id"], undefined);
    assert.deepEqual(answer.json, {
      jsonrpc: "2.0",
      id: "d-1",
      result: {
        resultType: "complete",
        ttlMs: 0,
        cacheScope: "private",
        supportedVersions: [MODERN],
        capabilities: { tools: {} },
        _meta: { "io.modelcontextprotocol/serverInfo": { name: "stdio-probe", version: "1.0.0" } },
      },
    });
  });

  it("C4 one process per principal: the same one for every request of its owner, never another's", async () => {
    const { client, events } = bridge();
    const first = await pidOf(client, alice);
    const again = await pidOf(client, alice);
    const bobs = await pidOf(client, bob);
    assert.equal(again, first, "alice's requests share her process");
    assert.notEqual(bobs, first, "bob has a process of his own");
    // What the process keeps between requests (a file in its home) is its owner's alone.
    const home = (await call(client, alice, "whoami")).value["home"] as string;
    await call(client, alice, "writefile", { path: `${home}/note`, content: "alice's" });
    assert.deepEqual((await call(client, alice, "readfile", { path: `${home}/note` })).value, {
      ok: true,
      content: "alice's",
    });
    const bobHome = (await call(client, bob, "whoami")).value["home"] as string;
    assert.notEqual(bobHome, home);
    assert.equal(events.filter((event) => event.type === "process.started").length, 2);
  });

  it("writes its own ids and no envelope keys; answers under the client's id as a modern result", async () => {
    const { client } = bridge();
    const seen = await call(
      client,
      alice,
      "request",
      {},
      { id: "client-7", meta: { progressToken: "p-1", custom: 1 } },
    );
    assert.equal(seen.id, "client-7");
    assert.equal(seen.resultType, "complete");
    const received = seen.value as { id: unknown; params: { _meta?: Record<string, unknown> } };
    assert.equal(typeof received.id, "number", "the server sees the bridge's id, not the client's");
    // The progress token is the bridge's too (another request may carry the client's).
    assert.deepEqual(received.params._meta, { progressToken: received.id, custom: 1 });
  });

  it("a modern initialize is refused by the bridge, and nothing starts for it", async () => {
    const { client, events } = bridge();
    const answer = await send(client, alice, {
      id: 9,
      method: "initialize",
      params: {
        protocolVersion: "2025-11-25",
        capabilities: { sampling: {} },
        clientInfo: { name: "x", version: "1" },
      },
    });
    assert.deepEqual(answer.json, {
      jsonrpc: "2.0",
      id: 9,
      error: { code: -32601, message: "Method not found" },
    });
    assert.equal(events.length, 0);
  });

  it("a list result says it must not be cached, and never across callers", async () => {
    const { client } = bridge();
    const answer = await send(client, alice, { id: 2, method: "tools/list", params: { _meta: envelope() } });
    const result = answer.json?.["result"] as Record<string, unknown>;
    assert.equal(result["resultType"], "complete");
    assert.equal(result["ttlMs"], 0);
    assert.equal(result["cacheScope"], "private");
    assert.ok(Array.isArray(result["tools"]));
  });

  it("progress a request asked for reaches its answer as SSE, under the client's token, the answer last", async () => {
    const { client } = bridge();
    const [first, second] = await Promise.all([
      sendStreaming(client, alice, 5, "progress", { steps: 3 }, "same-token"),
      sendStreaming(client, alice, 5, "progress", { steps: 2 }, "same-token"),
    ]);
    for (const [answer, steps] of [
      [first, 3],
      [second, 2],
    ] as const) {
      assert.equal(answer.contentType, "text/event-stream");
      const progress = answer.messages.slice(0, -1);
      assert.deepEqual(
        progress.map((m) => m["params"]),
        Array.from({ length: steps }, (_, i) => ({
          progressToken: "same-token",
          progress: i + 1,
          total: steps,
          message: `step ${i + 1}`,
        })),
        "each request gets only its own progress, under the token it sent",
      );
      const last = answer.messages.at(-1) as { id: unknown; result: { content: { text: string }[] } };
      assert.equal(last.id, 5);
      assert.equal(JSON.parse(last.result.content[0]?.text ?? "null").steps, steps);
    }
  });

  it("without text/event-stream in Accept, or without a token, the answer is JSON and progress is dropped", async () => {
    const { client } = bridge();
    const jsonOnly = await sendStreaming(client, alice, 6, "progress", { steps: 2 }, "t", "application/json");
    assert.equal(jsonOnly.contentType, "application/json");
    assert.equal(jsonOnly.messages.length, 1);
    const noToken = await sendStreaming(client, alice, 7, "progress", { steps: 2 }, undefined);
    assert.equal(noToken.contentType, "application/json");
    assert.equal((noToken.messages[0] as { id: unknown }).id, 7);
  });

  it("concurrent requests of one principal with the same JSON-RPC id each get their own answer", async () => {
    const { client } = bridge();
    const slow = call(client, alice, "sleep", { ms: 300 }, { id: 7 });
    const quick = call(client, alice, "request", {}, { id: 7 });
    const [slowAnswer, quickAnswer] = await Promise.all([slow, quick]);
    assert.deepEqual(slowAnswer.value, { ok: true });
    assert.equal(quickAnswer.id, 7);
    assert.ok("params" in quickAnswer.value, "the quick call got its own answer, not the sleep's");
  });

  it("C1 acts with the vault as of each request: a changed entry replaces the process, a deleted one refuses", async () => {
    const vault = createVaultDouble();
    const { client, events } = bridge({ vault }, { GITHUB_TOKEN: "vault:github_token" });
    await vault.put(ownerScope(alice), "github_token", "alice-token-one");
    const first = await call(client, alice, "env");
    assert.equal(first.value["GITHUB_TOKEN"], "alice-token-one");
    const firstPid = await pidOf(client, alice);

    await vault.put(ownerScope(alice), "github_token", "alice-token-two");
    const second = await call(client, alice, "env");
    assert.equal(second.value["GITHUB_TOKEN"], "alice-token-two");
    assert.notEqual(await pidOf(client, alice), firstPid);
    await eventually(() => !alive(firstPid), "the process holding the replaced credential ends");
    assert.ok(
      events.some((event) => event.type === "process.ended" && event.reason === "credentials-changed"),
    );

    const secondPid = await pidOf(client, alice);
    await vault.delete(ownerScope(alice), "github_token");
    await assert.rejects(call(client, alice, "env"), (error) => {
      assert.ok(isGateError(error, "ERR_CREDENTIAL_REQUIRED"));
      assert.equal(error.credential, "github_token");
      return true;
    });
    await eventually(() => !alive(secondPid), "the process holding the deleted credential ends");

    // Bob never had the entry: refused before anything starts for him.
    const started = events.filter((event) => event.type === "process.started").length;
    await assert.rejects(call(client, bob, "env"), (error) => isGateError(error, "ERR_CREDENTIAL_REQUIRED"));
    assert.equal(events.filter((event) => event.type === "process.started").length, started);
  });

  it("C1 a credential written or removed through the gateway ends the processes holding the old value at once", async () => {
    const vault = createVaultDouble();
    const { client, events } = bridge({ vault }, { GITHUB_TOKEN: "vault:github_token" });
    await vault.put(ownerScope(alice), "github_token", "alice-old");
    await vault.put(ownerScope(bob), "github_token", "bob-only");
    const [alicePid, bobPid] = [await pidOf(client, alice), await pidOf(client, bob)];
    // An entry this upstream does not use ends nothing.
    client.credentialsChanged?.(ownerScope(alice), "other_token");
    await delay(200);
    assert.ok(alive(alicePid));

    await vault.put(ownerScope(alice), "github_token", "alice-new");
    client.credentialsChanged?.(ownerScope(alice), "github_token");
    await eventually(() => !alive(alicePid), "alice's process ends without waiting for her next request");
    assert.ok(alive(bobPid), "bob's process lives");
    assert.equal((await call(client, alice, "env")).value["GITHUB_TOKEN"], "alice-new");

    const renewed = await pidOf(client, alice);
    client.credentialsChanged?.(ownerScope(alice), null);
    await eventually(() => !alive(renewed), "removing all of alice's entries ends it too");
    assert.equal(
      events.filter((e) => e.type === "process.ended" && e.reason === "credentials-changed").length,
      2,
    );
  });

  it("a crash fails the requests in flight; the principal's next request starts a new process", async () => {
    const { client } = bridge();
    const before = await pidOf(client, alice);
    const bobs = await pidOf(client, bob);
    await assert.rejects(call(client, alice, "crash"), (error) =>
      isGateError(error, "ERR_UPSTREAM_UNAVAILABLE"),
    );
    const after = await pidOf(client, alice);
    assert.notEqual(after, before);
    assert.equal(await pidOf(client, bob), bobs, "bob's process is untouched");
  });

  it("an anonymous caller's request gets a process of its own, ended with the answer", async () => {
    const { client, events } = bridge();
    const pid = await pidOf(client, anonymousPrincipal());
    await eventually(() => !alive(pid), "the anonymous request's process ends");
    const other = await pidOf(client, anonymousPrincipal());
    assert.notEqual(other, pid);
    await eventually(
      () =>
        events.filter((event) => event.type === "process.ended" && event.reason === "answered").length === 2,
      "both processes ended as answered",
    );
  });

  it("answers the server's own requests itself (no client to ask) and drops its notifications", async () => {
    const { client } = bridge();
    const asked = await call(client, alice, "ask");
    const answer = (asked.value as { answer: { error?: { code: number } } }).answer;
    assert.equal(answer.error?.code, -32601);
    assert.deepEqual((await call(client, alice, "notify", { text: "hello" })).value, { ok: true });
  });

  it("a caller who leaves cancels the request at the server (2026-07-28 cancellation)", async () => {
    const { client, stderr } = bridge();
    await pidOf(client, alice);
    const controller = new AbortController();
    const pending = send(
      client,
      alice,
      { id: 3, method: "tools/call", params: { name: "sleep", arguments: { ms: 5_000 }, _meta: envelope() } },
      controller.signal,
    );
    await delay(200);
    controller.abort();
    await assert.rejects(pending, (error) => isGateError(error, "ERR_UPSTREAM_UNAVAILABLE"));
    await eventually(
      () => stderr.some((line) => /^probe: cancelled \d+$/.test(line)),
      "the server hears of it",
    );
  });

  it("counts the principal's process against its cap, ends it when idle, and forgets it at close", async () => {
    const { client, events } = bridge({ maxProcessesPerPrincipal: 1, idleTimeoutMs: 300 });
    const pid = await pidOf(client, alice);
    // process.ended comes once its cap slot is given back, after the pid is gone.
    await eventually(
      () => events.some((event) => event.type === "process.ended" && event.reason === "idle"),
      "the idle process ends",
    );
    assert.ok(!alive(pid));
    // A legacy initialize meets the cap while the modern process lives.
    const live = await pidOf(client, alice);
    await assert.rejects(
      client.request({
        method: "POST",
        headers: { "content-type": "application/json", "mcp-protocol-version": "2025-11-25" },
        body: Buffer.from(
          JSON.stringify({
            jsonrpc: "2.0",
            id: 1,
            method: "initialize",
            params: {
              protocolVersion: "2025-11-25",
              capabilities: {},
              clientInfo: { name: "t", version: "1" },
            },
          }),
        ),
        principal: alice,
      }),
      (error) => isGateError(error, "ERR_CONNECTION_LIMIT"),
    );
    await client.close();
    await eventually(() => !alive(live), "close ends the principal's process");
  });

  it("S13 a principal's revocation, the kill switch and lost notices each end the modern processes they name", async () => {
    const { client, events } = bridge();
    const revoked = () =>
      events.filter((event) => event.type === "process.ended" && event.reason === "revoked");
    const [alicePid, bobPid] = [await pidOf(client, alice), await pidOf(client, bob)];
    client.applyRevocation?.({ kind: "principal", principalDigest: principalDigest(ownerScope(alice)) });
    await eventually(() => !alive(alicePid), "alice's process ends with her revocation");
    assert.ok(alive(bobPid), "bob's process lives");
    assert.equal(await pidOf(client, bob), bobPid);

    // No session to tell its age by: every kill switch ends it, whatever its generation.
    const aliceAgain = await pidOf(client, alice);
    assert.notEqual(aliceAgain, alicePid, "her next request starts a new process");
    client.applyRevocation?.({ kind: "all", generation: 1 });
    await eventually(() => !alive(aliceAgain) && !alive(bobPid), "the kill switch ends both");

    // A re-check after lost notices cannot judge a sessionless process: it ends (fail closed).
    const bobAgain = await pidOf(client, bob);
    client.applyRevocation?.({ kind: "resync" });
    await eventually(() => !alive(bobAgain), "a resync ends it");
    await eventually(() => revoked().length === 4, "four processes ended as revoked");
  });

  it("without the option, a modern request is refused with -32022 and nothing starts", async () => {
    const { client, events } = bridge({ modern: "off" });
    const answer = await send(client, alice, { id: 1, method: "tools/list", params: { _meta: envelope() } });
    assert.equal(answer.status, 400);
    assert.deepEqual(answer.json?.["error"], { code: -32022, message: "Unsupported protocol version" });
    assert.equal(events.length, 0);
  });
});
