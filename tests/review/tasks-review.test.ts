/**
 * Findings of the security review of task ownership and modern requests, each driven end to end
 * through a real gateway in front of a scripted upstream (the upstream's answer framing is what the
 * findings are about).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { inspectSse } from "../../src/gateway/response-inspector.ts";
import { type Harness, mcpHeaders, startHarness } from "../support/gateway-harness.ts";

type Script = (body: unknown, request: IncomingMessage, response: ServerResponse) => boolean;

interface ScriptedUpstream {
  readonly url: string;
  /** Answers the next matching request; returns false to fall through to the default answer. */
  script: Script | null;
  close(): Promise<void>;
}

/** Answers initialize (with the version asked for) and, unless scripted, `{}` to everything. */
async function startScriptedUpstream(): Promise<ScriptedUpstream> {
  const state: ScriptedUpstream = {
    url: "",
    script: null,
    close: async () => undefined,
  };
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      let body: unknown = null;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {}
      if (state.script?.(body, request, response)) return;
      const message = body as { id?: unknown; method?: string; params?: { protocolVersion?: string } } | null;
      if (message?.method === "initialize") {
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
              capabilities: { tools: {}, tasks: { list: {}, requests: { tools: { call: {} } } } },
              serverInfo: { name: "scripted", version: "1" },
            },
          }),
        );
        return;
      }
      if (message === null || message.id === undefined || Array.isArray(body)) {
        response.writeHead(202).end();
        return;
      }
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ jsonrpc: "2.0", id: message.id, result: {} }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return Object.assign(state, {
    url: `http://127.0.0.1:${port}/mcp`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  });
}

const LEGACY_TASK = (id: unknown, taskId: string) => ({
  jsonrpc: "2.0",
  id,
  result: { task: { taskId, status: "working", createdAt: "2026-01-01T00:00:00Z", ttl: 60_000 } },
});

async function initialize(url: string, token: string, protocolVersion: string): Promise<string> {
  const response = await fetch(url, {
    method: "POST",
    headers: mcpHeaders({ authorization: `Bearer ${token}` }),
    body: JSON.stringify({
      jsonrpc: "2.0",
      id: 1,
      method: "initialize",
      params: { protocolVersion, capabilities: {}, clientInfo: { name: "review", version: "1" } },
    }),
  });
  await response.arrayBuffer();
  const sessionId = response.headers.get("mcp-session-id");
  assert.ok(sessionId, `initialize answered ${response.status}`);
  return sessionId;
}

async function post(
  url: string,
  token: string,
  sessionId: string,
  version: string,
  body: unknown,
): Promise<{ status: number; text: string }> {
  const response = await fetch(url, {
    method: "POST",
    headers: mcpHeaders({
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": version,
    }),
    body: JSON.stringify(body),
  });
  return { status: response.status, text: await response.text() };
}

describe("review: task ownership behind a scripted upstream", () => {
  let upstream: ScriptedUpstream;
  let harness: Harness;
  let url: string;
  let alice: string;
  let bob: string;
  before(async () => {
    upstream = await startScriptedUpstream();
    harness = await startHarness({
      upstreams: [
        {
          name: "scripted",
          path: "/mcp",
          url: upstream.url,
          protocolVersions: ["2025-03-26", "2025-11-25", "2026-07-28"],
        },
      ],
    });
    url = `${harness.url}/mcp`;
    alice = await harness.token("alice");
    bob = await harness.token("bob");
  });
  after(async () => {
    await harness.close();
    await upstream.close();
  });

  /** A task the upstream hands to alice in a plain JSON answer (claimed for her). */
  async function aliceTask(): Promise<string> {
    const taskId = `task-${randomBytes(8).toString("hex")}`;
    const session = await initialize(url, alice, "2025-11-25");
    upstream.script = (body, _request, response) => {
      const message = body as { id?: unknown; method?: string };
      if (message.method !== "tools/call") return false;
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify(LEGACY_TASK(message.id, taskId)));
      return true;
    };
    const created = await post(url, alice, session, "2025-11-25", {
      jsonrpc: "2.0",
      id: 2,
      method: "tools/call",
      params: { name: "slow", arguments: {}, task: { ttl: 60_000 } },
    });
    assert.match(created.text, new RegExp(taskId));
    upstream.script = null;
    return taskId;
  }

  it("2025-03-26 batch: a tasks/list answered as a JSON array is filtered, and a task it creates is claimed", async () => {
    const foreign = await aliceTask();
    const session = await initialize(url, bob, "2025-03-26");
    upstream.script = (body, _request, response) => {
      if (!Array.isArray(body)) return false;
      response.writeHead(200, { "content-type": "application/json" });
      response.end(
        JSON.stringify([
          { jsonrpc: "2.0", id: 5, result: { tasks: [{ taskId: foreign, status: "working" }] } },
          LEGACY_TASK(6, `bob-${foreign}`),
        ]),
      );
      return true;
    };
    const answer = await post(url, bob, session, "2025-03-26", [
      { jsonrpc: "2.0", id: 5, method: "tasks/list", params: {} },
      { jsonrpc: "2.0", id: 6, method: "tools/call", params: { name: "slow", arguments: {} } },
    ]);
    upstream.script = null;
    assert.equal(answer.status, 200);
    const [list] = JSON.parse(answer.text) as Array<{ result: { tasks: unknown[] } }>;
    assert.deepEqual(list?.result.tasks, [], "B's list never shows A's task");
    // The task the batch created is B's: B may poll it.
    const polled = await post(url, bob, session, "2025-03-26", {
      jsonrpc: "2.0",
      id: 7,
      method: "tasks/get",
      params: { taskId: `bob-${foreign}` },
    });
    assert.doesNotMatch(polled.text, /-32602/, "the batch's task was claimed for B");
  });

  it("2025-03-26 batch over SSE: an event carrying a JSON array is inspected too", async () => {
    const foreign = await aliceTask();
    const session = await initialize(url, bob, "2025-03-26");
    upstream.script = (body, _request, response) => {
      if (!Array.isArray(body)) return false;
      response.writeHead(200, { "content-type": "text/event-stream" });
      response.end(
        `data: ${JSON.stringify([{ jsonrpc: "2.0", id: 5, result: { tasks: [{ taskId: foreign, status: "working" }] } }])}\n\n`,
      );
      return true;
    };
    const answer = await post(url, bob, session, "2025-03-26", [
      { jsonrpc: "2.0", id: 5, method: "tasks/list", params: {} },
    ]);
    upstream.script = null;
    assert.doesNotMatch(answer.text, new RegExp(foreign), "B's list never shows A's task");
  });

  it("a tasks/list answer replayed on a GET stream (resumption) is filtered like the POST's", async () => {
    const foreign = await aliceTask();
    const session = await initialize(url, bob, "2025-11-25");
    upstream.script = (_body, request, response) => {
      if (request.method !== "GET") return false;
      // What an upstream with an event store replays after B's POST stream broke before its answer.
      response.writeHead(200, { "content-type": "text/event-stream" });
      response.end(
        `id: 1\ndata: ${JSON.stringify({ jsonrpc: "2.0", id: 5, result: { tasks: [{ taskId: foreign, status: "working" }] } })}\n\n`,
      );
      return true;
    };
    const response = await fetch(url, {
      headers: {
        accept: "text/event-stream",
        authorization: `Bearer ${bob}`,
        "mcp-session-id": session,
        "mcp-protocol-version": "2025-11-25",
      },
    });
    const text = await response.text();
    upstream.script = null;
    assert.equal(response.status, 200);
    assert.match(text, /"tasks":\[\]/, "the replayed answer reached B, filtered");
    assert.doesNotMatch(text, new RegExp(foreign), "B's stream never shows A's task");
  });

  it("a tasks/list answer over the 16 MiB inspection bound is never passed on unfiltered", async () => {
    const foreign = await aliceTask();
    const session = await initialize(url, bob, "2025-11-25");
    upstream.script = (body, _request, response) => {
      const message = body as { id?: unknown; method?: string };
      if (message.method !== "tasks/list") return false;
      const padding = "x".repeat(17 * 1024 * 1024);
      response.writeHead(200, { "content-type": "application/json" });
      response.end(
        JSON.stringify({
          jsonrpc: "2.0",
          id: message.id,
          result: { tasks: [{ taskId: foreign, status: "working", statusMessage: padding }] },
        }),
      );
      return true;
    };
    const answer = await post(url, bob, session, "2025-11-25", {
      jsonrpc: "2.0",
      id: 9,
      method: "tasks/list",
      params: {},
    }).catch((error: unknown) => ({ status: 0, text: String(error) }));
    upstream.script = null;
    assert.doesNotMatch(answer.text.slice(0, 4096), new RegExp(foreign), "B's list never shows A's task");
    assert.ok(!answer.text.includes(foreign), "B's list never shows A's task");
    assert.equal(answer.status, 502, "refused as an upstream failure");
  });
});

/** The messages the hook saw, and the bytes the client got, for a stream fed in the given pieces. */
async function throughInspector(pieces: readonly string[]): Promise<{ seen: unknown[]; out: string }> {
  const seen: unknown[] = [];
  const transform = inspectSse(async (message) => {
    seen.push(message);
    return message["replace"] === true ? { replaced: true } : undefined;
  });
  const chunks: Buffer[] = [];
  transform.on("data", (chunk: Buffer) => chunks.push(Buffer.from(chunk)));
  const ended = new Promise((resolve) => transform.on("end", resolve));
  for (const piece of pieces) transform.write(Buffer.from(piece, "utf8"));
  transform.end();
  await ended;
  return { seen, out: Buffer.concat(chunks).toString("utf8") };
}

describe("review: SSE events split as an EventSource client splits them", () => {
  const framings: Record<string, string> = {
    "LF then CRLF": "\n\r\n",
    "CRLF then CR": "\r\n\r",
    "LF then CR": "\n\r",
    "CR then CRLF": "\r\r\n",
  };
  for (const [name, end] of Object.entries(framings)) {
    it(`events ended by ${name} are each inspected`, async () => {
      const text = `data: {"n":1}${end}data: {"n":2,"replace":true}${end}data: {"n":3}${end}`;
      const whole = await throughInspector([text]);
      assert.deepEqual(whole.seen, [{ n: 1 }, { n: 2, replace: true }, { n: 3 }]);
      assert.doesNotMatch(whole.out, /"n":2/, "the replaced event is not passed on");
      const byteByByte = await throughInspector([...text]);
      assert.deepEqual(byteByByte.seen, whole.seen);
      assert.doesNotMatch(byteByByte.out, /"n":2/);
    });
  }

  it("a leading byte order mark does not hide the first event's data", async () => {
    const { seen, out } = await throughInspector(['\ufeffdata: {"replace":true}\n\n']);
    assert.deepEqual(seen, [{ replace: true }]);
    assert.match(out, /replaced/);
  });
});
