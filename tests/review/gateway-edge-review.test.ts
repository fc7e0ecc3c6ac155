/**
 * Findings of the security review of the gateway edge, each driven end to end through a real
 * gateway (tests/support/gateway-harness.ts).
 */
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { type AddressInfo, connect } from "node:net";
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

describe("review: clientError answers", () => {
  it("a malformed request pipelined behind an open GET stream never writes into that stream", async () => {
    await withHarness({}, async (harness) => {
      const token = await harness.token("alice");
      const sessionId = await initializeSession(`${harness.url}/mcp`, token);
      const { port } = harness.gateway.address;
      const socket = connect(port, "127.0.0.1");
      let received = "";
      socket.on("data", (chunk: Buffer) => {
        received += chunk.toString("latin1");
      });
      socket.on("error", () => undefined);
      const closed = new Promise((resolve) => socket.once("close", resolve));
      socket.write(
        `GET /mcp HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\naccept: text/event-stream\r\n` +
          `authorization: Bearer ${token}\r\nmcp-session-id: ${sessionId}\r\n` +
          "mcp-protocol-version: 2025-11-25\r\n\r\n",
      );
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.match(received, /^HTTP\/1\.1 200 /);
      socket.write("NOT HTTP AT ALL\r\n\r\n");
      await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 1_000))]);
      socket.destroy();
      assert.equal(
        received.match(/HTTP\/1\.1 /g)?.length,
        1,
        `one status line only: ${JSON.stringify(received)}`,
      );
    });
  });

  it("a malformed request on a fresh connection still gets the generic 400", async () => {
    await withHarness({}, async (harness) => {
      const { port } = harness.gateway.address;
      const socket = connect(port, "127.0.0.1");
      let received = "";
      socket.on("data", (chunk: Buffer) => {
        received += chunk.toString("latin1");
      });
      socket.on("error", () => undefined);
      const closed = new Promise((resolve) => socket.once("close", resolve));
      socket.write("NOT HTTP AT ALL\r\n\r\n");
      await closed;
      assert.match(received, /^HTTP\/1\.1 400 /);
      assert.match(received, /ERR_REQUEST_INVALID/);
    });
  });
});

describe("review: upstream answers the gateway refuses", () => {
  it("a POST answer with a repeated content type is refused (502) and its body still read to its end", async () => {
    let finished: Promise<boolean> = Promise.resolve(false);
    const upstream = createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => {
        const message = JSON.parse(Buffer.concat(chunks).toString("utf8")) as { id: number; method: string };
        if (message.method === "initialize") {
          response.writeHead(200, { "content-type": "application/json", "mcp-session-id": "up-1" });
          response.end(
            JSON.stringify({
              jsonrpc: "2.0",
              id: message.id,
              result: {
                protocolVersion: "2025-11-25",
                capabilities: {},
                serverInfo: { name: "u", version: "1" },
              },
            }),
          );
          return;
        }
        response.writeHead(200, [
          ["content-type", "application/json"],
          ["content-type", "text/html"],
        ]);
        finished = new Promise((resolve) => {
          response.once("finish", () => resolve(true));
          setTimeout(() => resolve(false), 2_000);
        });
        // Far more than the socket and undici buffer: only a reader lets it all through.
        response.end(Buffer.alloc(8 * 1024 * 1024, 0x20));
      });
    });
    await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
    const { port } = upstream.address() as AddressInfo;
    try {
      await withHarness(
        { upstreams: [{ name: "dup", path: "/mcp", url: `http://127.0.0.1:${port}/mcp` }] },
        async (harness) => {
          const token = await harness.token("alice");
          const sessionId = await initializeSession(`${harness.url}/mcp`, token);
          const response = await fetch(`${harness.url}/mcp`, {
            method: "POST",
            headers: mcpHeaders({
              authorization: `Bearer ${token}`,
              "mcp-session-id": sessionId,
              "mcp-protocol-version": "2025-11-25",
            }),
            body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
          });
          await response.arrayBuffer();
          assert.equal(response.status, 502);
          assert.equal(await finished, true, "the upstream's answer was read to its end");
        },
      );
    } finally {
      upstream.closeAllConnections();
      await new Promise((resolve) => upstream.close(resolve));
    }
  });
});
