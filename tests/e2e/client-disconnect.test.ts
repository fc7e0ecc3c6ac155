/**
 * 2025-11-25 transports: a client that disconnects does not cancel its request. The upstream here
 * answers a tool call with an SSE stream whose final response comes later; the client aborts after
 * the first event. The upstream must still finish writing its answer (the gateway keeps reading it),
 * and the gateway must stay healthy. A GET stream, by contrast, is dropped when its client leaves.
 */
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { type Harness, initializeSession, mcpHeaders, startHarness } from "../support/gateway-harness.ts";

interface Outcome {
  finished: boolean;
  closedEarly: boolean;
}

/** A legacy MCP upstream whose `tools/call` streams a progress event, then the result 300 ms later. */
async function startSlowUpstream(): Promise<{
  url: string;
  outcomes: Outcome[];
  forgetSessions(): void;
  close(): Promise<void>;
}> {
  const outcomes: Outcome[] = [];
  let forgotten = false;
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      if (forgotten) {
        // An upstream that restarted: it knows no session any more.
        response.writeHead(404, { "content-type": "application/json" }).end("{}");
        return;
      }
      if (request.method === "GET") {
        response.writeHead(200, { "content-type": "text/event-stream" });
        const outcome: Outcome = { finished: false, closedEarly: false };
        outcomes.push(outcome);
        response.on("close", () => {
          outcome.closedEarly = true;
        });
        response.write(": open\n\n");
        return;
      }
      if (request.method === "DELETE") {
        response.writeHead(200).end();
        return;
      }
      const message = JSON.parse(Buffer.concat(chunks).toString("utf8")) as { id?: number; method: string };
      if (message.id === undefined) {
        response.writeHead(202).end();
        return;
      }
      if (message.method === "initialize") {
        response.writeHead(200, { "content-type": "application/json", "mcp-session-id": "slow-session" });
        response.end(
          JSON.stringify({
            jsonrpc: "2.0",
            id: message.id,
            result: {
              protocolVersion: "2025-11-25",
              capabilities: {},
              serverInfo: { name: "slow", version: "1" },
            },
          }),
        );
        return;
      }
      const outcome: Outcome = { finished: false, closedEarly: false };
      outcomes.push(outcome);
      response.on("close", () => {
        if (!response.writableFinished) outcome.closedEarly = true;
      });
      response.writeHead(200, { "content-type": "text/event-stream" });
      response.write(
        `id: 1\ndata: ${JSON.stringify({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 1, progress: 1 } })}\n\n`,
      );
      setTimeout(() => {
        response.end(
          `id: 2\ndata: ${JSON.stringify({ jsonrpc: "2.0", id: message.id, result: { content: [] } })}\n\n`,
          () => {
            outcome.finished = true;
          },
        );
      }, 300);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    outcomes,
    forgetSessions: () => {
      forgotten = true;
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("client disconnects", () => {
  let upstream: Awaited<ReturnType<typeof startSlowUpstream>>;
  let harness: Harness;
  let token: string;
  let sessionId: string;
  before(async () => {
    upstream = await startSlowUpstream();
    harness = await startHarness({ upstreams: [{ name: "slow", path: "/mcp", url: upstream.url }] });
    token = await harness.token("alice");
    sessionId = await initializeSession(`${harness.url}/mcp`, token);
  });
  after(async () => {
    await harness.close();
    await upstream.close();
  });
  const headers = () =>
    mcpHeaders({
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-11-25",
    });

  it("a POST whose client leaves mid-stream still runs to its end upstream", async () => {
    const abort = new AbortController();
    const response = await fetch(`${harness.url}/mcp`, {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: 5,
        method: "tools/call",
        params: { name: "slow", arguments: {} },
      }),
      signal: abort.signal,
    });
    assert.equal(response.status, 200);
    const reader = response.body?.getReader();
    await reader?.read(); // the first event has arrived: the client now leaves
    abort.abort();
    const outcome = upstream.outcomes.at(-1);
    await new Promise((resolve) => setTimeout(resolve, 800));
    assert.deepEqual(outcome, { finished: true, closedEarly: false });

    // The gateway is unharmed: the same session answers again.
    const again = await fetch(`${harness.url}/mcp`, {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: 6,
        method: "tools/call",
        params: { name: "slow", arguments: {} },
      }),
    });
    assert.equal(again.status, 200);
    assert.match(await again.text(), /"id":6/);
  });

  it("a GET stream whose client leaves is closed upstream too", async () => {
    const abort = new AbortController();
    const response = await fetch(`${harness.url}/mcp`, {
      method: "GET",
      headers: { ...headers(), accept: "text/event-stream" },
      signal: abort.signal,
    });
    assert.equal(response.status, 200);
    await response.body?.getReader().read();
    const outcome = upstream.outcomes.at(-1);
    abort.abort();
    const deadline = Date.now() + 5_000;
    while (!outcome?.closedEarly && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(outcome?.closedEarly, true);
  });

  it("DELETE ends the session's open GET streams on this replica", async () => {
    const sessionToEnd = await initializeSession(`${harness.url}/mcp`, token);
    const own = mcpHeaders({
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionToEnd,
      "mcp-protocol-version": "2025-11-25",
    });
    const stream = await fetch(`${harness.url}/mcp`, {
      method: "GET",
      headers: { ...own, accept: "text/event-stream" },
    });
    assert.equal(stream.status, 200);
    const reader = stream.body?.getReader();
    await reader?.read();
    const ended = await fetch(`${harness.url}/mcp`, { method: "DELETE", headers: own });
    assert.equal(ended.status, 200);
    assert.equal(await ended.text(), "");
    // The stream ends (done) rather than staying open on a session that no longer exists.
    let done = false;
    while (!done) done = (await reader?.read())?.done ?? true;
    assert.equal(done, true);
  });

  it("S13 a GET stream ends when the token it was opened with expires", async () => {
    // A token with two seconds to live (nbf/exp are whole seconds; the clock skew allowance is the
    // issuer's, so the stream may outlive exp by at most that).
    const shortLived = await harness.token("alice", { expiresIn: 2 });
    const sessionOfShort = await initializeSession(`${harness.url}/mcp`, shortLived);
    const opened = Date.now();
    const stream = await fetch(`${harness.url}/mcp`, {
      method: "GET",
      headers: {
        ...mcpHeaders({
          authorization: `Bearer ${shortLived}`,
          "mcp-session-id": sessionOfShort,
          "mcp-protocol-version": "2025-11-25",
        }),
        accept: "text/event-stream",
      },
    });
    assert.equal(stream.status, 200);
    const reader = stream.body?.getReader();
    let done = false;
    while (!done) done = (await reader?.read())?.done ?? true;
    const lived = Date.now() - opened;
    assert.ok(lived < 15_000, `the stream ended ${lived} ms after opening`);
  });

  it("an upstream that forgot the session: a GET gets 404 and the gateway's session ends too", async () => {
    const forgottenSession = await initializeSession(`${harness.url}/mcp`, token);
    upstream.forgetSessions();
    const own = mcpHeaders({
      authorization: `Bearer ${token}`,
      "mcp-session-id": forgottenSession,
      "mcp-protocol-version": "2025-11-25",
    });
    const stream = await fetch(`${harness.url}/mcp`, {
      method: "GET",
      headers: { ...own, accept: "text/event-stream" },
    });
    assert.equal(stream.status, 404);
    assert.equal(
      ((await stream.json()) as { error: { data: { code: string } } }).error.data.code,
      "ERR_SESSION_NOT_FOUND",
    );
    assert.ok(harness.events.some((event) => event.type === "session.ended" && event.by === "upstream-gone"));
  });
});
