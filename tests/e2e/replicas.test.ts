/**
 * Two gateway processes (`tenantgate serve`) sharing one store, in front of one demo upstream: the
 * deployment DESIGN's "on every replica" rules are about. Both replicas run the same config apart
 * from the port: the same master key (so the same assertion keys, session seals and event-id keys),
 * the same store, and one publicUrl (so token audiences and the assertion issuer agree whichever
 * replica a request reaches). Run once on Redis and once on PostgreSQL; each backend skips when
 * absent locally and fails under CI=true (tests/support/backends.ts).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import pg from "pg";
import { type DemoUpstream, startDemoUpstream } from "../../examples/demo-upstream/server.ts";
import { type Backend, postgresBackend, redisBackend } from "../support/backends.ts";
import { INITIALIZE, mcpHeaders, TEST_ISSUER } from "../support/gateway-harness.ts";
import { freePort, type GatewayProcess, spawnGateway } from "../support/processes.ts";
import {
  makeSigningKey,
  nowSeconds,
  type SigningKey,
  signToken,
  writeJwksFile,
} from "../support/token-issuer.ts";

/** Not resolvable, and it need not be: clients reach the replicas by address, tokens name this. */
const PUBLIC_URL = "http://gateway.test";
const MASTER_KEY_VARIABLE = "TG_REPLICAS_MASTER_KEY";
const PROTOCOL_VERSION = "2025-11-25";

const redis = await redisBackend();
const postgres = await postgresBackend();

interface RpcAnswer {
  readonly status: number;
  readonly headers: Headers;
  /** JSON-RPC messages of the body (one JSON body, or every `data:` of an SSE body). */
  readonly messages: ReadonlyArray<Record<string, unknown>>;
  readonly text: string;
}

function parseMessages(contentType: string, text: string): Array<Record<string, unknown>> {
  if (text.trim() === "") return [];
  if (contentType.includes("text/event-stream")) {
    return text
      .split(/\r?\n\r?\n/)
      .map((event) =>
        event
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).trimStart())
          .join("\n"),
      )
      .filter((data) => data !== "")
      .map((data) => JSON.parse(data) as Record<string, unknown>);
  }
  return [JSON.parse(text) as Record<string, unknown>];
}

async function rpc(
  replica: GatewayProcess,
  token: string,
  sessionId: string,
  body: Record<string, unknown>,
  method = "POST",
): Promise<RpcAnswer> {
  const response = await fetch(`${replica.url}/mcp`, {
    method,
    headers: mcpHeaders({
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": PROTOCOL_VERSION,
    }),
    ...(method === "POST" ? { body: JSON.stringify(body) } : {}),
  });
  const text = await response.text();
  return {
    status: response.status,
    headers: response.headers,
    messages: parseMessages(response.headers.get("content-type") ?? "", text),
    text,
  };
}

let nextId = 100;
function callTool(name: string, args: Record<string, unknown>): Record<string, unknown> {
  return { jsonrpc: "2.0", id: nextId++, method: "tools/call", params: { name, arguments: args } };
}

function toolText(answer: RpcAnswer): string {
  const result = answer.messages.find((message) => "result" in message)?.["result"] as
    | { content?: Array<{ text?: string }> }
    | undefined;
  assert.ok(result, `expected a tools/call result, got ${answer.status} ${answer.text}`);
  return (result.content ?? []).map((part) => part.text ?? "").join("");
}

/** The body with the echoed JSON-RPC id removed, for "same answer as an unknown id" comparisons. */
function withoutId(text: string): unknown {
  const { id: _id, ...rest } = JSON.parse(text) as Record<string, unknown>;
  return rest;
}

interface StoreFixture {
  readonly url: string;
  cleanup(): Promise<void>;
}

function redisStore(backend: Backend): StoreFixture {
  // Per-file prefix, as in tests/store/redis-store.test.ts: parallel runs never meet.
  const prefix = `tgtest:${process.pid}:${randomBytes(8).toString("hex")}:`;
  const url = new URL(backend.url);
  url.search = "";
  url.searchParams.set("prefix", prefix);
  return {
    url: url.toString(),
    async cleanup() {
      const client = new Redis(backend.url, { maxRetriesPerRequest: 1, connectTimeout: 5_000 });
      try {
        let cursor = "0";
        do {
          const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1_000);
          if (keys.length > 0) await client.unlink(...keys);
          cursor = next;
        } while (cursor !== "0");
      } finally {
        await client.quit();
      }
    },
  };
}

function postgresStore(backend: Backend): StoreFixture {
  // Per-file schema, as in tests/store/postgres-store.test.ts; CI drops stale `tgtest_%` schemas.
  const schema = `tgtest_${process.pid}_${randomBytes(6).toString("hex")}`;
  const url = new URL(backend.url);
  url.search = "";
  url.searchParams.set("schema", schema);
  url.searchParams.set("poolSize", "4");
  return {
    url: url.toString(),
    async cleanup() {
      const client = new pg.Client({ connectionString: backend.url, connectionTimeoutMillis: 5_000 });
      await client.connect();
      try {
        await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      } finally {
        await client.end();
      }
    },
  };
}

/** A GET stream on `replica`; `ended` resolves when the gateway ends it. */
async function openStream(
  replica: GatewayProcess,
  token: string,
  sessionId: string,
): Promise<{ status: number; ended: Promise<void>; abort(): void }> {
  const controller = new AbortController();
  const response = await fetch(`${replica.url}/mcp`, {
    method: "GET",
    headers: {
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": PROTOCOL_VERSION,
      accept: "text/event-stream",
    },
    signal: controller.signal,
  });
  if (response.status !== 200) {
    await response.arrayBuffer();
    return { status: response.status, ended: Promise.resolve(), abort: () => undefined };
  }
  const reader = response.body?.getReader();
  const ended = (async () => {
    try {
      while (reader && !(await reader.read()).done) {
        // read until the gateway ends the stream
      }
    } catch {
      // a reset or an abort is an end too
    }
  })();
  return { status: response.status, ended, abort: () => controller.abort() };
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    promise,
    new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)),
  ]);
}

async function admin(replica: GatewayProcess, path: string, body: unknown): Promise<Record<string, unknown>> {
  const response = await fetch(`${replica.adminUrl}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200);
  return (await response.json()) as Record<string, unknown>;
}

function describeReplicas(label: string, backend: Backend, makeStore: (backend: Backend) => StoreFixture) {
  describe(`two gateway replicas sharing ${label}`, { skip: backend.skip }, () => {
    let store: StoreFixture | undefined;
    let demo: DemoUpstream | undefined;
    let jwks: { path: string; cleanup(): Promise<void> } | undefined;
    let key: SigningKey;
    let replica1: GatewayProcess;
    let replica2: GatewayProcess;
    const started: GatewayProcess[] = [];

    const token = (subject: string, tenant = `t-${subject}`) =>
      signToken(key, {
        iss: TEST_ISSUER,
        sub: subject,
        aud: `${PUBLIC_URL}/mcp`,
        tenant,
        iat: nowSeconds(),
        exp: nowSeconds() + 600,
      });

    /** Initializes a session with raw HTTP at `replica`; returns the gateway's session id. */
    async function initialize(replica: GatewayProcess, bearer: string): Promise<string> {
      const response = await fetch(`${replica.url}/mcp`, {
        method: "POST",
        headers: mcpHeaders({ authorization: `Bearer ${bearer}` }),
        body: JSON.stringify(INITIALIZE),
      });
      const text = await response.text();
      const sessionId = response.headers.get("mcp-session-id");
      assert.equal(response.status, 200, text);
      assert.ok(sessionId, "initialize answered without Mcp-Session-Id");
      const initialized = await rpc(replica, bearer, sessionId, {
        jsonrpc: "2.0",
        method: "notifications/initialized",
      });
      assert.equal(initialized.status, 202, initialized.text);
      return sessionId;
    }

    before(async () => {
      key = await makeSigningKey("EdDSA", "main");
      jwks = await writeJwksFile({ keys: [key.publicJwk] });
      store = makeStore(backend);
      demo = await startDemoUpstream({});
      const ports = [await freePort(), await freePort()];
      const configFor = (port: number) => ({
        publicUrl: PUBLIC_URL,
        // Both replicas accept both addresses: the same config apart from the port.
        listen: { host: "127.0.0.1", port, allowedHosts: ports.map((p) => `127.0.0.1:${p}`) },
        store: store?.url,
        secrets: { masterKey: `env:${MASTER_KEY_VARIABLE}` },
        auth: {
          issuers: [
            { issuer: TEST_ISSUER, jwksFile: jwks?.path, algorithms: ["EdDSA"], tenantClaim: "tenant" },
          ],
        },
        upstreams: [
          {
            name: "notes",
            path: "/mcp",
            url: demo?.url,
            protocolVersions: ["2025-03-26", "2025-06-18", "2025-11-25"],
          },
        ],
        audit: { stdout: true },
        admin: { listen: { port: 0 } },
        // Stream caps held across both processes through the store's leases.
        limits: { scope: "cluster", streams: { perPrincipal: 2 } },
      });
      const env = { [MASTER_KEY_VARIABLE]: randomBytes(32).toString("base64url") };
      // Started together: both open (and on PostgreSQL migrate) the one shared store at once.
      const spawned = await Promise.allSettled(
        ports.map((port) => spawnGateway({ config: configFor(port), env })),
      );
      for (const result of spawned) if (result.status === "fulfilled") started.push(result.value);
      const failed = spawned.find((result) => result.status === "rejected");
      if (failed) throw failed.reason;
      [replica1, replica2] = started as [GatewayProcess, GatewayProcess];
      // Replica 2's published keys verify what replica 1 signs: one master key, one key set.
      demo.trustGateway({ issuer: PUBLIC_URL, jwksUrl: `${replica2.url}/.well-known/jwks.json` });
    });

    after(async () => {
      await Promise.allSettled(started.map((replica) => replica.close()));
      await demo?.close();
      await jwks?.cleanup();
      await store?.cleanup();
    });

    it("both replicas publish the same assertion keys", async () => {
      const [one, two] = await Promise.all(
        [replica1, replica2].map(async (replica) => {
          const response = await fetch(`${replica.url}/.well-known/jwks.json`);
          assert.equal(response.status, 200);
          return (await response.json()) as { keys: unknown[] };
        }),
      );
      assert.ok((one?.keys.length ?? 0) > 0);
      assert.deepEqual(one, two);
    });

    it("a session created through replica 1 is served through replica 2", async () => {
      const alice = await token("alice");
      const sessionId = await initialize(replica1, alice);

      const added = await rpc(
        replica2,
        alice,
        sessionId,
        callTool("add_note", { text: "written via replica 2" }),
      );
      assert.equal(added.status, 200, added.text);
      toolText(added);
      const listed = await rpc(replica2, alice, sessionId, callTool("list_notes", {}));
      assert.equal(listed.status, 200, listed.text);
      assert.match(toolText(listed), /written via replica 2/);
      // And back on replica 1: one session, whichever replica answers.
      assert.match(toolText(await rpc(replica1, alice, sessionId, callTool("list_notes", {}))), /replica 2/);
    });

    it("S1 replicas: another principal presenting a session made at replica 1 gets, at replica 2, what an unknown id gets", async () => {
      const alice = await token("alice");
      const sessionId = await initialize(replica1, alice);
      const strangers = [await token("bob"), await token("alice", "t-other")];
      const unknown = await rpc(replica2, await token("bob"), randomBytes(32).toString("base64url"), {
        ...callTool("list_notes", {}),
        id: 7,
      });
      assert.equal(unknown.status, 404, unknown.text);

      for (const stranger of strangers) {
        const denied = await rpc(replica2, stranger, sessionId, { ...callTool("list_notes", {}), id: 7 });
        assert.equal(denied.status, 404, denied.text);
        assert.equal(denied.headers.get("mcp-session-id"), null);
        assert.deepEqual(withoutId(denied.text), withoutId(unknown.text));
      }
      assert.ok(
        replica2.events.some(
          (event) => event["type"] === "session.denied" && event["reason"] === "foreign-principal",
        ),
        `replica 2 audited the foreign presentation: ${JSON.stringify(replica2.events.slice(-5))}`,
      );
      // The owner's session is untouched by the refusals.
      const owner = await rpc(replica2, alice, sessionId, callTool("list_notes", {}));
      assert.equal(owner.status, 200, owner.text);
    });

    it("S13 replicas: revoked through replica 1's admin API, a session's stream open at replica 2 ends at once", async () => {
      const dave = await token("dave");
      const sessionId = await initialize(replica1, dave);
      const stream = await openStream(replica2, dave, sessionId);
      assert.equal(stream.status, 200);
      const listed = await admin(replica1, "/admin/sessions/list", {
        principal: { issuer: TEST_ISSUER, subject: "dave", tenant: "t-dave" },
      });
      const [only] = listed["sessions"] as Array<{ session: string }>;
      assert.ok(only);
      assert.deepEqual(await admin(replica1, "/admin/sessions/revoke", { session: only.session }), {
        sessions: 1,
        tasks: 0,
      });
      await within(stream.ended, 5_000, "the stream at replica 2 ending");
      assert.equal((await rpc(replica2, dave, sessionId, callTool("list_notes", {}))).status, 404);
    });

    it("S13 replicas: the kill switch through replica 2's admin API ends a stream open at replica 1", async () => {
      const erin = await token("erin");
      const sessionId = await initialize(replica2, erin);
      const stream = await openStream(replica1, erin, sessionId);
      assert.equal(stream.status, 200);
      assert.deepEqual(await admin(replica2, "/admin/kill-switch", { confirm: "end-every-session" }), {
        done: true,
      });
      await within(stream.ended, 5_000, "the stream at replica 1 ending");
      assert.equal((await rpc(replica1, erin, sessionId, callTool("list_notes", {}))).status, 404);
      // Every client initializes again, and that works at once.
      const fresh = await initialize(replica1, erin);
      assert.equal((await rpc(replica2, erin, fresh, callTool("list_notes", {}))).status, 200);
    });

    it("L1 replicas: the per-principal stream cap holds across both processes under concurrent connects", async () => {
      const frank = await token("frank");
      const sessions = await Promise.all([
        initialize(replica1, frank),
        initialize(replica1, frank),
        initialize(replica2, frank),
        initialize(replica2, frank),
      ]);
      const streams = await Promise.all(
        sessions.map((sessionId, index) => openStream(index < 2 ? replica1 : replica2, frank, sessionId)),
      );
      assert.equal(streams.filter((stream) => stream.status === 200).length, 2);
      assert.equal(streams.filter((stream) => stream.status === 429).length, 2);
      for (const stream of streams) stream.abort();
      // The slots come back cluster-wide once the clients leave.
      const deadline = Date.now() + 10_000;
      let again = await Promise.all(
        sessions.slice(2).map((sessionId) => openStream(replica2, frank, sessionId)),
      );
      while (again.some((stream) => stream.status !== 200) && Date.now() < deadline) {
        for (const stream of again) stream.abort();
        await new Promise((resolve) => setTimeout(resolve, 100));
        again = await Promise.all(
          sessions.slice(2).map((sessionId) => openStream(replica2, frank, sessionId)),
        );
      }
      assert.deepEqual(
        again.map((stream) => stream.status),
        [200, 200],
      );
      for (const stream of again) stream.abort();
    });

    it("S4 replicas: a session DELETEd through replica 1 is gone at replica 2", async () => {
      const carol = await token("carol");
      const sessionId = await initialize(replica1, carol);
      assert.equal((await rpc(replica2, carol, sessionId, callTool("list_notes", {}))).status, 200);

      const deleted = await rpc(replica1, carol, sessionId, {}, "DELETE");
      assert.equal(deleted.status, 200, deleted.text);

      const afterDelete = await rpc(replica2, carol, sessionId, callTool("list_notes", {}));
      assert.equal(afterDelete.status, 404, afterDelete.text);
      const body = JSON.parse(afterDelete.text) as { error?: { data?: { code?: string } } };
      assert.equal(body.error?.data?.code, "ERR_SESSION_NOT_FOUND");
      assert.equal((await rpc(replica1, carol, sessionId, callTool("list_notes", {}))).status, 404);
      assert.equal((await rpc(replica2, carol, sessionId, {}, "DELETE")).status, 404);
    });
  });
}

describeReplicas("Redis", redis, redisStore);
describeReplicas("PostgreSQL", postgres, postgresStore);
