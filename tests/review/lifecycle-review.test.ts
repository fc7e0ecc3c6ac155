/**
 * Findings of the security review of the session-lifecycle work (idle timeout, the per-principal
 * session cap, stream deadlines, the session metadata endpoint), each driven through a real gateway
 * and a real store, or through the registry where the finding is the registry's own arithmetic.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { Keyring } from "../../src/crypto/keyring.ts";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";
import { createSessionRegistry } from "../../src/sessions/session-registry.ts";
import { ownershipKeyFromDigest } from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import {
  type Harness,
  INITIALIZE,
  initializeSession,
  mcpHeaders,
  startHarness,
} from "../support/gateway-harness.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface StreamingUpstream {
  readonly url: string;
  /** Upstream responses still open (GET streams and streamed POST answers). */
  readonly open: Set<ServerResponse>;
  close(): Promise<void>;
}

/**
 * A legacy upstream that never ends a stream by itself: GET gets an SSE stream that stays open, and a
 * `tools/call` gets an SSE answer with one progress event and no result (a long-running tool).
 */
async function startStreamingUpstream(): Promise<StreamingUpstream> {
  const open = new Set<ServerResponse>();
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      const keepOpen = () => {
        open.add(response);
        response.once("close", () => open.delete(response));
      };
      if (request.method === "GET") {
        response.writeHead(200, { "content-type": "text/event-stream" });
        response.write(": open\n\n");
        keepOpen();
        return;
      }
      if (request.method === "DELETE") {
        response.writeHead(200).end();
        return;
      }
      let message: { id?: unknown; method?: string; params?: { protocolVersion?: string } } = {};
      try {
        message = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {}
      if (message.id === undefined) {
        response.writeHead(202).end();
        return;
      }
      if (message.method === "initialize") {
        response.writeHead(200, {
          "content-type": "application/json",
          "mcp-session-id": `up-${randomBytes(6).toString("hex")}`,
        });
        response.end(
          JSON.stringify({
            jsonrpc: "2.0",
            id: message.id,
            result: {
              protocolVersion: message.params?.protocolVersion ?? "2025-11-25",
              capabilities: { tools: {} },
              serverInfo: { name: "streaming", version: "1" },
            },
          }),
        );
        return;
      }
      if (message.method === "tools/call") {
        response.writeHead(200, { "content-type": "text/event-stream" });
        response.write(
          `data: ${JSON.stringify({
            jsonrpc: "2.0",
            method: "notifications/progress",
            params: { progressToken: 1, progress: 1 },
          })}\n\n`,
        );
        keepOpen();
        return;
      }
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ jsonrpc: "2.0", id: message.id, result: {} }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    open,
    close: () =>
      new Promise<void>((resolve) => {
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

function sessionHeaders(token: string, sessionId: string): Record<string, string> {
  return mcpHeaders({
    authorization: `Bearer ${token}`,
    "mcp-session-id": sessionId,
    "mcp-protocol-version": "2025-11-25",
  });
}

function openGetStream(url: string, token: string, sessionId: string, signal: AbortSignal) {
  return fetch(url, {
    method: "GET",
    headers: {
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-11-25",
      accept: "text/event-stream",
    },
    signal,
  });
}

// --- the per-principal cap and the idle timeout ---------------------------------------------------

for (const storeCase of await storeBackendCases("lifecycle-review")) {
  describe(`session cap with an idle timeout on the ${storeCase.name} store`, {
    skip: storeCase.skip,
  }, () => {
    let store: { url: string; cleanup(): Promise<void> } | undefined;
    let harness: Harness;
    before(async () => {
      store = await storeCase.open();
      harness = await startHarness({
        store: store.url,
        extra: {
          sessions: { idleTimeout: "1s", absoluteTimeout: "1h", maxPerPrincipal: 2, onLimit: "reject" },
        },
      });
    });
    after(async () => {
      await harness?.close();
      await store?.cleanup();
    });

    it(`L6 with onLimit reject, sessions gone idle (404 for their owner) no longer hold the principal's slots (${storeCase.name})`, async () => {
      const url = `${harness.url}/mcp`;
      const alice = await harness.token("alice");
      const first = await initializeSession(url, alice);
      await initializeSession(url, alice);
      await sleep(2_500);
      const gone = await fetch(url, {
        method: "POST",
        headers: sessionHeaders(alice, first),
        body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
      });
      await gone.arrayBuffer();
      assert.equal(gone.status, 404, "the idle session is gone for its owner");
      const next = await fetch(url, {
        method: "POST",
        headers: mcpHeaders({ authorization: `Bearer ${alice}` }),
        body: JSON.stringify(INITIALIZE),
      });
      await next.arrayBuffer();
      assert.equal(next.status, 200, "two sessions that no longer exist do not lock the principal out");
      assert.ok(next.headers.get("mcp-session-id"));
    });
  });
}

describe("evict-oldest with index entries of sessions already gone", () => {
  it("L6 evicts only as many of the principal's live sessions as the cap requires", async () => {
    const store = new MemoryStore();
    try {
      const registry = createSessionRegistry({
        store,
        keyring: Keyring.ephemeral(),
        absoluteTimeoutMs: 60_000,
        maxPerPrincipal: 4,
        onLimit: "evict-oldest",
      });
      const alice: Principal = makePrincipal({
        kind: "jwt",
        issuer: "https://issuer.example",
        subject: "alice",
        tenant: "t-alice",
        scopes: [],
        expiresAt: null,
      });
      const created = [];
      for (let i = 0; i < 4; i++) {
        created.push(
          await registry.create({ principal: alice, upstream: "notes", protocolVersion: "2025-11-25" }),
        );
        await sleep(3);
      }
      // Two sessions whose ownership records are gone while their index entries remain (a removal
      // cut short by a store failure leaves exactly this): alice holds two live sessions.
      for (const gone of created.slice(0, 2)) {
        await store.delete(ownershipKeyFromDigest("session", gone.session.sessionDigest));
      }
      await registry.create({ principal: alice, upstream: "notes", protocolVersion: "2025-11-25" });
      for (const live of created.slice(2)) {
        assert.ok(
          await registry.resolve(live.sessionId, alice, "notes"),
          "three live sessions are under a cap of four: none is evicted",
        );
      }
    } finally {
      await store.close();
    }
  });
});

// --- streams --------------------------------------------------------------------------------------

describe("streams of the session lifecycle", () => {
  let upstream: StreamingUpstream;
  let harness: Harness;
  let url: string;
  before(async () => {
    upstream = await startStreamingUpstream();
    harness = await startHarness({
      upstreams: [{ name: "streaming", path: "/mcp", url: upstream.url }],
      extra: { sessions: { maxPerPrincipal: 1, onLimit: "evict-oldest" } },
    });
    url = `${harness.url}/mcp`;
  });
  after(async () => {
    // The upstream first: the gateway's shutdown waits for upstream answers it is still reading.
    await upstream.close();
    await harness.close();
  });

  it("S13 an evicted session's open stream ends with it, and the eviction is audited", async () => {
    const alice = await harness.token("alice");
    const first = await initializeSession(url, alice);
    const abort = new AbortController();
    try {
      const stream = await openGetStream(url, alice, first, abort.signal);
      assert.equal(stream.status, 200);
      const ended = endsWithin(stream, 3_000);
      await sleep(100);
      await initializeSession(url, alice);
      assert.ok(await ended, "the evicted session's stream ended");
      const evicted = harness.events.find(
        (event) => event.type === "session.ended" && event.by === "evicted",
      );
      assert.ok(evicted, "a session.ended event says the session was evicted");
    } finally {
      abort.abort();
    }
  });

  it("S13 a legacy POST answered with a stream ends at the expiry of the token it was sent with", async () => {
    const bob = await harness.token("bob", { expiresIn: 2 });
    const sessionId = await initializeSession(url, bob);
    const abort = new AbortController();
    try {
      const answer = await fetch(url, {
        method: "POST",
        headers: sessionHeaders(bob, sessionId),
        body: JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "slow" } }),
        signal: abort.signal,
      });
      assert.equal(answer.status, 200);
      assert.match(answer.headers.get("content-type") ?? "", /text\/event-stream/);
      assert.ok(await endsWithin(answer, 5_000), "the stream ended when the token expired");
    } finally {
      abort.abort();
    }
  });

  it("T4 the session metadata endpoint refuses a query string, as every MCP path does", async () => {
    const carol = await harness.token("carol");
    const sessionId = await initializeSession(url, carol);
    const answer = await fetch(`${harness.url}/.tenantgate/session/mcp?access_token=${carol}`, {
      headers: { authorization: `Bearer ${carol}`, "mcp-session-id": sessionId },
    });
    const body = await answer.text();
    assert.equal(answer.status, 400);
    assert.match(body, /ERR_REQUEST_INVALID/);
    assert.ok(!body.includes(sessionId));
    assert.ok(
      harness.events.some((event) => event.type === "request.refused" && event.reason === "query-string"),
    );
  });
});

describe("activity of streamed answers", () => {
  let upstream: StreamingUpstream;
  let harness: Harness;
  let url: string;
  before(async () => {
    upstream = await startStreamingUpstream();
    harness = await startHarness({
      upstreams: [{ name: "streaming", path: "/mcp", url: upstream.url }],
      extra: { sessions: { idleTimeout: "1s", absoluteTimeout: "1h" } },
    });
    url = `${harness.url}/mcp`;
  });
  after(async () => {
    await upstream.close();
    await harness.close();
  });

  it("idle timeout: a POST answered with a stream counts as activity while it is open, as a GET stream does", async () => {
    const dave = await harness.token("dave");
    const sessionId = await initializeSession(url, dave);
    const abort = new AbortController();
    try {
      const answer = await fetch(url, {
        method: "POST",
        headers: sessionHeaders(dave, sessionId),
        body: JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "slow" } }),
        signal: abort.signal,
      });
      assert.equal(answer.status, 200);
      // The tool runs longer than the idle timeout; its answer is still streaming.
      await sleep(2_500);
      const next = await fetch(url, {
        method: "POST",
        headers: sessionHeaders(dave, sessionId),
        body: JSON.stringify({ jsonrpc: "2.0", id: 8, method: "tools/list" }),
      });
      await next.arrayBuffer();
      assert.equal(next.status, 200, "the session with a streaming answer open did not go idle");
    } finally {
      abort.abort();
    }
  });
});

describe("shutdown with an upstream that never ends an answer", () => {
  it("shutdown: the gateway closes within a bound while an upstream still holds a POST's streamed answer open", async () => {
    const upstream = await startStreamingUpstream();
    const harness = await startHarness({
      upstreams: [{ name: "streaming", path: "/mcp", url: upstream.url }],
    });
    try {
      const url = `${harness.url}/mcp`;
      const erin = await harness.token("erin");
      const sessionId = await initializeSession(url, erin);
      const abort = new AbortController();
      const answer = await fetch(url, {
        method: "POST",
        headers: sessionHeaders(erin, sessionId),
        body: JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "slow" } }),
        signal: abort.signal,
      });
      assert.equal(answer.status, 200);
      // The client leaves; the gateway keeps reading the upstream's answer (not a cancellation).
      abort.abort();
      await sleep(100);
      const closed = harness.close().then(() => "closed");
      assert.equal(await Promise.race([closed, sleep(10_000).then(() => "hung")]), "closed");
      assert.equal(upstream.open.size, 0, "the upstream's side was dropped at shutdown");
    } finally {
      await upstream.close();
      await harness.close();
    }
  });
});
