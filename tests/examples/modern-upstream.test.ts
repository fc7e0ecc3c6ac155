/**
 * The modern test upstream (tests/support/modern-upstream.ts), driven directly by the v2 client SDK
 * (@modelcontextprotocol/client 2.4.0, `versionNegotiation: { mode: "auto" }`): discovery, identity
 * from an (unverified) Tenantgate-Assertion, the SEP-2243 request headers, tasks, multi-round-trip
 * input and progress over SSE — and what the upstream saw on the wire.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  Client,
  type JSONRPCMessage,
  type Progress,
  StreamableHTTPClientTransport,
} from "@modelcontextprotocol/client";
import { Client as LegacyClient } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport as LegacyTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import * as z from "zod";
import {
  type ModernUpstream,
  type RecordedRequest,
  startModernUpstream,
  TASKS_EXTENSION,
} from "../support/modern-upstream.ts";

const MODERN = "2026-07-28";
const ISSUER = "https://idp.example.com";

function base64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString("base64url");
}

/** A JWT-shaped assertion with a junk signature: the test upstream decodes it without verifying. */
function fakeAssertion(subject: string, tenant = "acme"): string {
  return `${base64url({ alg: "EdDSA", typ: "JWT" })}.${base64url({
    iss: "http://127.0.0.1:7000",
    sub: subject,
    tenant,
    principal_iss: ISSUER,
    jti: crypto.randomUUID(),
    exp: Math.floor(Date.now() / 1000) + 60,
  })}.c2lnbmF0dXJl`;
}

interface Connected {
  client: Client;
  transport: StreamableHTTPClientTransport;
}

async function connect(upstream: ModernUpstream, subject: string, tasks = true): Promise<Connected> {
  const transport = new StreamableHTTPClientTransport(new URL(upstream.url), {
    requestInit: { headers: { "Tenantgate-Assertion": fakeAssertion(subject) } },
  });
  const client = new Client(
    { name: "modern-upstream-test", version: "0.0.0" },
    {
      versionNegotiation: { mode: "auto" },
      capabilities: { elicitation: {}, ...(tasks && { extensions: { [TASKS_EXTENSION]: {} } }) },
    },
  );
  client.setRequestHandler("elicitation/create", async (request) => {
    const properties = Object.keys(
      (request.params as { requestedSchema?: { properties?: object } }).requestedSchema?.properties ?? {},
    );
    const content: Record<string, string | boolean> = properties.includes("approve")
      ? { approve: true }
      : { name: "Ada" };
    return { action: "accept", content };
  });
  await client.connect(transport);
  return { client, transport };
}

function textOf(result: { content?: unknown }): string {
  const [first] = (result.content ?? []) as { type: string; text: string }[];
  assert.equal(first?.type, "text");
  return first.text;
}

function bodyOf(record: RecordedRequest): {
  method?: string;
  id?: unknown;
  params?: Record<string, unknown>;
} {
  return JSON.parse(record.body);
}

function callsOf(upstream: ModernUpstream, method: string, name?: string): RecordedRequest[] {
  return upstream.requests.filter((record) => {
    if (record.method !== "POST") return false;
    const body = bodyOf(record);
    return body.method === method && (name === undefined || body.params?.["name"] === name);
  });
}

function resultOf(record: RecordedRequest): Record<string, unknown> {
  const body = record.response?.body ?? "";
  const json = record.response?.headers["content-type"]?.startsWith("text/event-stream")
    ? (body
        .split("\n")
        .filter((line) => line.startsWith("data: "))
        .map((line) => JSON.parse(line.slice(6)))
        .find((message) => "result" in message || "error" in message) ?? {})
    : JSON.parse(body);
  return (json.result ?? json.error) as Record<string, unknown>;
}

/**
 * The v2 `Client` rejects a `resultType: "task"` answer (SDK 2.4.0 has no tasks-extension client),
 * so task-creating calls go through a bare SDK transport: its headers are still the SDK's own,
 * derived from the per-request `_meta` envelope this builds the way `Client` does.
 */
async function rawRequest(
  upstream: ModernUpstream,
  subject: string,
  method: string,
  params: Record<string, unknown>,
): Promise<JSONRPCMessage & { result?: Record<string, unknown>; error?: { code: number } }> {
  const transport = new StreamableHTTPClientTransport(new URL(upstream.url), {
    requestInit: { headers: { "Tenantgate-Assertion": fakeAssertion(subject) } },
  });
  const id = 1000;
  const answer = new Promise<JSONRPCMessage>((resolve) => {
    transport.onmessage = (message) => {
      if ("id" in message && message.id === id) resolve(message);
    };
  });
  await transport.start();
  await transport.send({
    jsonrpc: "2.0",
    id,
    method,
    params: {
      ...params,
      _meta: {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": { name: "raw", version: "0.0.0" },
        "io.modelcontextprotocol/clientCapabilities": { extensions: { [TASKS_EXTENSION]: {} } },
      },
    },
  });
  const message = await answer;
  await transport.close();
  return message as JSONRPCMessage & { result?: Record<string, unknown> };
}

const TaskSchema = z.looseObject({
  taskId: z.string(),
  status: z.enum(["working", "input_required", "completed", "failed", "cancelled"]),
  requestState: z.string().optional(),
  result: z
    .looseObject({ content: z.array(z.looseObject({ type: z.string(), text: z.string() })) })
    .optional(),
  inputRequests: z.record(z.string(), z.unknown()).optional(),
});
const AckSchema = z.looseObject({});

async function pollTask(client: Client, taskId: string, until: (status: string) => boolean) {
  let requestState: string | undefined;
  for (let attempt = 0; attempt < 100; attempt++) {
    const task = await client.request(
      { method: "tasks/get", params: { taskId, ...(requestState !== undefined && { requestState }) } },
      TaskSchema,
    );
    if (until(task.status)) return task;
    requestState = task.requestState;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`task ${taskId} never reached the awaited status`);
}

describe("modern upstream (v2 server SDK) driven by the v2 client", () => {
  let upstream: ModernUpstream;
  let alice: Connected;

  before(async () => {
    upstream = await startModernUpstream();
    alice = await connect(upstream, "alice");
  });
  after(async () => {
    await alice.client.close();
    await upstream.close();
  });

  it("negotiates 2026-07-28 through server/discover, which advertises the tasks extension", () => {
    assert.equal(alice.client.getProtocolEra(), "modern");
    assert.equal(alice.client.getNegotiatedProtocolVersion(), MODERN);
    assert.deepEqual(alice.client.getDiscoverResult()?.supportedVersions, [MODERN]);
    assert.deepEqual(alice.client.getServerCapabilities()?.extensions, { [TASKS_EXTENSION]: {} });

    const [probe] = callsOf(upstream, "server/discover");
    assert.ok(probe);
    assert.equal(probe.headers["mcp-protocol-version"], MODERN);
    assert.equal(probe.headers["mcp-method"], "server/discover");
    assert.equal(probe.headers["mcp-name"], undefined);
    assert.equal(bodyOf(probe).id, "server-discover-probe-1");
    assert.equal(resultOf(probe)["resultType"], "complete");
  });

  it("whoami reports the caller named by the Tenantgate-Assertion", async () => {
    const result = await alice.client.callTool({ name: "whoami", arguments: {} });
    assert.deepEqual(JSON.parse(textOf(result)), { subject: "alice", tenant: "acme", issuer: ISSUER });
    const [call] = callsOf(upstream, "tools/call", "whoami");
    assert.equal(call?.headers["mcp-name"], "whoami");
    assert.equal(typeof call?.headers["tenantgate-assertion"], "string");
  });

  it("echo answers in JSON; tagged_echo mirrors its argument in Mcp-Param-Tag, base64 when not plain ASCII", async () => {
    assert.equal(
      textOf(await alice.client.callTool({ name: "echo", arguments: { text: "hello" } })),
      "hello",
    );
    const [echo] = callsOf(upstream, "tools/call", "echo");
    assert.equal(echo?.response?.headers["content-type"], "application/json");

    // First tagged call: no tools/list cached yet, so no Mcp-Param-Tag: the upstream answers 400
    // -32020 and the client refetches tools/list, then retries with the header.
    const plain = await alice.client.callTool({ name: "tagged_echo", arguments: { tag: "blue", text: "x" } });
    assert.equal(JSON.parse(textOf(plain)).header, "blue");
    const unicode = await alice.client.callTool({
      name: "tagged_echo",
      arguments: { tag: "héllo", text: "x" },
    });
    assert.equal(JSON.parse(textOf(unicode)).header, `=?base64?${Buffer.from("héllo").toString("base64")}?=`);

    const calls = callsOf(upstream, "tools/call", "tagged_echo");
    assert.equal(calls.length, 3);
    assert.equal(calls[0]?.headers["mcp-param-tag"], undefined);
    assert.equal(calls[0]?.response?.status, 400);
    assert.equal(resultOf(calls[0]!)["code"], -32020);
    assert.equal(calls[1]?.headers["mcp-param-tag"], "blue");
    assert.equal(calls[2]?.headers["mcp-param-tag"], "=?base64?aMOpbGxv?=");
  });

  it("a task: CreateTaskResult, tasks/get polled to completion, hidden from another caller", async () => {
    // The v2 Client cannot take a CreateTaskResult itself.
    await assert.rejects(
      alice.client.callTool({ name: "slow_task", arguments: { steps: 2 } }),
      /Unsupported result type 'task'/,
    );
    const created = await rawRequest(upstream, "alice", "tools/call", {
      name: "slow_task",
      arguments: { steps: 2 },
    });
    const seed = created.result ?? {};
    assert.equal(seed["resultType"], "task");
    assert.equal(seed["status"], "working");
    assert.equal(typeof seed["taskId"], "string");
    assert.equal(typeof seed["requestState"], "string");
    assert.equal(seed["ttlSeconds"], 300);
    assert.equal(seed["result"], undefined);
    assert.equal(seed["content"], undefined);
    const taskId = String(seed["taskId"]);

    const done = await pollTask(alice.client, taskId, (status) => status === "completed");
    assert.equal(done.result?.content[0]?.text, "slow_task done: 2 steps");

    const bob = await connect(upstream, "bob");
    try {
      await assert.rejects(
        bob.client.request({ method: "tasks/get", params: { taskId } }, TaskSchema),
        (error: { code?: number }) => error.code === -32602,
      );
    } finally {
      await bob.client.close();
    }

    const gets = callsOf(upstream, "tasks/get").filter(
      (record) => bodyOf(record).params?.["taskId"] === taskId,
    );
    assert.ok(gets.length >= 2);
    for (const get of gets) assert.equal(get.headers["mcp-name"], taskId);
    assert.equal(resultOf(gets[0]!)["resultType"], "complete");
    // The requestState of one answer is echoed, top-level in params, on the next poll.
    assert.equal(bodyOf(gets[1]!).params?.["requestState"], resultOf(gets[0]!)["requestState"]);
  });

  it("a task cancelled with tasks/cancel; without the extension the same tool answers synchronously", async () => {
    const created = await rawRequest(upstream, "alice", "tools/call", { name: "slow_task", arguments: {} });
    const taskId = String(created.result?.["taskId"]);
    const ack = await alice.client.request({ method: "tasks/cancel", params: { taskId } }, AckSchema);
    assert.deepEqual(Object.keys(ack).sort(), ["_meta"]);
    const cancelled = await pollTask(alice.client, taskId, () => true);
    assert.equal(cancelled.status, "cancelled");
    const [cancel] = callsOf(upstream, "tasks/cancel");
    assert.equal(cancel?.headers["mcp-name"], taskId);
    assert.equal(resultOf(cancel!)["resultType"], "complete");

    const plain = await connect(upstream, "carol", false);
    try {
      const result = await plain.client.callTool({ name: "slow_task", arguments: { steps: 1 } });
      assert.equal(textOf(result), "slow_task done: 1 steps");
    } finally {
      await plain.client.close();
    }
  });

  it("a task that goes input_required and is completed through tasks/update", async () => {
    const created = await rawRequest(upstream, "alice", "tools/call", {
      name: "approval_task",
      arguments: {},
    });
    const taskId = String(created.result?.["taskId"]);
    const waiting = await pollTask(alice.client, taskId, (status) => status === "input_required");
    assert.deepEqual(Object.keys(waiting.inputRequests ?? {}), ["approve"]);
    const ack = await alice.client.request(
      {
        method: "tasks/update",
        params: {
          taskId,
          inputResponses: { approve: { action: "accept", content: { approve: true } } },
          ...(waiting.requestState !== undefined && { requestState: waiting.requestState }),
        },
      },
      AckSchema,
    );
    assert.deepEqual(Object.keys(ack), ["_meta"]);
    const done = await pollTask(alice.client, taskId, (status) => status === "completed");
    assert.equal(done.result?.content[0]?.text, "approved");
    const [update] = callsOf(upstream, "tasks/update");
    assert.equal(update?.headers["mcp-name"], taskId);
    assert.equal(update?.headers["mcp-method"], "tasks/update");
  });

  it("needs_input: input_required with a requestState, completed on the client's retry", async () => {
    const result = await alice.client.callTool({ name: "needs_input", arguments: {} });
    assert.equal(textOf(result), "hello, Ada (round 1)");
    const [first, retry] = callsOf(upstream, "tools/call", "needs_input");
    assert.ok(first && retry);
    const asked = resultOf(first);
    assert.equal(asked["resultType"], "input_required");
    assert.equal(typeof asked["requestState"], "string");
    assert.deepEqual(Object.keys(asked["inputRequests"] as object), ["name"]);
    const params = bodyOf(retry).params ?? {};
    assert.equal(params["requestState"], asked["requestState"]);
    assert.deepEqual(params["inputResponses"], { name: { action: "accept", content: { name: "Ada" } } });
    assert.notEqual(bodyOf(retry).id, bodyOf(first).id);
  });

  it("progress notifications arrive over an SSE answer", async () => {
    const seen: Progress[] = [];
    const result = await alice.client.callTool(
      { name: "progress", arguments: { steps: 3 } },
      { onprogress: (progress) => seen.push(progress) },
    );
    assert.equal(textOf(result), "progress done: 3 steps");
    assert.deepEqual(
      seen.map((progress) => progress.progress),
      [1, 2, 3],
    );
    const [call] = callsOf(upstream, "tools/call", "progress");
    assert.equal(call?.response?.headers["content-type"], "text/event-stream");
    assert.equal((call?.response?.body.match(/^event: message$/gm) ?? []).length, 4);
  });

  it("every request carried MCP-Protocol-Version 2026-07-28 and Mcp-Method; nothing carried a session id", () => {
    const posts = upstream.requests.filter((record) => record.method === "POST");
    assert.ok(posts.length > 10);
    for (const record of posts) {
      const body = bodyOf(record);
      assert.equal(record.headers["mcp-protocol-version"], MODERN, record.body);
      assert.equal(record.headers["mcp-session-id"], undefined);
      assert.equal(record.response?.headers["mcp-session-id"], undefined);
      if (body.id === undefined) continue; // notifications carry no Mcp-Method
      assert.equal(record.headers["mcp-method"], body.method);
      const name = body.params?.["name"] ?? body.params?.["taskId"];
      if (body.method === "tools/call" || body.method?.startsWith("tasks/")) {
        assert.equal(record.headers["mcp-name"], name);
      } else {
        assert.equal(record.headers["mcp-name"], undefined);
      }
    }
  });
});

describe("modern upstream, 2025 era on the same endpoint", () => {
  it("serves a v1 (2025-11-25) client statelessly: no session id, GET refused", async () => {
    const upstream = await startModernUpstream();
    const transport = new LegacyTransport(new URL(upstream.url), {
      requestInit: { headers: { "Tenantgate-Assertion": fakeAssertion("dave") } },
    });
    const client = new LegacyClient({ name: "legacy", version: "0.0.0" });
    try {
      await client.connect(transport);
      const result = (await client.callTool({ name: "whoami", arguments: {} })) as { content?: unknown };
      assert.equal(JSON.parse(textOf(result)).subject, "dave");
      assert.equal(transport.sessionId, undefined);
      const [initialize] = callsOf(upstream, "initialize");
      assert.equal(initialize?.headers["mcp-protocol-version"], undefined);
      assert.equal(initialize?.response?.headers["mcp-session-id"], undefined);
      const get = await fetch(upstream.url, { headers: { accept: "text/event-stream" } });
      await get.body?.cancel();
      assert.equal(get.status, 405);
    } finally {
      await client.close();
      await upstream.close();
    }
  });

  it("with legacy: reject, a 2025 initialize is answered -32022 naming 2026-07-28", async () => {
    const upstream = await startModernUpstream({ legacy: "reject" });
    try {
      const response = await fetch(upstream.url, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 1,
          method: "initialize",
          params: {
            protocolVersion: "2025-11-25",
            capabilities: {},
            clientInfo: { name: "raw", version: "0" },
          },
        }),
      });
      assert.equal(response.status, 400);
      const body = (await response.json()) as { error: { code: number; data: { supported: string[] } } };
      assert.equal(body.error.code, -32022);
      assert.deepEqual(body.error.data.supported, [MODERN]);
    } finally {
      await upstream.close();
    }
  });
});
