/**
 * stdio upstreams through the gateway (issue 6), with the official SDK client over real HTTP: one
 * process per session, started for the session's owner with an environment built from nothing and
 * that owner's own vault entries (THREATS C1, C4), on every store backend; and
 * `@modelcontextprotocol/server-everything` in stdio mode. A session ended by an operator's revoke, a
 * principal's revoke, the kill switch or `evict-oldest` ends its process at once (THREATS S4, S13).
 */
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { KILL_SWITCH_CONFIRMATION } from "../../src/gateway/admin-server.ts";
import {
  assertCredentialRequired,
  type Harness,
  INITIALIZE,
  mcpHeaders,
  startHarness,
  TEST_ISSUER,
} from "../support/gateway-harness.ts";
import { alive, eventually } from "../support/process-watch.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const PROBE = new URL("../support/stdio-probe-server.ts", import.meta.url).pathname;
const EVERYTHING = join(
  dirname(createRequire(import.meta.url).resolve("@modelcontextprotocol/server-everything/package.json")),
  "dist/index.js",
);
const DEMO_STDIO = new URL("../../examples/demo-upstream/stdio.ts", import.meta.url).pathname;
const CANARY = "stdio-canary-3f9a1c7e";
const ALLOWED_ENV = ["GITHUB_TOKEN", "HOME", "LANG", "MODE", "PATH", "TEMP", "TMP", "TMPDIR"];

function textOf(result: unknown): string {
  const content = (result as { content?: Array<{ type: string; text?: string }> }).content ?? [];
  return content.map((part) => part.text ?? "").join("");
}

async function connect(url: string, token: string): Promise<Client> {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
  });
  const client = new Client({ name: "e2e-stdio", version: "1.0.0" });
  await client.connect(transport);
  return client;
}

async function tool(
  client: Client,
  name: string,
  args: Record<string, unknown> = {},
): Promise<Record<string, unknown>> {
  return JSON.parse(textOf(await client.callTool({ name, arguments: args }))) as Record<string, unknown>;
}

function enroll(harness: Harness, token: string, value: string): Promise<Response> {
  return fetch(`${harness.url}/.tenantgate/vault/probe/github_token`, {
    method: "PUT",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ value }),
  });
}

/** Generous: the process is signalled at once; this only bounds a slow machine. */
const EXIT_BOUND_MS = 10_000;

function exits(pid: number, what: string): Promise<void> {
  return eventually(() => !alive(pid), `${what}: pid ${pid} to exit`, EXIT_BOUND_MS);
}

async function admin(harness: Harness, path: string, body: unknown): Promise<unknown> {
  assert.ok(harness.gateway.adminUrl);
  const response = await fetch(new URL(path, harness.gateway.adminUrl), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, `${path}: ${response.status}`);
  return response.json();
}

for (const backend of await storeBackendCases("stdio-e2e")) {
  describe(`stdio upstreams through the gateway on ${backend.name}`, { skip: backend.skip }, () => {
    let harness: Harness;
    let cleanup: () => Promise<void>;
    const clients: Client[] = [];
    const probeUrl = () => `${harness.url}/probe`;
    /** A token for the upstream at `path` (RFC 8707: each upstream is its own audience). */
    const token = (subject: string, path = "/probe") =>
      harness.token(subject, { audience: `${harness.gateway.config.publicUrl}${path}` });

    before(async () => {
      // In the gateway's own environment: a child must never see it.
      process.env["STDIO_CANARY"] = CANARY;
      const store = await backend.open();
      cleanup = store.cleanup;
      harness = await startHarness({
        store: store.url,
        extra: {
          upstreams: [
            {
              name: "probe",
              path: "/probe",
              command: process.execPath,
              args: [PROBE],
              env: { GITHUB_TOKEN: "vault:github_token", MODE: "probe" },
              stdio: { maxProcessesPerPrincipal: 2, startTimeout: "20s" },
            },
            {
              name: "everything",
              path: "/everything",
              command: process.execPath,
              args: [EVERYTHING, "stdio"],
            },
            { name: "demo", path: "/demo", command: process.execPath, args: [DEMO_STDIO] },
          ],
        },
      });
    });
    after(async () => {
      for (const client of clients) await client.close().catch(() => undefined);
      await harness?.close();
      await cleanup?.();
      delete process.env["STDIO_CANARY"];
    });

    it("C4 each session's process has only its owner's credential, an explicit environment and its own 0700 directories", async () => {
      const [aliceToken, bobToken] = [await token("alice"), await token("bob")];
      assert.equal((await enroll(harness, aliceToken, "ghp_alice_stdio_secret")).status, 201);
      assert.equal((await enroll(harness, bobToken, "ghp_bob_stdio_secret")).status, 201);
      const alice = await connect(probeUrl(), aliceToken);
      const bob = await connect(probeUrl(), bobToken);
      clients.push(alice, bob);
      const [aliceEnv, bobEnv] = [await tool(alice, "env"), await tool(bob, "env")];
      assert.equal(aliceEnv["GITHUB_TOKEN"], "ghp_alice_stdio_secret");
      assert.equal(bobEnv["GITHUB_TOKEN"], "ghp_bob_stdio_secret");
      for (const env of [aliceEnv, bobEnv]) {
        assert.deepEqual(Object.keys(env).sort(), ALLOWED_ENV);
        assert.ok(!JSON.stringify(env).includes(CANARY), "nothing of the gateway's environment");
      }
      const [aliceSelf, bobSelf] = [await tool(alice, "whoami"), await tool(bob, "whoami")];
      for (const field of ["home", "tmpdir", "cwd"]) assert.notEqual(aliceSelf[field], bobSelf[field], field);
      for (const self of [aliceSelf, bobSelf]) {
        assert.deepEqual(self["modes"], { home: "700", tmpdir: "700", cwd: "700" });
      }
    });

    it("C1 a principal without the entry for a command upstream gets ERR_CREDENTIAL_REQUIRED naming it", async () => {
      const carol = await token("carol");
      const response = await fetch(probeUrl(), {
        method: "POST",
        headers: mcpHeaders({ authorization: `Bearer ${carol}` }),
        body: JSON.stringify(INITIALIZE),
      });
      await assertCredentialRequired(response, "github_token");
    });

    it("a crash ends only that session; the per-principal process cap holds", async () => {
      const daveToken = await token("dave");
      const erinToken = await token("erin");
      assert.equal((await enroll(harness, daveToken, "ghp_dave")).status, 201);
      assert.equal((await enroll(harness, erinToken, "ghp_erin")).status, 201);
      const dave = await connect(probeUrl(), daveToken);
      const erin = await connect(probeUrl(), erinToken);
      clients.push(dave, erin);
      await dave.callTool({ name: "crash", arguments: {} }).catch(() => undefined);
      await assert.rejects(tool(dave, "whoami"), "the crashed session is gone");
      assert.equal((await tool(erin, "env"))["GITHUB_TOKEN"], "ghp_erin");
      // Two processes per principal: Erin has one; a second is admitted, a third is refused.
      const second = await connect(probeUrl(), erinToken);
      clients.push(second);
      await assert.rejects(connect(probeUrl(), erinToken), /429|too many/i);
    });

    it("the demo's stdio notes server: each session's process keeps its notes to itself", async () => {
      const alice = await connect(`${harness.url}/demo`, await token("grace", "/demo"));
      const bob = await connect(`${harness.url}/demo`, await token("heidi", "/demo"));
      clients.push(alice, bob);
      assert.match(
        textOf(await alice.callTool({ name: "add_note", arguments: { text: "grace's secret note" } })),
        /stored note 1/,
      );
      assert.equal(
        textOf(await alice.callTool({ name: "list_notes", arguments: {} })),
        "grace's secret note",
      );
      assert.equal(
        textOf(await bob.callTool({ name: "list_notes", arguments: {} })),
        "",
        "another principal's process",
      );
      // A new session is a new process with a fresh home: nothing of the last one is left in it.
      const again = await connect(`${harness.url}/demo`, await token("grace", "/demo"));
      clients.push(again);
      assert.equal(textOf(await again.callTool({ name: "list_notes", arguments: {} })), "");
      const [first, second] = [
        JSON.parse(textOf(await alice.callTool({ name: "where_am_i", arguments: {} }))) as { home: string },
        JSON.parse(textOf(await again.callTool({ name: "where_am_i", arguments: {} }))) as { home: string },
      ];
      assert.notEqual(first.home, second.home);
    });

    it("server-everything in stdio mode answers the official SDK client through the gateway", async () => {
      const client = await connect(`${harness.url}/everything`, await token("frank", "/everything"));
      clients.push(client);
      const { tools } = await client.listTools();
      assert.ok(
        tools.some((entry) => entry.name === "echo"),
        tools.map((entry) => entry.name).join(", "),
      );
      const echoed = await client.callTool({ name: "echo", arguments: { message: "hello stdio" } });
      assert.match(textOf(echoed), /hello stdio/);
    });
  });

  describe(`stdio processes of ended sessions on ${backend.name}`, { skip: backend.skip }, () => {
    let harness: Harness;
    let cleanup: () => Promise<void>;
    const clients: Client[] = [];
    const probeUrl = () => `${harness.url}/probe`;
    const token = (subject: string) =>
      harness.token(subject, { audience: `${harness.gateway.config.publicUrl}/probe` });
    const principalOf = (subject: string) => ({ issuer: TEST_ISSUER, subject, tenant: `t-${subject}` });

    /** A session of `subject` through the gateway, and the pid of its process. */
    async function session(subject: string): Promise<{ client: Client; pid: number }> {
      const client = await connect(probeUrl(), await token(subject));
      clients.push(client);
      return { client, pid: (await tool(client, "whoami"))["pid"] as number };
    }

    /** Still running, and still answering its own client through the gateway. */
    async function serving(entry: { client: Client; pid: number }): Promise<void> {
      assert.ok(alive(entry.pid), `pid ${entry.pid} runs`);
      assert.equal((await tool(entry.client, "whoami"))["pid"], entry.pid);
    }

    async function digestsOf(subject: string): Promise<string[]> {
      const listed = (await admin(harness, "/admin/sessions/list", { principal: principalOf(subject) })) as {
        sessions: Array<{ session: string }>;
      };
      return listed.sessions.map((entry) => entry.session);
    }

    before(async () => {
      const store = await backend.open();
      cleanup = store.cleanup;
      harness = await startHarness({
        store: store.url,
        extra: {
          sessions: { maxPerPrincipal: 2, onLimit: "evict-oldest" },
          upstreams: [
            {
              name: "probe",
              path: "/probe",
              command: process.execPath,
              args: [PROBE],
              stdio: { maxProcessesPerPrincipal: 4, startTimeout: "20s" },
            },
          ],
        },
      });
    });
    after(async () => {
      for (const client of clients) await client.close().catch(() => undefined);
      await harness?.close();
      await cleanup?.();
    });

    it("S4 an admin revoke of one session ends its process at once; the principal's other session and another's keep answering", async () => {
      const revoked = await session("ivan");
      const [digest] = await digestsOf("ivan");
      assert.ok(digest);
      const sibling = await session("ivan");
      const stranger = await session("judy");
      assert.deepEqual(await admin(harness, "/admin/sessions/revoke", { session: digest }), {
        sessions: 1,
        tasks: 0,
      });
      await exits(revoked.pid, "the revoked session's process");
      await serving(sibling);
      await serving(stranger);
    });

    it("S4 a principal revoke ends every process of that principal at once; another principal's keeps answering", async () => {
      const first = await session("mallory");
      const second = await session("mallory");
      const stranger = await session("niaj");
      await admin(harness, "/admin/sessions/revoke", { principal: principalOf("mallory") });
      await exits(first.pid, "the revoked principal's first process");
      await exits(second.pid, "the revoked principal's second process");
      await serving(stranger);
      // Revoking ends what exists; the principal may initialize again (its token is still valid).
      await serving(await session("mallory"));
    });

    it("evict-oldest ends the evicted session's process at once; the sessions kept keep answering", async () => {
      const oldest = await session("olivia");
      const middle = await session("olivia");
      const stranger = await session("peggy");
      const newest = await session("olivia");
      await exits(oldest.pid, "the evicted session's process");
      await serving(middle);
      await serving(newest);
      await serving(stranger);
    });

    it("S4 the kill switch ends every process at once; a session made after it keeps its process", async () => {
      const older = [await session("rupert"), await session("sybil")];
      await admin(harness, "/admin/kill-switch", { confirm: KILL_SWITCH_CONFIRMATION });
      for (const entry of older) await exits(entry.pid, "a process of a session older than the kill switch");
      const fresh = await session("rupert");
      const other = await session("trent");
      await new Promise((resolve) => setTimeout(resolve, 500));
      await serving(fresh);
      await serving(other);
    });
  });
}
