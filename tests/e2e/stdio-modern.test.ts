/**
 * stdio upstreams serving modern (2026-07-28) requests through the gateway, `stdio.modern:
 * "per-principal"`, with the official v2 client SDK (`versionNegotiation: auto`) over real HTTP on
 * every store backend: one process per principal, initialized by the gateway's bridge, reused by that
 * principal's every request and connection, never reached by anyone else (THREATS C1, C4). The demo's
 * notes server and `@modelcontextprotocol/server-everything` run in stdio mode behind it too.
 */
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { assertCredentialRequired, type Harness, startHarness } from "../support/gateway-harness.ts";
import { alive, eventually } from "../support/process-watch.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const PROBE = new URL("../support/stdio-probe-server.ts", import.meta.url).pathname;
const EVERYTHING = join(
  dirname(createRequire(import.meta.url).resolve("@modelcontextprotocol/server-everything/package.json")),
  "dist/index.js",
);
const DEMO_STDIO = new URL("../../examples/demo-upstream/stdio.ts", import.meta.url).pathname;
const CANARY = "stdio-modern-canary-5d1e";

interface Connected {
  readonly client: Client;
  /** Every HTTP answer the client got: none may name a session. */
  readonly sessionHeaders: (string | null)[];
}

function textOf(result: unknown): string {
  const content = (result as { content?: Array<{ type: string; text?: string }> }).content ?? [];
  return content.map((part) => part.text ?? "").join("");
}

async function tool(
  connected: Connected,
  name: string,
  args: Record<string, unknown> = {},
): Promise<Record<string, unknown>> {
  const result = await connected.client.callTool({ name, arguments: args });
  return JSON.parse(textOf(result)) as Record<string, unknown>;
}

for (const backend of await storeBackendCases("stdio-modern-e2e")) {
  describe(`stdio upstreams serving modern requests on ${backend.name}`, { skip: backend.skip }, () => {
    let harness: Harness;
    let cleanup: () => Promise<void>;
    const connections: Connected[] = [];
    const token = (subject: string, path: string) =>
      harness.token(subject, { audience: `${harness.gateway.config.publicUrl}${path}` });

    async function connect(path: string, subject: string): Promise<Connected> {
      const sessionHeaders: (string | null)[] = [];
      const transport = new StreamableHTTPClientTransport(new URL(`${harness.url}${path}`), {
        requestInit: { headers: { authorization: `Bearer ${await token(subject, path)}` } },
        fetch: async (input: string | URL, init?: RequestInit) => {
          const response = await fetch(input, init);
          sessionHeaders.push(response.headers.get("mcp-session-id"));
          return response;
        },
      });
      const client = new Client(
        { name: "stdio-modern-e2e", version: "1.0.0" },
        { versionNegotiation: { mode: "auto" } },
      );
      await client.connect(transport);
      const connected = { client, sessionHeaders };
      connections.push(connected);
      return connected;
    }

    async function enroll(subject: string, value: string): Promise<void> {
      const response = await fetch(`${harness.url}/.tenantgate/vault/probe/github_token`, {
        method: "PUT",
        headers: {
          authorization: `Bearer ${await token(subject, "/probe")}`,
          "content-type": "application/json",
        },
        body: JSON.stringify({ value }),
      });
      assert.ok(response.status === 201 || response.status === 204, `enroll: ${response.status}`);
    }

    before(async () => {
      // In the gateway's own environment: a child must never see it.
      process.env["STDIO_CANARY"] = CANARY;
      const store = await backend.open();
      cleanup = store.cleanup;
      const perPrincipal = { modern: "per-principal", startTimeout: "20s" };
      harness = await startHarness({
        store: store.url,
        extra: {
          upstreams: [
            {
              name: "probe",
              path: "/probe",
              command: process.execPath,
              args: [PROBE],
              env: { GITHUB_TOKEN: "vault:github_token" },
              stdio: perPrincipal,
            },
            {
              name: "demo",
              path: "/demo",
              command: process.execPath,
              args: [DEMO_STDIO],
              stdio: perPrincipal,
            },
            {
              name: "everything",
              path: "/everything",
              command: process.execPath,
              args: [EVERYTHING, "stdio"],
              stdio: perPrincipal,
            },
            { name: "legacy-only", path: "/legacy-only", command: process.execPath, args: [PROBE] },
          ],
        },
      });
    });
    after(async () => {
      for (const { client } of connections) await client.close().catch(() => undefined);
      await harness?.close();
      await cleanup?.();
      delete process.env["STDIO_CANARY"];
    });

    it("C4 each principal's modern requests reach its own process, with only its own credential and nothing of the gateway's, and no session", async () => {
      await enroll("alice", "ghp_alice_modern_secret");
      await enroll("bob", "ghp_bob_modern_secret");
      const alice = await connect("/probe", "alice");
      const bob = await connect("/probe", "bob");
      assert.equal(alice.client.getProtocolEra(), "modern");
      const [aliceEnv, bobEnv] = [await tool(alice, "env"), await tool(bob, "env")];
      assert.equal(aliceEnv["GITHUB_TOKEN"], "ghp_alice_modern_secret");
      assert.equal(bobEnv["GITHUB_TOKEN"], "ghp_bob_modern_secret");
      for (const env of [aliceEnv, bobEnv]) {
        assert.ok(!JSON.stringify(env).includes(CANARY), "nothing of the gateway's environment");
      }
      const [aliceSelf, bobSelf] = [await tool(alice, "whoami"), await tool(bob, "whoami")];
      assert.notEqual(aliceSelf["pid"], bobSelf["pid"]);
      assert.notEqual(aliceSelf["home"], bobSelf["home"]);
      // A second connection of the same principal is served by the same process.
      const aliceAgain = await connect("/probe", "alice");
      assert.equal((await tool(aliceAgain, "whoami"))["pid"], aliceSelf["pid"]);
      for (const { sessionHeaders } of [alice, bob, aliceAgain]) {
        assert.ok(sessionHeaders.length > 0);
        assert.ok(
          sessionHeaders.every((header) => header === null),
          "no Mcp-Session-Id, ever",
        );
      }
    });

    it("C1 enrolling a new value ends the process holding the old one at once; the next request acts with the new", async () => {
      await enroll("judy", "ghp_judy_first");
      const judy = await connect("/probe", "judy");
      const before = (await tool(judy, "whoami"))["pid"] as number;
      await enroll("judy", "ghp_judy_second");
      await eventually(() => !alive(before), "the process with the old value ends");
      assert.equal((await tool(judy, "env"))["GITHUB_TOKEN"], "ghp_judy_second");
    });

    it("progress from the stdio server reaches the v2 client's onprogress over the gateway's SSE answer", async () => {
      await enroll("kim", "ghp_kim");
      const kim = await connect("/probe", "kim");
      const seen: number[] = [];
      const result = await kim.client.callTool(
        { name: "progress", arguments: { steps: 3 } },
        { onprogress: (progress) => seen.push(progress.progress) },
      );
      assert.deepEqual(seen, [1, 2, 3]);
      assert.equal((JSON.parse(textOf(result)) as { steps: number }).steps, 3);
    });

    it("C1 a principal without the entry gets ERR_CREDENTIAL_REQUIRED naming it, on its first modern request", async () => {
      const response = await fetch(`${harness.url}/probe`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${await token("carol", "/probe")}`,
          "content-type": "application/json",
          accept: "application/json, text/event-stream",
          "mcp-protocol-version": "2026-07-28",
          "mcp-method": "server/discover",
        },
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 1,
          method: "server/discover",
          params: {
            _meta: {
              "io.modelcontextprotocol/protocolVersion": "2026-07-28",
              "io.modelcontextprotocol/clientCapabilities": {},
            },
          },
        }),
      });
      await assertCredentialRequired(response, "github_token");
    });

    it("the demo's stdio notes server: a principal's notes follow it across connections, and no one else sees them", async () => {
      const grace = await connect("/demo", "grace");
      const heidi = await connect("/demo", "heidi");
      assert.match(
        textOf(await grace.client.callTool({ name: "add_note", arguments: { text: "grace's secret note" } })),
        /stored note 1/,
      );
      assert.equal(textOf(await heidi.client.callTool({ name: "list_notes", arguments: {} })), "");
      const graceAgain = await connect("/demo", "grace");
      assert.equal(
        textOf(await graceAgain.client.callTool({ name: "list_notes", arguments: {} })),
        "grace's secret note",
      );
    });

    it("server-everything in stdio mode answers the v2 client's modern requests", async () => {
      const frank = await connect("/everything", "frank");
      assert.equal(frank.client.getProtocolEra(), "modern");
      const { tools } = await frank.client.listTools();
      assert.ok(
        tools.some((entry) => entry.name === "echo"),
        tools.map((entry) => entry.name).join(", "),
      );
      assert.match(
        textOf(await frank.client.callTool({ name: "echo", arguments: { message: "hello modern stdio" } })),
        /hello modern stdio/,
      );
    });

    it("a command upstream without the option still falls back to a legacy session", async () => {
      const ivan = await connect("/legacy-only", "ivan");
      assert.equal(ivan.client.getProtocolEra(), "legacy");
      assert.ok(ivan.sessionHeaders.some((header) => header !== null));
    });
  });
}
