/**
 * Findings of the security review of the gateway edge, each driven end to end through a real
 * gateway (tests/support/gateway-harness.ts).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Harness, initializeSession, mcpHeaders, startHarness } from "../support/gateway-harness.ts";

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
