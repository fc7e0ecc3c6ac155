/**
 * Session lifetimes enforced by the gateway: the idle timeout (sessions.idleTimeout), with activity
 * recorded by requests and by open streams. Real gateway, real store, the recording upstream (its GET
 * stream stays open until the client leaves). Timeouts are short here; waits carry generous margins.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type Harness, initializeSession, mcpHeaders, startHarness } from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";

const IDLE = "1s";
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("sessions.idleTimeout", () => {
  let upstream: RecordingUpstream;
  let harness: Harness;
  let url: string;
  let token: string;
  before(async () => {
    upstream = await startRecordingUpstream();
    harness = await startHarness({
      upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
      extra: { sessions: { idleTimeout: IDLE, absoluteTimeout: "1h" } },
    });
    url = `${harness.url}/mcp`;
    token = await harness.token("alice");
  });
  after(async () => {
    await harness.close();
    await upstream.close();
  });

  const toolsList = (sessionId: string) =>
    fetch(url, {
      method: "POST",
      headers: mcpHeaders({
        authorization: `Bearer ${token}`,
        "mcp-session-id": sessionId,
        "mcp-protocol-version": "2025-11-25",
      }),
      body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
    });

  it("S4 after the idle timeout the id is 404 for its owner, and nothing reaches the upstream", async () => {
    const sessionId = await initializeSession(url, token);
    assert.equal((await toolsList(sessionId)).status, 200);
    await sleep(2_500);
    const forwarded = upstream.requests.length;
    const answer = await toolsList(sessionId);
    assert.equal(answer.status, 404);
    assert.equal(upstream.requests.length, forwarded);
    assert.ok(harness.events.some((event) => event.type === "session.denied" && event.reason === "idle"));
  });

  it("a session in use does not go idle", async () => {
    const sessionId = await initializeSession(url, token);
    for (let i = 0; i < 10; i++) {
      await sleep(300);
      const answer = await toolsList(sessionId);
      await answer.arrayBuffer();
      assert.equal(answer.status, 200, `request ${i} after ${(i + 1) * 300} ms`);
    }
  });

  it("an open stream counts as activity", async () => {
    const sessionId = await initializeSession(url, token);
    const abort = new AbortController();
    const stream = await fetch(url, {
      method: "GET",
      headers: {
        authorization: `Bearer ${token}`,
        "mcp-session-id": sessionId,
        "mcp-protocol-version": "2025-11-25",
        accept: "text/event-stream",
      },
      signal: abort.signal,
    });
    assert.equal(stream.status, 200);
    await sleep(2_500);
    const answer = await toolsList(sessionId);
    assert.equal(answer.status, 200, "the stream kept the session alive");
    abort.abort();
  });
});

describe("sessions.maxPerPrincipal", () => {
  let upstream: RecordingUpstream;
  let harness: Harness;
  before(async () => {
    upstream = await startRecordingUpstream();
    harness = await startHarness({
      upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
      extra: { sessions: { maxPerPrincipal: 2, onLimit: "reject" } },
    });
  });
  after(async () => {
    await harness.close();
    await upstream.close();
  });

  it("L6 one principal creating sessions without end hits its own cap (429) and never touches another's", async () => {
    const url = `${harness.url}/mcp`;
    const alice = await harness.token("alice");
    const bob = await harness.token("bob");
    const bobsSession = await initializeSession(url, bob);
    await initializeSession(url, alice);
    await initializeSession(url, alice);
    const third = await fetch(url, {
      method: "POST",
      headers: mcpHeaders({ authorization: `Bearer ${alice}` }),
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: 1,
        method: "initialize",
        params: {
          protocolVersion: "2025-11-25",
          capabilities: {},
          clientInfo: { name: "e2e", version: "1" },
        },
      }),
    });
    assert.equal(third.status, 429);
    assert.equal(
      ((await third.json()) as { error: { data: { code: string } } }).error.data.code,
      "ERR_SESSION_LIMIT",
    );
    assert.equal(third.headers.get("mcp-session-id"), null);
    const bobs = await fetch(url, {
      method: "POST",
      headers: mcpHeaders({
        authorization: `Bearer ${bob}`,
        "mcp-session-id": bobsSession,
        "mcp-protocol-version": "2025-11-25",
      }),
      body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
    });
    assert.equal(bobs.status, 200, "bob's session is untouched");
    assert.ok(
      harness.events.some((event) => event.type === "request.refused" && event.reason === "session-limit"),
    );
  });
});
