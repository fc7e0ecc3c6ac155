/**
 * Revocation that reaches every replica (THREATS S4, S13). Two gateways ("replicas") in this process,
 * each with its own store connection (on memory: one store object, the only way two gateways can
 * share one), the same master key, issuer and publicUrl, in front of one upstream that holds GET
 * streams open. A session, a principal or everything is revoked through replica 1; streams open on
 * replica 2 must end promptly and the ids must be 404 on both. With Redis behind a fault proxy, a
 * notice lost while replica 2's subscriber was cut off is made up for by re-checking its streams once
 * the connection is back.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import type { SecurityEventRecord } from "../../src/audit/security-events.ts";
import { parseConfig } from "../../src/config/load-config.ts";
import { type RunningGateway, startGateway } from "../../src/gateway/start-gateway.ts";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";
import type { Store } from "../../src/store/contract.ts";
import { ownershipKey } from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { openStore } from "../../src/store/open-store.ts";
import { createTaskRegistry } from "../../src/tasks/task-registry.ts";
import { redisBackend } from "../support/backends.ts";
import { FaultProxy } from "../support/fault-proxy.ts";
import { INITIALIZE, mcpHeaders, TEST_ISSUER } from "../support/gateway-harness.ts";
import { freePort } from "../support/processes.ts";
import { type StoreCase, storeBackendCases } from "../support/store-cases.ts";
import { withTestProfile } from "../support/test-profile.ts";
import {
  makeSigningKey,
  nowSeconds,
  type SigningKey,
  signToken,
  writeJwksFile,
} from "../support/token-issuer.ts";

const PUBLIC_URL = "http://gateway.test";
const LEGACY = "2025-11-25";
const MODERN = "2026-07-28";
/** Generous: a notice crosses in milliseconds; this only says "promptly, not at expiry". */
const STREAM_END_MS = 5_000;

/**
 * A legacy upstream that mints session ids and holds GET streams open, and answers a modern POST
 * with an SSE stream it also holds open (a `subscriptions/listen`).
 */
async function startHoldingUpstream(): Promise<{ url: string; close(): Promise<void> }> {
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      if (request.method === "GET") {
        response.writeHead(200, { "content-type": "text/event-stream" });
        response.write(
          `id: e1\ndata: ${JSON.stringify({ jsonrpc: "2.0", method: "notifications/message" })}\n\n`,
        );
        return;
      }
      if (request.method === "DELETE") {
        response.writeHead(200).end();
        return;
      }
      const message = JSON.parse(Buffer.concat(chunks).toString("utf8")) as { id?: number; method: string };
      if (request.headers["mcp-protocol-version"] === MODERN) {
        response.writeHead(200, { "content-type": "text/event-stream" });
        response.write(
          `data: ${JSON.stringify({ jsonrpc: "2.0", method: "notifications/resources/list_changed" })}\n\n`,
        );
        return;
      }
      if (message.id === undefined) {
        response.writeHead(202).end();
        return;
      }
      const headers: Record<string, string> = { "content-type": "application/json" };
      if (message.method === "initialize") headers["mcp-session-id"] = `up-${randomBytes(8).toString("hex")}`;
      else headers["mcp-session-id"] = String(request.headers["mcp-session-id"] ?? "");
      const result =
        message.method === "initialize"
          ? { protocolVersion: LEGACY, capabilities: {}, serverInfo: { name: "holding", version: "1" } }
          : { tools: [] };
      response.writeHead(200, headers).end(JSON.stringify({ jsonrpc: "2.0", id: message.id, result }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

interface Replica {
  readonly gateway: RunningGateway;
  readonly url: string;
  readonly events: SecurityEventRecord[];
}

interface Replicas {
  readonly one: Replica;
  readonly two: Replica;
  /** A store handle of the test's own on the replicas' store (to plant tasks). */
  readonly store: Store;
  token(subject: string): Promise<string>;
  principal(subject: string): Principal;
  close(): Promise<void>;
}

/**
 * Two gateways on one store. `urls` are the store URLs of replica 1 and 2 (the same store; replica
 * 2's may go through a proxy); `shared` is the one memory store both use instead.
 */
async function startReplicas(urls: readonly [string, string], shared?: Store): Promise<Replicas> {
  const key: SigningKey = await makeSigningKey("EdDSA", "main");
  const jwks = await writeJwksFile({ keys: [key.publicJwk] });
  const upstream = await startHoldingUpstream();
  const masterKey = randomBytes(32).toString("base64url");
  const ports = [await freePort(), await freePort()];
  const started: Replica[] = [];
  const testStore = shared ?? (await openStore(urls[0]));
  try {
    for (const [index, port] of ports.entries()) {
      const events: SecurityEventRecord[] = [];
      const config = parseConfig(
        withTestProfile({
          publicUrl: PUBLIC_URL,
          listen: { host: "127.0.0.1", port, allowedHosts: ports.map((p) => `127.0.0.1:${p}`) },
          store: urls[index],
          secrets: { masterKey: "env:TG_REVOCATION_MASTER_KEY" },
          auth: {
            issuers: [
              { issuer: TEST_ISSUER, jwksFile: jwks.path, algorithms: ["EdDSA"], tenantClaim: "tenant" },
            ],
          },
          upstreams: [
            { name: "holding", path: "/mcp", url: upstream.url, protocolVersions: [LEGACY, MODERN] },
          ],
          audit: { stdout: true },
          admin: { listen: { port: 0 } },
        }),
        { env: {} },
      );
      const gateway = await startGateway(config, {
        env: { TG_REVOCATION_MASTER_KEY: masterKey },
        sinks: [{ write: (record) => void events.push(record) }],
        eventsOut: new Writable({ write: (_chunk, _encoding, done) => done() }),
        // Discarded, unless the config names a log file (the bench profile does).
        ...(config.log.file === undefined ? { log: () => undefined } : {}),
        ...(shared ? { store: shared } : {}),
      });
      started.push({ gateway, url: gateway.url, events });
    }
  } catch (error) {
    await Promise.allSettled(started.map((replica) => replica.gateway.close({ graceMs: 0 })));
    // The test's own store connection too: left open, it would keep this file's process alive.
    if (!shared) await testStore.close();
    await upstream.close();
    await jwks.cleanup();
    throw error;
  }
  const [one, two] = started as [Replica, Replica];
  return {
    one,
    two,
    store: testStore,
    token: (subject) =>
      signToken(key, {
        iss: TEST_ISSUER,
        sub: subject,
        aud: `${PUBLIC_URL}/mcp`,
        tenant: `t-${subject}`,
        iat: nowSeconds(),
        exp: nowSeconds() + 600,
      }),
    principal: (subject) =>
      makePrincipal({
        kind: "jwt",
        issuer: TEST_ISSUER,
        subject,
        tenant: `t-${subject}`,
        scopes: [],
        expiresAt: null,
      }),
    async close() {
      await Promise.allSettled([one, two].map((replica) => replica.gateway.close({ graceMs: 500 })));
      if (!shared) await testStore.close();
      await upstream.close();
      await jwks.cleanup();
    },
  };
}

function sessionHeaders(token: string, sessionId: string): Record<string, string> {
  return mcpHeaders({
    authorization: `Bearer ${token}`,
    "mcp-session-id": sessionId,
    "mcp-protocol-version": LEGACY,
  });
}

async function initialize(replica: Replica, token: string): Promise<string> {
  const response = await fetch(`${replica.url}/mcp`, {
    method: "POST",
    headers: mcpHeaders({ authorization: `Bearer ${token}` }),
    body: JSON.stringify(INITIALIZE),
  });
  const text = await response.text();
  const sessionId = response.headers.get("mcp-session-id");
  assert.equal(response.status, 200, text);
  assert.ok(sessionId);
  return sessionId;
}

async function toolsList(replica: Replica, token: string, sessionId: string): Promise<number> {
  const response = await fetch(`${replica.url}/mcp`, {
    method: "POST",
    headers: sessionHeaders(token, sessionId),
    body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
  });
  await response.arrayBuffer();
  return response.status;
}

function digestOf(sessionId: string): string {
  const digest = ownershipKey("session", sessionId).segments[1];
  assert.ok(digest);
  return digest;
}

interface OpenedStream {
  /** Resolves with the time the stream took to end, or rejects if it is still open after `ms`. */
  ended(ms?: number): Promise<number>;
  /** Whether the stream is still open after `ms` (it must not end for an unrelated revocation). */
  stillOpenAfter(ms: number): Promise<boolean>;
  close(): void;
}

async function openStream(
  replica: Replica,
  init: { headers: Record<string, string>; method: string; body?: string },
): Promise<OpenedStream> {
  const abort = new AbortController();
  const response = await fetch(`${replica.url}/mcp`, { ...init, signal: abort.signal });
  assert.equal(response.status, 200, await (response.status === 200 ? "" : response.text()));
  const reader = response.body?.getReader();
  assert.ok(reader);
  // The first event has arrived: the stream is open end to end.
  await reader.read();
  let done = false;
  const finished = (async () => {
    try {
      while (!(await reader.read()).done) {}
    } catch {}
    done = true;
  })();
  return {
    async ended(ms = STREAM_END_MS) {
      const start = Date.now();
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the stream was still open after ${ms} ms`)), ms);
      });
      try {
        await Promise.race([finished, timeout]);
      } finally {
        clearTimeout(timer);
      }
      return Date.now() - start;
    },
    async stillOpenAfter(ms) {
      await new Promise((resolve) => setTimeout(resolve, ms));
      return !done;
    },
    close: () => abort.abort(),
  };
}

function openGetStream(replica: Replica, token: string, sessionId: string): Promise<OpenedStream> {
  return openStream(replica, {
    method: "GET",
    headers: { ...sessionHeaders(token, sessionId), accept: "text/event-stream" },
  });
}

function openModernListen(replica: Replica, token: string): Promise<OpenedStream> {
  return openStream(replica, {
    method: "POST",
    headers: mcpHeaders({
      authorization: `Bearer ${token}`,
      "mcp-protocol-version": MODERN,
      "mcp-method": "subscriptions/listen",
    }),
    body: JSON.stringify({
      jsonrpc: "2.0",
      id: 9,
      method: "subscriptions/listen",
      params: { _meta: { "io.modelcontextprotocol/protocolVersion": MODERN } },
    }),
  });
}

const cases = (await storeBackendCases("revocation")).filter((c) => c.name !== "sqlite");

function describeRevocation(backend: StoreCase): void {
  describe(`revocation across two replicas on ${backend.name}`, { skip: backend.skip }, () => {
    let replicas: Replicas;
    let cleanup: () => Promise<void>;
    let shared: MemoryStore | undefined;

    before(async () => {
      const opened = await backend.open();
      cleanup = opened.cleanup;
      if (backend.name === "memory") shared = new MemoryStore();
      replicas = await startReplicas([opened.url, opened.url], shared);
    });
    after(async () => {
      await replicas?.close();
      await shared?.close();
      await cleanup?.();
    });

    it("S13 a session revoked at replica 1 ends its GET stream at replica 2; the id is 404 on both", async () => {
      const { one, two } = replicas;
      const alice = await replicas.token("alice");
      const sessionId = await initialize(one, alice);
      const other = await initialize(one, alice);
      const stream = await openGetStream(two, alice, sessionId);
      const untouched = await openGetStream(two, alice, other);

      assert.equal(await one.gateway.revocation.revokeSession(digestOf(sessionId)), true);
      await stream.ended();
      assert.equal(await untouched.stillOpenAfter(200), true, "another session's stream stays open");
      assert.equal(await toolsList(one, alice, sessionId), 404);
      assert.equal(await toolsList(two, alice, sessionId), 404);
      assert.equal(await toolsList(two, alice, other), 200);
      untouched.close();
    });

    it("S4 an admin revoke: the owner gets 404 on every replica, and the revocation is audited", async () => {
      const { one, two } = replicas;
      const carol = await replicas.token("carol");
      const sessionId = await initialize(two, carol);
      assert.equal(await toolsList(one, carol, sessionId), 200);
      assert.equal(await one.gateway.revocation.revokeSession(digestOf(sessionId)), true);
      for (const replica of [one, two]) assert.equal(await toolsList(replica, carol, sessionId), 404);
      assert.ok(one.events.some((event) => event.type === "session.revoked" && event.reason === "admin"));
      // Revoking again finds nothing, and still tells the replicas (a retry after a failed notice).
      assert.equal(await one.gateway.revocation.revokeSession(digestOf(sessionId)), false);
    });

    it("S13 DELETE at replica 1 ends the session's GET stream at replica 2", async () => {
      const { one, two } = replicas;
      const dave = await replicas.token("dave");
      const sessionId = await initialize(one, dave);
      const stream = await openGetStream(two, dave, sessionId);
      const deleted = await fetch(`${one.url}/mcp`, {
        method: "DELETE",
        headers: sessionHeaders(dave, sessionId),
      });
      assert.equal(deleted.status, 200);
      await stream.ended();
      assert.equal(await toolsList(two, dave, sessionId), 404);
    });

    it("S13 revoking a principal at replica 1 ends its legacy and modern streams at replica 2; its sessions and tasks are gone, another's untouched", async () => {
      const { one, two } = replicas;
      const [erin, frank] = [await replicas.token("erin"), await replicas.token("frank")];
      const erinSessions = [await initialize(one, erin), await initialize(two, erin)];
      const frankSession = await initialize(one, frank);
      const erinStream = await openGetStream(two, erin, erinSessions[0] as string);
      const erinListen = await openModernListen(two, erin);
      const frankStream = await openGetStream(two, frank, frankSession);
      const frankListen = await openModernListen(two, frank);
      const tasks = createTaskRegistry({ store: replicas.store });
      assert.equal(await tasks.claim(replicas.principal("erin"), "holding", "task-e", null), "owned");
      assert.equal(await tasks.claim(replicas.principal("frank"), "holding", "task-f", null), "owned");

      const removed = await one.gateway.revocation.revokePrincipal(replicas.principal("erin"));
      assert.deepEqual(removed, { sessions: 2, tasks: 1 });
      await erinStream.ended();
      await erinListen.ended();
      for (const sessionId of erinSessions) {
        for (const replica of [one, two]) assert.equal(await toolsList(replica, erin, sessionId), 404);
      }
      assert.equal(await tasks.owns(replicas.principal("erin"), "holding", "task-e"), false);
      assert.equal(await tasks.owns(replicas.principal("frank"), "holding", "task-f"), true);
      assert.equal(await frankStream.stillOpenAfter(200), true);
      assert.equal(await frankListen.stillOpenAfter(0), true);
      assert.equal(await toolsList(two, frank, frankSession), 200);
      assert.ok(one.events.some((event) => event.type === "session.revoked" && event.reason === "principal"));
      frankStream.close();
      frankListen.close();
    });

    it("S13 the kill switch at replica 1 ends every stream at replica 2; every session is 404 on both; a fresh initialize works", async () => {
      const { one, two } = replicas;
      const [gina, hal] = [await replicas.token("gina"), await replicas.token("hal")];
      const sessions = [
        [gina, await initialize(one, gina)],
        [hal, await initialize(two, hal)],
      ] as const;
      const streams = await Promise.all(sessions.map(([token, id]) => openGetStream(two, token, id)));
      const listen = await openModernListen(two, hal);

      await one.gateway.revocation.killSwitch();
      await Promise.all([...streams, listen].map((stream) => stream.ended()));
      for (const [token, id] of sessions) {
        for (const replica of [one, two]) assert.equal(await toolsList(replica, token, id), 404);
      }
      assert.ok(
        two.events.some((event) => event.type === "session.denied" && event.reason === "kill-switch"),
        "the refusal is audited with its reason",
      );
      assert.ok(
        one.events.some((event) => event.type === "session.revoked" && event.reason === "kill-switch"),
      );

      // New sessions work on both replicas, and their streams are not cut by the kill switch.
      const fresh = await initialize(two, gina);
      assert.equal(await toolsList(one, gina, fresh), 200);
      const freshStream = await openGetStream(one, gina, fresh);
      assert.equal(await freshStream.stillOpenAfter(200), true);
      freshStream.close();
    });

    it("S4 after the kill switch an id is 404 for its owner on a replica that never heard the notice", async () => {
      // The store fact alone: the bus is not involved in refusing a request.
      const { one, two } = replicas;
      const ivy = await replicas.token("ivy");
      const sessionId = await initialize(two, ivy);
      await one.gateway.sessions.killSwitch();
      assert.equal(await toolsList(two, ivy, sessionId), 404);
      assert.equal(await toolsList(one, ivy, sessionId), 404);
    });
  });
}

for (const backend of cases) describeRevocation(backend);

const redis = await redisBackend();

describe("S13 revocation while replica 2's Redis connections are cut", { skip: redis.skip }, () => {
  let replicas: Replicas;
  let proxy: FaultProxy;
  let cleanup: () => Promise<void>;

  before(async () => {
    const found = (await storeBackendCases("revocation-proxy")).find((c) => c.name === "redis");
    assert.ok(found);
    const opened = await found.open();
    cleanup = opened.cleanup;
    proxy = await FaultProxy.start(redis.host, redis.port);
    const viaProxy = new URL(opened.url);
    viaProxy.hostname = "127.0.0.1";
    viaProxy.port = String(proxy.port);
    // Generous: under a loaded CI machine the replica must still connect through the proxy at start.
    viaProxy.searchParams.set("timeoutMs", "2000");
    replicas = await startReplicas([opened.url, viaProxy.toString()]);
  });
  after(async () => {
    await proxy?.setMode("pass");
    await replicas?.close();
    await proxy?.close();
    await cleanup?.();
  });

  it("S13 a session revoked while replica 2's subscriber was cut off: its stream ends once the connection is back", async () => {
    const { one, two } = replicas;
    const alice = await replicas.token("alice");
    const revoked = await initialize(one, alice);
    const kept = await initialize(one, alice);
    const stream = await openGetStream(two, alice, revoked);
    const keptStream = await openGetStream(two, alice, kept);

    await proxy.setMode("reset");
    // The notice goes out while replica 2 cannot hear it.
    assert.equal(await one.gateway.revocation.revokeSession(digestOf(revoked)), true);
    assert.equal(await stream.stillOpenAfter(300), true, "nothing reached replica 2 yet");
    await proxy.setMode("pass");
    // Re-checked after the reconnect: the revoked session no longer resolves, so its stream ends;
    // the other still resolves and stays open.
    await stream.ended(10_000);
    assert.equal(await keptStream.stillOpenAfter(300), true);
    assert.equal(await toolsList(two, alice, revoked), 404);
    keptStream.close();
  });
});
