/**
 * The official SDK clients through the gateway to the demo upstream, over real HTTP: the legacy
 * `@modelcontextprotocol/sdk` client and the v2 `@modelcontextprotocol/client` (which probes with a
 * modern request, gets -32022 and falls back to initialize). Initialize, tools, progress
 * notifications on the request's SSE stream, and DELETE.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  Client as V2Client,
  StreamableHTTPClientTransport as V2Transport,
} from "@modelcontextprotocol/client";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { type Harness, initializeSession, mcpHeaders, startHarness } from "../support/gateway-harness.ts";

function textOf(result: unknown): string {
  const content = (result as { content?: Array<{ type: string; text?: string }> }).content ?? [];
  return content.map((part) => part.text ?? "").join("");
}

async function v1Client(
  url: string,
  token: string,
): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
  });
  const client = new Client({ name: "e2e-v1", version: "1.0.0" });
  await client.connect(transport);
  return { client, transport };
}

describe("SDK clients through the gateway", () => {
  let harness: Harness;
  const opened: Array<{ close(): Promise<void> }> = [];
  before(async () => {
    harness = await startHarness();
  });
  after(async () => {
    await Promise.allSettled(opened.map((client) => client.close()));
    await harness.close();
  });

  it("the legacy SDK client initializes, calls tools and sees only its own notes", async () => {
    const alice = await v1Client(`${harness.url}/mcp`, await harness.token("alice"));
    const bob = await v1Client(`${harness.url}/mcp`, await harness.token("bob"));
    opened.push(alice.client, bob.client);

    // The client holds the gateway's id, never the upstream's.
    assert.match(alice.transport.sessionId ?? "", /^[A-Za-z0-9_-]{32,}$/);
    const tools = await alice.client.listTools();
    assert.ok(tools.tools.some((tool) => tool.name === "add_note"));

    await alice.client.callTool({ name: "add_note", arguments: { text: "alice's secret" } });
    assert.match(
      textOf(await alice.client.callTool({ name: "list_notes", arguments: {} })),
      /alice's secret/,
    );
    assert.doesNotMatch(textOf(await bob.client.callTool({ name: "list_notes", arguments: {} })), /alice/);

    const who = JSON.parse(textOf(await alice.client.callTool({ name: "whoami", arguments: {} })));
    assert.equal(who.sub, "alice");
    assert.equal(who.tenant, "t-alice");
  });

  it("progress notifications and log messages arrive on the request's SSE stream", async () => {
    const { client } = await v1Client(`${harness.url}/mcp`, await harness.token("carol"));
    opened.push(client);
    const progress: number[] = [];
    const result = await client.callTool(
      { name: "count_slowly", arguments: { steps: 3, delayMs: 10 } },
      undefined,
      { onprogress: (update) => progress.push(update.progress) },
    );
    assert.equal(textOf(result), "done 3");
    assert.deepEqual(progress, [1, 2, 3]);
  });

  it("DELETE ends the session at the gateway: the id is then unknown, for its owner too", async () => {
    const token = await harness.token("dave");
    const { client, transport } = await v1Client(`${harness.url}/mcp`, token);
    const sessionId = transport.sessionId ?? "";
    await transport.terminateSession();
    await client.close();
    const response = await fetch(`${harness.url}/mcp`, {
      method: "POST",
      headers: mcpHeaders({
        authorization: `Bearer ${token}`,
        "mcp-session-id": sessionId,
        "mcp-protocol-version": "2025-11-25",
      }),
      body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
    });
    assert.equal(response.status, 404);
    const body = (await response.json()) as { error: { data: { code: string } } };
    assert.equal(body.error.data.code, "ERR_SESSION_NOT_FOUND");
  });

  it("M2 the v2 client probes with a modern request, gets -32022, falls back to initialize and works", async () => {
    const token = await harness.token("erin");
    const transport = new V2Transport(new URL(`${harness.url}/mcp`), {
      requestInit: { headers: { authorization: `Bearer ${token}` } },
    });
    // "auto" probes with server/discover first (the default mode, "legacy", would not probe).
    const client = new V2Client(
      { name: "e2e-v2", version: "1.0.0" },
      { versionNegotiation: { mode: "auto" } },
    );
    await client.connect(transport);
    opened.push(client);
    await client.callTool({ name: "add_note", arguments: { text: "from v2" } });
    assert.match(textOf(await client.callTool({ name: "list_notes", arguments: {} })), /from v2/);
    assert.ok(
      harness.events.some((event) => event.type === "request.refused" && event.reason === "protocol-version"),
      "the modern probe was refused with -32022 and audited",
    );
  });
});

describe("protocol versions the gateway does not serve", () => {
  let harness: Harness;
  before(async () => {
    harness = await startHarness();
  });
  after(async () => {
    await harness.close();
  });

  for (const version of ["2026-07-28", "2099-01-01", "not-a-version"]) {
    it(`M2 ${version} gets 400 -32022 listing the supported versions, with the request's id`, async () => {
      const response = await fetch(`${harness.url}/mcp`, {
        method: "POST",
        headers: mcpHeaders({
          authorization: `Bearer ${await harness.token("alice")}`,
          "mcp-protocol-version": version,
        }),
        body: JSON.stringify({ jsonrpc: "2.0", id: 41, method: "server/discover", params: {} }),
      });
      assert.equal(response.status, 400);
      const body = (await response.json()) as {
        id: unknown;
        error: { code: number; data: { supported: string[]; requested: string } };
      };
      assert.equal(body.id, 41);
      assert.equal(body.error.code, -32022);
      assert.deepEqual(body.error.data.supported, ["2025-11-25", "2025-06-18", "2025-03-26"]);
      assert.equal(body.error.data.requested, version === "not-a-version" ? "" : version);
    });
  }
});

describe("a principal reads its own session's metadata", () => {
  let harness: Harness;
  before(async () => {
    harness = await startHarness();
  });
  after(async () => {
    await harness.close();
  });

  it("GET /.tenantgate/session/<path> shows created and expires to the owner only, never an id", async () => {
    const alice = await harness.token("alice");
    const bob = await harness.token("bob");
    const sessionId = await initializeSession(`${harness.url}/mcp`, alice);
    const info = (token: string | undefined, id: string) =>
      fetch(`${harness.url}/.tenantgate/session/mcp`, {
        headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), "mcp-session-id": id },
      });
    const own = await info(alice, sessionId);
    assert.equal(own.status, 200);
    const text = await own.text();
    const body = JSON.parse(text) as Record<string, string>;
    assert.deepEqual(Object.keys(body).sort(), ["createdAt", "expiresAt", "protocolVersion", "upstream"]);
    assert.equal(body["upstream"], "notes");
    assert.ok(Date.parse(body["expiresAt"] ?? "") > Date.parse(body["createdAt"] ?? ""));
    assert.ok(!text.includes(sessionId), "the id never appears");

    const foreign = await info(bob, sessionId);
    const unknown = await info(bob, "A".repeat(32));
    assert.equal(foreign.status, 404);
    assert.equal(await foreign.text(), await unknown.text());
    assert.equal((await info(undefined, sessionId)).status, 401);
  });
});
