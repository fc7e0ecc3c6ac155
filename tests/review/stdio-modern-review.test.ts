/**
 * Review of `stdio.modern: "per-principal"` (src/upstreams/stdio-upstream.ts): each test drives a
 * finding against real child processes (tests/support/stdio-probe-server.ts); nothing about child
 * processes is mocked, the vault is the in-memory test double (delayed where a race needs it).
 */
import assert from "node:assert/strict";
import type { Readable } from "node:stream";
import { after, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import type { StdioUpstreamConfig } from "../../src/config/gateway-config.ts";
import { isGateError } from "../../src/errors.ts";
import type { UpstreamClient } from "../../src/gateway/upstream-client.ts";
import { makePrincipal, ownerScope, type Principal } from "../../src/identity/principal.ts";
import {
  createStdioUpstreamClient,
  type StdioProcessEvent,
  type StdioUpstreamOptions,
} from "../../src/upstreams/stdio-upstream.ts";
import type { Vault } from "../../src/vault/vault.ts";
import { alive, eventually } from "../support/process-watch.ts";
import { createVaultDouble } from "../support/vault-double.ts";

const PROBE = fileURLToPath(new URL("../support/stdio-probe-server.ts", import.meta.url));
const MODERN = "2026-07-28";
const WAIT_MS = 20_000;

const alice = makePrincipal({
  kind: "jwt",
  issuer: "https://issuer.example",
  subject: "alice",
  tenant: "acme",
  scopes: [],
  expiresAt: null,
});

function upstreamConfig(env: Record<string, string> = {}): StdioUpstreamConfig {
  return {
    transport: "stdio",
    name: "probe",
    path: "/probe",
    audience: "http://127.0.0.1/probe",
    scopes: [],
    protocolVersions: undefined,
    inject: {},
    command: process.execPath,
    args: [PROBE],
    env,
    stdio: {},
  };
}

const clients: UpstreamClient[] = [];
after(async () => {
  await Promise.all(clients.map((client) => client.close()));
});

function bridge(
  options: StdioUpstreamOptions = {},
  env: Record<string, string> = {},
): { client: UpstreamClient; events: StdioProcessEvent[]; stderr: string[] } {
  const events: StdioProcessEvent[] = [];
  const stderr: string[] = [];
  const client = createStdioUpstreamClient(upstreamConfig(env), {
    modern: "per-principal",
    startTimeoutMs: WAIT_MS,
    onEvent: (event) => events.push(event),
    onStderr: (line) => stderr.push(line),
    ...options,
  });
  clients.push(client);
  return { client, events, stderr };
}

async function readAll(body: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks).toString("utf8");
}

/** tools/call as a modern request; the probe's tool result, parsed. */
async function call(
  client: UpstreamClient,
  caller: Principal,
  name: string,
  args: Record<string, unknown> = {},
  signal?: AbortSignal,
): Promise<Record<string, unknown>> {
  const answer = await client.request({
    method: "POST",
    headers: { "content-type": "application/json", "mcp-protocol-version": MODERN },
    body: Buffer.from(
      JSON.stringify({
        jsonrpc: "2.0",
        id: 1,
        method: "tools/call",
        params: {
          name,
          arguments: args,
          _meta: { "io.modelcontextprotocol/protocolVersion": MODERN },
        },
      }),
    ),
    principal: caller,
    ...(signal !== undefined ? { signal } : {}),
  });
  const json = JSON.parse(await readAll(answer.body)) as { result?: { content: { text: string }[] } };
  assert.ok(json.result, `no result: ${JSON.stringify(json)}`);
  return JSON.parse(json.result.content[0]?.text ?? "null") as Record<string, unknown>;
}

/** A legacy POST (2025-11-25): `initialize` without a session id, or a message in a session. */
async function legacy(
  client: UpstreamClient,
  caller: Principal,
  message: Record<string, unknown>,
  session?: string,
  signal?: AbortSignal,
): Promise<{ session: string | undefined; json: Record<string, unknown> }> {
  const answer = await client.request({
    method: "POST",
    headers: {
      "content-type": "application/json",
      "mcp-protocol-version": "2025-11-25",
      ...(session !== undefined ? { "mcp-session-id": session } : {}),
    },
    body: Buffer.from(JSON.stringify({ jsonrpc: "2.0", ...message })),
    principal: caller,
    ...(signal !== undefined ? { signal } : {}),
  });
  const text = await readAll(answer.body);
  return {
    session: answer.headers["mcp-session-id"] as string | undefined,
    json: (text === "" ? {} : JSON.parse(text)) as Record<string, unknown>,
  };
}

function count(events: StdioProcessEvent[], type: StdioProcessEvent["type"]): number {
  return events.filter((event) => event.type === type).length;
}

/** The test double, whose next `reveal` answers what it read only once `release` is called. */
function heldVault(): { vault: Vault; put: Vault["put"]; remove: Vault["delete"]; holdNext(): () => void } {
  const inner = createVaultDouble();
  let hold: Promise<void> | undefined;
  const vault: Vault = {
    ...inner,
    async reveal(owner, names) {
      const gate = hold;
      hold = undefined;
      const answer = await inner.reveal(owner, names);
      if (gate !== undefined) await gate;
      return answer;
    },
  };
  return {
    vault,
    put: inner.put,
    remove: inner.delete,
    holdNext() {
      let release!: () => void;
      hold = new Promise((done) => {
        release = done;
      });
      return release;
    },
  };
}

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
