/**
 * Findings of the security review of revocation, the kill switch, the admin API and audit rotation,
 * each driven through a real gateway on a real store (memory, one replica: the notices these tests
 * need are the replica's own), or through the module whose own behaviour is the finding.
 */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { after, before, describe, it } from "node:test";
import type { SecurityEvent, SecurityEvents } from "../../src/audit/security-events.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { GateError } from "../../src/errors.ts";
import {
  type AdminActions,
  createAdminHandler,
  KILL_SWITCH_CONFIRMATION,
} from "../../src/gateway/admin-server.ts";
import { makePrincipal } from "../../src/identity/principal.ts";
import { createRevocation } from "../../src/sessions/revocation.ts";
import { openInProcessRevocationBus, type RevocationSignal } from "../../src/sessions/revocation-bus.ts";
import { createSessionRegistry } from "../../src/sessions/session-registry.ts";
import type { Store } from "../../src/store/contract.ts";
import { ownershipKey } from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { createTaskRegistry } from "../../src/tasks/task-registry.ts";
import { type Harness, initializeSession, mcpHeaders, startHarness } from "../support/gateway-harness.ts";
import { createVaultDouble } from "../support/vault-double.ts";

const LEGACY = "2025-11-25";
const MODERN = "2026-07-28";
/** Far below every expiry in play (tokens 10 min, sessions 1 h): "ended" means "ended by revocation". */
const PROMPTLY_MS = 3_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface HeldRequest {
  /** Resolves once the upstream has received the request and is holding its answer back. */
  readonly arrived: Promise<void>;
  /** Lets the upstream answer (with a stream it keeps open). */
  release(): void;
}

interface HoldingUpstream {
  readonly url: string;
  /** The next request of this kind is held before its answer's headers are written. */
  holdNext(kind: "get" | "modern"): HeldRequest;
  close(): Promise<void>;
}

/**
 * A legacy and modern upstream whose streams never end by themselves: GET gets an SSE stream, a
 * legacy `tools/call` an SSE answer with one progress event (a long-running tool), a modern request
 * an SSE answer (a `subscriptions/listen`). A GET or modern request can be held before its answer.
 */
async function startHoldingUpstream(): Promise<HoldingUpstream> {
  const open = new Set<ServerResponse>();
  const holds = new Map<string, { arrived: () => void; released: Promise<void> }>();
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", async () => {
      const stream = async (kind: "get" | "modern", first: string) => {
        const hold = holds.get(kind);
        if (hold !== undefined) {
          holds.delete(kind);
          hold.arrived();
          await hold.released;
        }
        response.writeHead(200, { "content-type": "text/event-stream" });
        response.write(first);
        open.add(response);
        response.once("close", () => open.delete(response));
      };
      if (request.method === "GET") return stream("get", ": open\n\n");
      if (request.method === "DELETE") return void response.writeHead(200).end();
      const message = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
        id?: number;
        method: string;
        params?: { protocolVersion?: string };
      };
      if (request.headers["mcp-protocol-version"] === MODERN) {
        const event = { jsonrpc: "2.0", method: "notifications/resources/list_changed" };
        return stream("modern", `data: ${JSON.stringify(event)}\n\n`);
      }
      if (message.id === undefined) return void response.writeHead(202).end();
      if (message.method === "initialize") {
        response.writeHead(200, {
          "content-type": "application/json",
          "mcp-session-id": `up-${randomBytes(6).toString("hex")}`,
        });
        const result = {
          protocolVersion: LEGACY,
          capabilities: {},
          serverInfo: { name: "held", version: "1" },
        };
        return void response.end(JSON.stringify({ jsonrpc: "2.0", id: message.id, result }));
      }
      if (message.method === "tools/call") {
        response.writeHead(200, { "content-type": "text/event-stream" });
        const progress = { jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 1 } };
        response.write(`data: ${JSON.stringify(progress)}\n\n`);
        open.add(response);
        response.once("close", () => open.delete(response));
        return;
      }
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ jsonrpc: "2.0", id: message.id, result: { tools: [] } }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    holdNext(kind) {
      let arrived!: () => void;
      let release!: () => void;
      const arrivedPromise = new Promise<void>((resolve) => {
        arrived = resolve;
      });
      const released = new Promise<void>((resolve) => {
        release = resolve;
      });
      holds.set(kind, { arrived, released });
      return { arrived: arrivedPromise, release };
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const response of open) response.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Reads a response body until it ends; resolves with whether it ended within `withinMs`. */
async function endsWithin(response: Response, withinMs: number): Promise<boolean> {
  const reader = response.body?.getReader();
  if (!reader) return true;
  const deadline = Date.now() + withinMs;
  try {
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) return false;
      const next = await Promise.race([
        reader.read().then(
          (read) => (read.done ? "done" : "data"),
          () => "done",
        ),
        sleep(remaining).then(() => "timeout"),
      ]);
      if (next === "done") return true;
      if (next === "timeout") return false;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}

/** Reads the first chunk (the stream is open end to end), then waits for the end. */
async function firstChunk(response: Response): Promise<Response> {
  assert.equal(response.status, 200);
  const [mine, rest] = response.body?.tee() ?? [];
  assert.ok(mine && rest);
  const reader = mine.getReader();
  await reader.read();
  reader.releaseLock();
  void mine.cancel().catch(() => undefined);
  return new Response(rest, { status: response.status, headers: response.headers });
}

function sessionHeaders(token: string, sessionId: string): Record<string, string> {
  return mcpHeaders({
    authorization: `Bearer ${token}`,
    "mcp-session-id": sessionId,
    "mcp-protocol-version": LEGACY,
  });
}

function digestOf(sessionId: string): string {
  const digest = ownershipKey("session", sessionId).segments[1];
  assert.ok(digest);
  return digest;
}

describe("review: streams that outlived their revocation", () => {
  let upstream: HoldingUpstream;
  let harness: Harness;
  let url: string;
  const aborts: AbortController[] = [];
  const signal = () => {
    const abort = new AbortController();
    aborts.push(abort);
    return abort.signal;
  };

  before(async () => {
    upstream = await startHoldingUpstream();
    harness = await startHarness({
      upstreams: [{ name: "held", path: "/mcp", url: upstream.url, protocolVersions: [LEGACY, MODERN] }],
      extra: { sessions: { absoluteTimeout: "1h" } },
    });
    url = `${harness.url}/mcp`;
  });
  after(async () => {
    for (const abort of aborts) abort.abort();
    await upstream.close();
    await harness.close();
  });

  function toolCall(token: string, sessionId: string): Promise<Response> {
    return fetch(url, {
      method: "POST",
      headers: sessionHeaders(token, sessionId),
      body: JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "slow" } }),
      signal: signal(),
    });
  }

  it("S13 a legacy POST answered with a stream ends when its session is revoked", async () => {
    const alice = await harness.token("alice");
    const sessionId = await initializeSession(url, alice);
    const answer = await firstChunk(await toolCall(alice, sessionId));
    assert.equal(await harness.gateway.revocation.revokeSession(digestOf(sessionId)), true);
    assert.ok(await endsWithin(answer, PROMPTLY_MS), "the revoked session's streamed answer ended");
  });

  it("S13 a legacy POST answered with a stream ends when its principal is revoked, and with the kill switch", async () => {
    const bob = await harness.token("bob");
    const carol = await harness.token("carol");
    const bobAnswer = await firstChunk(await toolCall(bob, await initializeSession(url, bob)));
    const carolAnswer = await firstChunk(await toolCall(carol, await initializeSession(url, carol)));
    const principal = {
      kind: "jwt",
      issuer: "https://issuer.test",
      subject: "bob",
      tenant: "t-bob",
      scopes: [],
      expiresAt: null,
    } as const;
    await harness.gateway.revocation.revokePrincipal(makePrincipal(principal));
    assert.ok(await endsWithin(bobAnswer, PROMPTLY_MS), "the revoked principal's streamed answer ended");
    await harness.gateway.revocation.killSwitch();
    assert.ok(await endsWithin(carolAnswer, PROMPTLY_MS), "the kill switch ended the streamed answer");
  });

  it("S13 a GET stream whose upstream answered after its session was revoked ends", async () => {
    const dave = await harness.token("dave");
    const sessionId = await initializeSession(url, dave);
    const held = upstream.holdNext("get");
    const pending = fetch(url, {
      method: "GET",
      headers: { ...sessionHeaders(dave, sessionId), accept: "text/event-stream" },
      signal: signal(),
    });
    // The gateway resolved the session and is waiting for the upstream: now it is revoked.
    await held.arrived;
    assert.equal(await harness.gateway.revocation.revokeSession(digestOf(sessionId)), true);
    held.release();
    const response = await pending;
    assert.ok(
      response.status === 404 || (await endsWithin(response, PROMPTLY_MS)),
      "the stream of a session revoked while it was being opened ended",
    );
  });

  it("S13 a GET stream whose upstream answered after the kill switch fired ends", async () => {
    const erin = await harness.token("erin");
    const sessionId = await initializeSession(url, erin);
    const held = upstream.holdNext("get");
    const pending = fetch(url, {
      method: "GET",
      headers: { ...sessionHeaders(erin, sessionId), accept: "text/event-stream" },
      signal: signal(),
    });
    await held.arrived;
    await harness.gateway.revocation.killSwitch();
    held.release();
    const response = await pending;
    assert.ok(
      response.status === 404 || (await endsWithin(response, PROMPTLY_MS)),
      "the stream of a session killed while it was being opened ended",
    );
  });

  it("S13 a modern listen stream whose upstream answered after its principal was revoked ends", async () => {
    const frank = await harness.token("frank");
    const held = upstream.holdNext("modern");
    const pending = fetch(url, {
      method: "POST",
      headers: mcpHeaders({
        authorization: `Bearer ${frank}`,
        "mcp-protocol-version": MODERN,
        "mcp-method": "subscriptions/listen",
      }),
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: 9,
        method: "subscriptions/listen",
        params: { _meta: { "io.modelcontextprotocol/protocolVersion": MODERN } },
      }),
      signal: signal(),
    });
    await held.arrived;
    await harness.gateway.revocation.revokePrincipal(
      makePrincipal({
        kind: "jwt",
        issuer: "https://issuer.test",
        subject: "frank",
        tenant: "t-frank",
        scopes: [],
        expiresAt: null,
      }),
    );
    held.release();
    const response = await pending;
    assert.equal(response.status, 200);
    assert.ok(await endsWithin(response, PROMPTLY_MS), "the revoked principal's listen stream ended");
  });
});

// --- a revocation cut short by the store -----------------------------------------------------------

/** A memory store whose calls of one kind fail once `failing` names it (a store blip mid-action). */
function flakyStore(): { store: Store; fail(method: "delete" | "get" | null): void; close(): Promise<void> } {
  const inner = new MemoryStore();
  let failing: string | null = null;
  const store = new Proxy(inner, {
    get(target, property) {
      const value = Reflect.get(target, property, target) as unknown;
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        if (property === failing) {
          return Promise.reject(new GateError("ERR_STORE_UNAVAILABLE", "store unavailable"));
        }
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  }) as Store;
  return {
    store,
    fail(method) {
      failing = method;
    },
    close: () => inner.close(),
  };
}

describe("review: a revocation the store cuts short", () => {
  const alice = makePrincipal({
    kind: "jwt",
    issuer: "https://issuer.test",
    subject: "alice",
    tenant: "t-alice",
    scopes: [],
    expiresAt: null,
  });

  async function setUp() {
    const flaky = flakyStore();
    const sessions = createSessionRegistry({
      store: flaky.store,
      keyring: Keyring.ephemeral(),
      absoluteTimeoutMs: 3_600_000,
    });
    const hub = {};
    const bus = openInProcessRevocationBus(hub);
    // Another replica's bus on the same store: what it hears is what its streams would act on.
    const elsewhere = openInProcessRevocationBus(hub);
    const heardElsewhere: RevocationSignal[] = [];
    elsewhere.subscribe((signal) => void heardElsewhere.push(signal));
    const appliedHere: RevocationSignal[] = [];
    const revocation = createRevocation({
      sessions,
      tasks: createTaskRegistry({ store: flaky.store }),
      bus,
      events: { emit: () => undefined } as never,
      applyLocally: (signal) => void appliedHere.push(signal),
    });
    const created = await sessions.create({ principal: alice, upstream: "notes", protocolVersion: LEGACY });
    return {
      ...flaky,
      bus,
      sessions,
      revocation,
      created,
      appliedHere,
      heardElsewhere,
      async closeAll() {
        await bus.close();
        await elsewhere.close();
        await flaky.close();
      },
    };
  }

  it("S13 a session revoke that fails after its record was removed still ends the session's streams, here and elsewhere", async () => {
    const setup = await setUp();
    try {
      const { sessionDigest } = setup.created.session;
      // get and the first delete (the ownership record) go through; the mapping's delete fails.
      let deletes = 0;
      const original = setup.store.delete.bind(setup.store);
      setup.store.delete = (key) =>
        deletes++ === 0
          ? original(key)
          : Promise.reject(new GateError("ERR_STORE_UNAVAILABLE", "store unavailable"));
      await assert.rejects(setup.revocation.revokeSession(sessionDigest), { code: "ERR_STORE_UNAVAILABLE" });
      assert.equal(
        await setup.sessions.resolve(setup.created.sessionId, alice, "notes"),
        null,
        "revoked in the store",
      );
      await sleep(10);
      const named = (signal: RevocationSignal) =>
        signal.kind === "session" && signal.sessionDigest === sessionDigest;
      assert.ok(setup.appliedHere.some(named), "this replica's streams of the session ended");
      assert.ok(setup.heardElsewhere.some(named), "the other replicas were told");
    } finally {
      await setup.closeAll();
    }
  });

  it("S13 a principal revoke whose task removal fails still ends the principal's streams, here and elsewhere", async () => {
    const setup = await setUp();
    try {
      const revocation = createRevocation({
        sessions: setup.sessions,
        tasks: {
          ...createTaskRegistry({ store: setup.store }),
          revokeAll: () => Promise.reject(new GateError("ERR_STORE_UNAVAILABLE", "store unavailable")),
        },
        bus: setup.bus,
        events: { emit: () => undefined } as never,
        applyLocally: (signal) => void setup.appliedHere.push(signal),
      });
      await assert.rejects(revocation.revokePrincipal(alice), { code: "ERR_STORE_UNAVAILABLE" });
      assert.equal(
        await setup.sessions.resolve(setup.created.sessionId, alice, "notes"),
        null,
        "its sessions are gone",
      );
      assert.ok(
        setup.appliedHere.some((signal) => signal.kind === "principal"),
        "its streams here ended",
      );
    } finally {
      await setup.closeAll();
    }
  });

  it("S13 a kill switch that fails after its generation was claimed still ends every stream, here and elsewhere", async () => {
    const setup = await setUp();
    try {
      // The claim goes through; reading on from the claimed generation fails.
      const original = setup.store.claim.bind(setup.store);
      setup.store.claim = async (...args) => {
        const outcome = await original(...args);
        setup.fail("get");
        return outcome;
      };
      await assert.rejects(setup.revocation.killSwitch(), { code: "ERR_STORE_UNAVAILABLE" });
      setup.fail(null);
      assert.equal(
        await setup.sessions.resolve(setup.created.sessionId, alice, "notes"),
        null,
        "killed in the store",
      );
      await sleep(10);
      const all = (signal: RevocationSignal) =>
        signal.kind === "all" && signal.generation > setup.created.session.killGeneration;
      assert.ok(setup.appliedHere.some(all), "every stream here ended");
      assert.ok(setup.heardElsewhere.some(all), "the other replicas were told");
    } finally {
      await setup.closeAll();
    }
  });
});

// --- the admin API's audit trail ------------------------------------------------------------------

describe("review: admin actions in the audit trail", () => {
  const emitted: SecurityEvent[] = [];
  let base: string;
  let close: () => Promise<void>;
  const failing = () => Promise.reject(new GateError("ERR_STORE_UNAVAILABLE", "store unavailable"));
  const actions: AdminActions = {
    describeSessions: async () => [],
    revokeSession: failing,
    revokePrincipal: failing,
    killSwitch: failing,
    vault: createVaultDouble(),
  };

  before(async () => {
    const handler = createAdminHandler({
      tokenDigest: undefined,
      allowedHosts: null,
      actions,
      metrics: () => "",
      ready: async () => true,
      events: { emit: (event: SecurityEvent) => void emitted.push(event) } as unknown as SecurityEvents,
    });
    const server = createServer(handler);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    close = () => new Promise<void>((resolve) => server.close(() => resolve()));
  });
  after(() => close());

  const post = async (path: string, body: unknown) => {
    const response = await fetch(`${base}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    await response.arrayBuffer();
    return response.status;
  };

  it("S4 an admin action that fails (the kill switch, a revoke) is in the audit trail, with what it named", async () => {
    emitted.length = 0;
    assert.equal(await post("/admin/kill-switch", { confirm: KILL_SWITCH_CONFIRMATION }), 503);
    const principal = { issuer: "https://issuer.test", subject: "alice", tenant: "t-alice" };
    assert.equal(await post("/admin/sessions/revoke", { principal }), 503);
    const kill = emitted.find((event) => event.type === "admin.action" && event.reason === "kill-switch");
    assert.ok(kill, "the failed kill switch is audited");
    assert.equal(kill.status, 503);
    const revoke = emitted.find(
      (event) => event.type === "admin.action" && event.reason === "principal-revoke",
    );
    assert.ok(revoke, "the failed principal revoke is audited");
    assert.equal(revoke.status, 503);
    assert.deepEqual(revoke.principal, principal, "with the principal it named");
  });

  it("S4 listing a principal's sessions is audited with the principal listed", async () => {
    emitted.length = 0;
    const principal = { issuer: "https://issuer.test", subject: "bob", tenant: "t-bob" };
    assert.equal(await post("/admin/sessions/list", { principal }), 200);
    const listed = emitted.find((event) => event.type === "admin.action" && event.reason === "sessions-list");
    assert.ok(listed);
    assert.deepEqual(listed.principal, principal);
  });
});

// --- the admin listener's Host guard ---------------------------------------------------------------

describe("review: the admin listener's Host guard (no token)", () => {
  let port: number;
  let close: () => Promise<void>;
  let killed = 0;

  before(async () => {
    let handler: ReturnType<typeof createAdminHandler> | undefined;
    const server = createServer((request, response) => handler?.(request, response));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as AddressInfo).port;
    // What startAdminListener accepts for a loopback listener.
    const allowed = new Set(["127.0.0.1", "localhost", "[::1]"].map((name) => `${name}:${port}`));
    handler = createAdminHandler({
      tokenDigest: undefined,
      allowedHosts: allowed,
      actions: {
        describeSessions: async () => [],
        revokeSession: async () => false,
        revokePrincipal: async () => ({ sessions: 0, tasks: 0 }),
        vault: createVaultDouble(),
        killSwitch: async () => {
          killed += 1;
        },
      },
      metrics: () => "",
      ready: async () => true,
      events: { emit: () => undefined } as unknown as SecurityEvents,
    });
    close = () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      });
  });
  after(() => close());

  /** One raw HTTP/1.1 request (fetch would fix up Host and the request target): the status line's code. */
  function raw(target: string, hosts: readonly string[]): Promise<number> {
    const body = JSON.stringify({ confirm: KILL_SWITCH_CONFIRMATION });
    const head = [
      `POST ${target} HTTP/1.1`,
      ...hosts.map((host) => `Host: ${host}`),
      "Content-Type: application/json",
      `Content-Length: ${Buffer.byteLength(body)}`,
      "Connection: close",
    ];
    return new Promise((resolve, reject) => {
      const socket = connect(port, "127.0.0.1");
      let text = "";
      socket.on("data", (chunk) => {
        text += chunk.toString("latin1");
      });
      socket.on("error", reject);
      socket.on("close", () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)));
      socket.end(`${head.join("\r\n")}\r\n\r\n${body}`);
    });
  }

  it("L4 Host variants a rebinding page or a crafted request could use never reach the kill switch", async () => {
    for (const hosts of [
      [`localhost.:${port}`],
      [`127.0.0.1.:${port}`],
      [`[0:0:0:0:0:0:0:1]:${port}`],
      [`[::ffff:127.0.0.1]:${port}`],
      [`attacker.example:${port}`],
      ["localhost"],
      [`localhost:${port}`, "attacker.example"],
      [`attacker.example`, `localhost:${port}`],
      [],
    ]) {
      const status = await raw("/admin/kill-switch", hosts);
      assert.ok(status === 403 || status === 400, `${JSON.stringify(hosts)} answered ${status}`);
    }
    // An absolute-form target names another host in the request line: never routed to an action.
    assert.notEqual(await raw(`http://attacker.example/admin/kill-switch`, [`localhost:${port}`]), 200);
    assert.notEqual(await raw(`http://localhost:${port}/admin/kill-switch`, [`localhost:${port}`]), 200);
    assert.equal(killed, 0, "nothing reached the kill switch");
    // Upper case is the same name: the listener itself, as the operator's own tools send it.
    assert.equal(await raw("/admin/kill-switch", [`LOCALHOST:${port}`]), 200);
    assert.equal(killed, 1);
  });
});
