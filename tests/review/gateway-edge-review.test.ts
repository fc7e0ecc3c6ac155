/**
 * Findings of the security review of the gateway edge, each driven end to end through a real
 * gateway (tests/support/gateway-harness.ts).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Harness, initializeSession, mcpHeaders, startHarness } from "../support/gateway-harness.ts";
import { startRecordingUpstream } from "../support/recording-upstream.ts";

async function withHarness<T>(
  options: Parameters<typeof startHarness>[0],
  run: (harness: Harness) => Promise<T>,
): Promise<T> {
  const harness = await startHarness(options);
  try {
    return await run(harness);
  } finally {
    await harness.close();
  }
}

describe("review: graceful close", () => {
  it("an in-flight POST answered as an SSE stream finishes within the grace period", async () => {
    await withHarness({}, async (harness) => {
      const token = await harness.token("alice");
      const sessionId = await initializeSession(`${harness.url}/mcp`, token);
      const response = await fetch(`${harness.url}/mcp`, {
        method: "POST",
        headers: mcpHeaders({
          authorization: `Bearer ${token}`,
          "mcp-session-id": sessionId,
          "mcp-protocol-version": "2025-11-25",
        }),
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 7,
          method: "tools/call",
          params: {
            name: "count_slowly",
            arguments: { steps: 4, delayMs: 100 },
            _meta: { progressToken: 1 },
          },
        }),
      });
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type") ?? "", /text\/event-stream/);
      const text = response.text();
      // Shutdown begins while the tool is still running: the POST is in flight, not a GET stream.
      await new Promise((resolve) => setTimeout(resolve, 50));
      const closed = harness.gateway.close({ graceMs: 5_000 });
      const body = await text;
      await closed;
      assert.match(body, /done 4/, "the POST's result reached the client");
    });
  });
});

describe("review: graceful close of GET streams", () => {
  it("an open GET stream is ended at close, well before the grace period runs out", async () => {
    await withHarness({}, async (harness) => {
      const token = await harness.token("alice");
      const sessionId = await initializeSession(`${harness.url}/mcp`, token);
      const response = await fetch(`${harness.url}/mcp`, {
        headers: {
          accept: "text/event-stream",
          authorization: `Bearer ${token}`,
          "mcp-session-id": sessionId,
          "mcp-protocol-version": "2025-11-25",
        },
      });
      assert.equal(response.status, 200);
      const text = response.text();
      const started = Date.now();
      await harness.gateway.close({ graceMs: 5_000 });
      await text;
      assert.ok(Date.now() - started < 4_000, "the stream did not hold the close for the whole grace");
    });
  });
});

describe("review: version lock", () => {
  it("a batch without MCP-Protocol-Version on a 2025-11-25 session is refused, never forwarded", async () => {
    const upstream = await startRecordingUpstream();
    try {
      await withHarness(
        { upstreams: [{ name: "rec", path: "/mcp", url: upstream.url }] },
        async (harness) => {
          const token = await harness.token("alice");
          const sessionId = await initializeSession(`${harness.url}/mcp`, token);
          const before = upstream.requests.length;
          const response = await fetch(`${harness.url}/mcp`, {
            method: "POST",
            // No MCP-Protocol-Version: the request speaks the session's version (2025-11-25), which
            // has no batches; it must not be policed as 2025-03-26.
            headers: mcpHeaders({ authorization: `Bearer ${token}`, "mcp-session-id": sessionId }),
            body: JSON.stringify([
              { jsonrpc: "2.0", id: 2, method: "tools/list" },
              { jsonrpc: "2.0", id: 3, method: "tools/list" },
            ]),
          });
          const body = (await response.json()) as { error?: { data?: { code?: string } } };
          assert.equal(response.status, 400);
          assert.equal(body.error?.data?.code, "ERR_BATCH_REFUSED");
          assert.equal(upstream.requests.length, before, "nothing reached the upstream");
        },
      );
    } finally {
      await upstream.close();
    }
  });
});

describe("review: anonymous mode and authenticated sessions", () => {
  const NEVER_EXISTED = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

  async function post(url: string, sessionId: string, token?: string) {
    const response = await fetch(url, {
      method: "POST",
      headers: mcpHeaders({
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        "mcp-session-id": sessionId,
        "mcp-protocol-version": "2025-11-25",
      }),
      body: JSON.stringify({ jsonrpc: "2.0", id: 9, method: "tools/list" }),
    });
    const headers = Object.fromEntries(
      [...response.headers].filter(([name]) => name !== "date" && name !== "keep-alive"),
    );
    return { status: response.status, headers, body: await response.text() };
  }

  it("an anonymous caller with A's session id gets exactly the unknown-id answer; the attempt is audited as foreign", async () => {
    await withHarness({ anonymous: true }, async (harness) => {
      const url = `${harness.url}/mcp`;
      const token = await harness.token("alice");
      const aliceSession = await initializeSession(url, token);
      const unknown = await post(url, NEVER_EXISTED);
      const foreign = await post(url, aliceSession);
      assert.equal(foreign.status, 404);
      assert.deepEqual(foreign, unknown);
      // A's session still works for A.
      assert.equal((await post(url, aliceSession, token)).status, 200);
      const denials = harness.events.filter((event) => event.type === "session.denied");
      assert.ok(
        denials.some((event) => event.reason === "foreign-principal" && event.sessionTag !== undefined),
        `an anonymous caller presenting an authenticated session is audited as foreign: ${JSON.stringify(denials)}`,
      );
    });
  });

  it("an authenticated caller with an anonymous session id gets the unknown-id answer", async () => {
    await withHarness({ anonymous: true }, async (harness) => {
      const url = `${harness.url}/mcp`;
      const anonymousSession = await initializeSession(url, undefined);
      assert.equal((await post(url, anonymousSession)).status, 200, "the anonymous holder uses it");
      const token = await harness.token("bob");
      const unknown = await post(url, NEVER_EXISTED, token);
      const foreign = await post(url, anonymousSession, token);
      assert.equal(foreign.status, 404);
      assert.deepEqual(foreign, unknown);
    });
  });
});
