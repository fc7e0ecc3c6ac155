/**
 * Review of `stdio.modern: "per-principal"` (src/upstreams/stdio-upstream.ts): each test drives a
 * finding against real child processes (tests/support/stdio-probe-server.ts); nothing about child
 * processes is mocked, the vault is the in-memory test double (delayed where a race needs it).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { isGateError } from "../../src/errors.ts";
import { ownerScope } from "../../src/identity/principal.ts";
import { alive, eventually } from "../support/process-watch.ts";
import {
  modernToolValue as call,
  countEvents as count,
  heldVault,
  legacyPost as legacy,
  modernBridges,
  testPrincipal,
} from "../support/stdio-bridge.ts";

const alice = testPrincipal("alice");
const bridge = modernBridges();

describe("review: stdio modern per-principal", () => {
  it("a request whose caller left while its process started is never written to the server", async () => {
    const { client, stderr } = bridge();
    const controller = new AbortController();
    // Cold: the process takes a while to start; the caller leaves before it has.
    const pending = call(client, alice, "stderr", { text: "side-effect-after-cancel" }, controller.signal);
    await delay(5);
    controller.abort();
    await assert.rejects(pending, (error) => isGateError(error, "ERR_UPSTREAM_UNAVAILABLE"));
    // A later request on the same process: the server reads its input in order, so by its answer
    // the cancelled call would have run.
    await call(client, alice, "whoami");
    await delay(100);
    assert.deepEqual(
      stderr.filter((line) => line.includes("side-effect-after-cancel")),
      [],
      "the cancelled call ran at the server",
    );
  });

  it("a vault read that raced a deletion leaves no process holding the deleted credential", async () => {
    const held = heldVault();
    const { client, events } = bridge({ vault: held.vault }, { GITHUB_TOKEN: "vault:github_token" });
    await held.put(ownerScope(alice), "github_token", "alice-deleted-token");
    const first = await call(client, alice, "whoami");
    // A request whose vault read saw the entry, answered late (a slow store round trip).
    const release = held.holdNext();
    const stale = call(client, alice, "whoami");
    await delay(50);
    await held.remove(ownerScope(alice), "github_token");
    // The deletion is seen by the next request.
    const fresh = call(client, alice, "env");
    const settled = Promise.allSettled([stale, fresh]);
    await delay(300);
    release();
    const outcomes = await settled;
    assert.equal(outcomes[1].status, "rejected");
    assert.ok(isGateError((outcomes[1] as PromiseRejectedResult).reason, "ERR_CREDENTIAL_REQUIRED"));
    await eventually(() => !alive(first["pid"] as number), "the first process ends");
    // Once the deletion has been seen, no process may keep the deleted value (none is left to end
    // it but the idle timeout, 15 minutes by default).
    await eventually(
      () => count(events, "process.started") === count(events, "process.ended"),
      "every process holding the deleted credential ends",
      3_000,
    );
  });

  it("a stale vault read does not end the process started with the newer credential", async () => {
    const held = heldVault();
    const { client, events } = bridge({ vault: held.vault }, { GITHUB_TOKEN: "vault:github_token" });
    await held.put(ownerScope(alice), "github_token", "alice-token-one");
    await call(client, alice, "whoami");
    const release = held.holdNext();
    const stale = call(client, alice, "whoami");
    await delay(50);
    await held.put(ownerScope(alice), "github_token", "alice-token-two");
    const fresh = call(client, alice, "whoami");
    const settled = Promise.allSettled([stale, fresh]);
    await delay(300);
    release();
    const outcomes = await settled;
    assert.equal(outcomes[1].status, "fulfilled", String((outcomes[1] as PromiseRejectedResult).reason));
    const freshPid = (outcomes[1] as PromiseFulfilledResult<Record<string, unknown>>).value["pid"] as number;
    await delay(200);
    assert.ok(alive(freshPid), "the process with the current credential was ended by an older read");
    assert.equal((await call(client, alice, "env"))["GITHUB_TOKEN"], "alice-token-two");
    assert.equal((await call(client, alice, "whoami"))["pid"], freshPid);
    // Exactly one process per credential value: none started again with the replaced one.
    assert.equal(count(events, "process.started"), 2);
  });

  it("a server that sends requests without reading its input is ended, not buffered in the gateway", async () => {
    const { client, events } = bridge({ requestTimeoutMs: 10_000 });
    // 48 requests with 1 MiB ids: the bridge's answers echo the ids, 48 MiB nobody reads.
    await assert.rejects(call(client, alice, "flood", { count: 48, bytes: 1024 * 1024 }), (error) =>
      isGateError(error, "ERR_UPSTREAM_UNAVAILABLE"),
    );
    await eventually(
      () => events.some((event) => event.type === "process.ended" && event.reason === "misbehaved"),
      "the process is ended as misbehaving",
    );
  });
  it("legacy (guard for the refactor): a POST whose caller leaves is not cancelled at the server", async () => {
    const { client, stderr } = bridge();
    const { session } = await legacy(client, alice, {
      id: 0,
      method: "initialize",
      params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "t", version: "1" } },
    });
    assert.ok(session);
    const controller = new AbortController();
    const pending = legacy(
      client,
      alice,
      { id: "left-1", method: "tools/call", params: { name: "sleep", arguments: { ms: 300 } } },
      session,
      controller.signal,
    );
    await delay(100);
    controller.abort();
    await assert.rejects(pending, (error) => isGateError(error, "ERR_UPSTREAM_UNAVAILABLE"));
    await delay(400);
    assert.deepEqual(
      stderr.filter((line) => line.startsWith("probe: cancelled")),
      [],
      "a legacy abort is the caller leaving, not a cancellation",
    );
    const again = await legacy(client, alice, { id: "left-1", method: "ping" }, session);
    assert.deepEqual(again.json, { jsonrpc: "2.0", id: "left-1", result: {} });
  });
  it("guard: a server refusing the bridge's initialize is ended and gives its cap slot back", async () => {
    const { client, events } = bridge({ maxProcesses: 1 }, { PROBE_REFUSE_INITIALIZE: "1" });
    for (let attempt = 0; attempt < 3; attempt++) {
      await assert.rejects(call(client, alice, "whoami"), (error) =>
        isGateError(error, "ERR_UPSTREAM_UNAVAILABLE"),
      );
      await eventually(
        () => count(events, "process.ended") === attempt + 1,
        "the refused process ends and its slot is given back",
      );
    }
    assert.deepEqual(
      events.filter((event) => event.type === "process.ended").map((event) => event.reason),
      ["initialize-refused", "initialize-refused", "initialize-refused"],
    );
  });
});
