/**
 * The official v2 client SDK (@modelcontextprotocol/client 2.4.0, `versionNegotiation: { mode: "auto" }`)
 * THROUGH THE GATEWAY to a modern upstream built on the v2 server SDK (tests/support/modern-upstream.ts).
 * The client holds only its bearer token; the upstream identifies the caller from the gateway's
 * Tenantgate-Assertion. Covered: the modern negotiation (server/discover, no session ever), identity,
 * mirrored headers in their base64 form, progress over SSE, multi-round-trip input with the SDK's own
 * elicitation handler and the gateway's sealing of requestState, a task's whole life cycle, and
 * another caller's every attempt on that task.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  Client,
  type JSONRPCMessage,
  type Progress,
  StreamableHTTPClientTransport,
  type SubscriptionFilter,
} from "@modelcontextprotocol/client";
import * as z from "zod";
import { type Harness, mcpHeaders, startHarness, TEST_ISSUER } from "../support/gateway-harness.ts";
import {
  type ModernUpstream,
  type RecordedRequest,
  startModernUpstream,
  TASKS_EXTENSION,
} from "../support/modern-upstream.ts";

const MODERN = "2026-07-28";

/** One HTTP exchange between the SDK client and the gateway, as the client's fetch saw it. */
interface Exchange {
  readonly requestHeaders: Headers;
  readonly requestBody: string;
  readonly status: number;
  readonly responseHeaders: Headers;
  /** The body of a JSON answer; SSE answers are not read here. */
  body?: string;
}

interface Connected {
  readonly client: Client;
  readonly exchanges: Exchange[];
}

/** A fetch that records what the client sent and what the gateway answered. */
function recordingFetch(exchanges: Exchange[]) {
  return async (input: string | URL, init?: RequestInit): Promise<Response> => {
    const response = await fetch(input, init);
    const exchange: Exchange = {
      requestHeaders: new Headers(init?.headers),
      requestBody: typeof init?.body === "string" ? init.body : "",
      status: response.status,
      responseHeaders: response.headers,
    };
    exchanges.push(exchange);
    if (!(response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
      exchange.body = await response.clone().text();
    }
    return response;
  };
}

function textOf(result: { content?: unknown }): string {
  const [first] = (result.content ?? []) as { type: string; text: string }[];
  assert.equal(first?.type, "text");
  return first.text;
}

interface RpcBody {
  method?: string;
  id?: unknown;
  params?: Record<string, unknown>;
}

/** The JSON-RPC body the upstream received. */
function bodyOf(record: RecordedRequest): RpcBody {
  return JSON.parse(record.body);
}

/** The JSON-RPC body the client sent. */
function sentBody(exchange: Exchange): RpcBody {
  return JSON.parse(exchange.requestBody);
}

/** The result (or error) of a recorded upstream answer, JSON or SSE. */
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

interface RpcError {
  readonly code?: number;
  readonly message?: string;
  readonly data?: unknown;
}

/** What a refusal looks like to the SDK's caller. */
async function refusal(promise: Promise<unknown>): Promise<RpcError> {
  try {
    await promise;
  } catch (error) {
    const { code, message, data } = error as RpcError;
    return { code, message, data };
  }
  assert.fail("expected a refusal");
}

describe("the v2 client SDK through the gateway to a modern v2-SDK upstream", () => {
  let upstream: ModernUpstream;
  let harness: Harness;
  let url: string;
  let aliceToken: string;
  let bobToken: string;
  let alice: Connected;
  let bob: Connected;

  async function connect(token: string): Promise<Connected> {
    const exchanges: Exchange[] = [];
    const transport = new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { authorization: `Bearer ${token}` } },
      fetch: recordingFetch(exchanges),
    });
    const client = new Client(
      { name: "modern-sdk-e2e", version: "0.0.0" },
      {
        versionNegotiation: { mode: "auto" },
        capabilities: { elicitation: {}, extensions: { [TASKS_EXTENSION]: {} } },
      },
    );
    // The SDK's own elicitation handler answers the embedded input requests of input_required.
    client.setRequestHandler("elicitation/create", async () => ({
      action: "accept",
      content: { name: "Ada" },
    }));
    await client.connect(transport);
    return { client, exchanges };
  }

  /**
   * The v2 `Client` rejects a `resultType: "task"` answer (SDK 2.4.0 has no tasks-extension client),
   * so a task-creating call goes through a bare SDK transport: its headers are still the SDK's own,
   * derived from the per-request `_meta` envelope built here the way `Client` builds it.
   */
  async function createTask(
    token: string,
    name: string,
    args: Record<string, unknown>,
  ): Promise<Record<string, unknown>> {
    const transport = new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { authorization: `Bearer ${token}` } },
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
      method: "tools/call",
      params: {
        name,
        arguments: args,
        _meta: {
          "io.modelcontextprotocol/protocolVersion": MODERN,
          "io.modelcontextprotocol/clientInfo": { name: "raw", version: "0.0.0" },
          "io.modelcontextprotocol/clientCapabilities": { extensions: { [TASKS_EXTENSION]: {} } },
        },
      },
    });
    const message = (await answer) as { result?: Record<string, unknown> };
    await transport.close();
    assert.ok(message.result, `${name} created a task`);
    return message.result;
  }

  /** Polls tasks/get with the SDK client, echoing each answer's requestState, until `until` holds. */
  async function pollTask(
    client: Client,
    taskId: string,
    requestState: string | undefined,
    until: (status: string) => boolean,
  ) {
    let state = requestState;
    for (let attempt = 0; attempt < 100; attempt++) {
      const task = await client.request(
        { method: "tasks/get", params: { taskId, ...(state !== undefined && { requestState: state }) } },
        TaskSchema,
      );
      if (until(task.status)) return task;
      state = task.requestState;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    throw new Error(`task ${taskId} never reached the awaited status`);
  }

  function upstreamCalls(method: string, name?: string): RecordedRequest[] {
    return upstream.requests.filter((record) => {
      if (record.method !== "POST") return false;
      const body = bodyOf(record);
      return body.method === method && (name === undefined || body.params?.["name"] === name);
    });
  }

  /** Every requestState the upstream minted (in any answer it gave). */
  function upstreamStates(): Set<string> {
    const states = new Set<string>();
    for (const record of upstream.requests) {
      if (record.response === undefined || record.method !== "POST") continue;
      const result = resultOf(record);
      if (typeof result?.["requestState"] === "string") states.add(result["requestState"]);
    }
    return states;
  }

  before(async () => {
    upstream = await startModernUpstream();
    harness = await startHarness({
      upstreams: [
        { name: "modern", path: "/mcp", url: upstream.url, protocolVersions: [MODERN, "2025-11-25"] },
      ],
    });
    url = `${harness.url}/mcp`;
    aliceToken = await harness.token("alice");
    bobToken = await harness.token("bob");
    alice = await connect(aliceToken);
    bob = await connect(bobToken);
  });
  after(async () => {
    await alice?.client.close();
    await bob?.client.close();
    await harness?.close();
    await upstream?.close();
  });

  it("M1 connect negotiates 2026-07-28 through the gateway: server/discover reaches the upstream with MCP-Protocol-Version 2026-07-28, no Mcp-Session-Id anywhere", () => {
    assert.equal(alice.client.getProtocolEra(), "modern");
    assert.equal(alice.client.getNegotiatedProtocolVersion(), MODERN);
    assert.deepEqual(alice.client.getDiscoverResult()?.supportedVersions, [MODERN]);
    assert.deepEqual(alice.client.getServerCapabilities()?.extensions, { [TASKS_EXTENSION]: {} });

    const probes = upstreamCalls("server/discover");
    assert.equal(probes.length, 2, "one probe per client, each forwarded");
    for (const probe of probes) {
      assert.equal(probe.headers["mcp-protocol-version"], MODERN);
      assert.equal(probe.headers["mcp-method"], "server/discover");
      assert.equal(probe.headers["mcp-session-id"], undefined);
      assert.equal(probe.headers["authorization"], undefined, "the client's token stays at the gateway");
      assert.equal(typeof probe.headers["tenantgate-assertion"], "string");
      assert.equal(resultOf(probe)["resultType"], "complete");
    }
    assert.equal(upstreamCalls("initialize").length, 0, "no 2025 fallback");
    for (const exchange of [...alice.exchanges, ...bob.exchanges]) {
      assert.equal(exchange.requestHeaders.get("mcp-session-id"), null);
      assert.equal(exchange.responseHeaders.get("mcp-session-id"), null);
    }
  });

  it("whoami through the gateway names the token's subject, tenant and issuer, from the gateway's assertion", async () => {
    const mine = JSON.parse(textOf(await alice.client.callTool({ name: "whoami", arguments: {} })));
    assert.deepEqual(mine, { subject: "alice", tenant: "t-alice", issuer: TEST_ISSUER });
    const theirs = JSON.parse(textOf(await bob.client.callTool({ name: "whoami", arguments: {} })));
    assert.deepEqual(theirs, { subject: "bob", tenant: "t-bob", issuer: TEST_ISSUER });
    for (const call of upstreamCalls("tools/call", "whoami")) {
      assert.equal(call.headers["mcp-name"], "whoami");
      assert.equal(call.headers["authorization"], undefined);
      const [header] = String(call.headers["tenantgate-assertion"]).split(".");
      assert.equal(
        JSON.parse(Buffer.from(header ?? "", "base64url").toString("utf8")).typ,
        "tenantgate-assertion+jwt",
      );
    }
  });

  it("echo answers; tagged_echo's non-ASCII tag passes the gateway in its Mcp-Param base64 form and reaches the upstream unchanged", async () => {
    assert.equal(
      textOf(await alice.client.callTool({ name: "echo", arguments: { text: "hello" } })),
      "hello",
    );
    // tools/list first, so the client knows the x-mcp-header annotation and sends Mcp-Param-Tag.
    const { tools } = await alice.client.listTools();
    assert.ok(tools.some((tool) => tool.name === "tagged_echo"));
    const tag = "héllo wörld";
    const encoded = `=?base64?${Buffer.from(tag, "utf8").toString("base64")}?=`;
    const answer = JSON.parse(
      textOf(await alice.client.callTool({ name: "tagged_echo", arguments: { tag, text: "x" } })),
    );
    assert.deepEqual(answer, { tag, text: "x", header: encoded });

    const sent = alice.exchanges.filter((exchange) => sentBody(exchange).params?.["name"] === "tagged_echo");
    assert.equal(sent.length, 1, "no -32020 retry: the gateway accepted the SDK's headers");
    assert.equal(sent[0]?.requestHeaders.get("mcp-param-tag"), encoded);
    assert.equal(sent[0]?.status, 200);
    const [received] = upstreamCalls("tools/call", "tagged_echo");
    assert.equal(received?.headers["mcp-param-tag"], encoded, "forwarded byte for byte");
    assert.deepEqual(bodyOf(received!).params?.["arguments"], { tag, text: "x" });
  });

  it("progress notifications arrive over an SSE answer relayed by the gateway", async () => {
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
    const [received] = upstreamCalls("tools/call", "progress");
    assert.equal(received?.response?.headers["content-type"], "text/event-stream");
    const relayed = alice.exchanges.find((exchange) => sentBody(exchange).params?.["name"] === "progress");
    assert.match(relayed?.responseHeaders.get("content-type") ?? "", /^text\/event-stream/);
  });

  it("M4 needs_input round-trips with the SDK's elicitation handler; the client only sees a gateway-sealed requestState, which B cannot replay", async () => {
    const result = await alice.client.callTool({ name: "needs_input", arguments: {} });
    assert.equal(textOf(result), "hello, Ada (round 1)");

    const [first, retry] = upstreamCalls("tools/call", "needs_input");
    assert.ok(first && retry);
    const minted = resultOf(first);
    assert.equal(minted["resultType"], "input_required");
    const upstreamState = String(minted["requestState"]);
    assert.equal(
      bodyOf(retry).params?.["requestState"],
      upstreamState,
      "the upstream got its own value back",
    );
    assert.deepEqual(bodyOf(retry).params?.["inputResponses"], {
      name: { action: "accept", content: { name: "Ada" } },
    });

    const retried = alice.exchanges.filter(
      (exchange) =>
        sentBody(exchange).params?.["name"] === "needs_input" &&
        "requestState" in (sentBody(exchange).params ?? {}),
    );
    assert.equal(retried.length, 1);
    const sealed = String(sentBody(retried[0]!).params?.["requestState"]);
    assert.notEqual(sealed, upstreamState, "the client never saw the upstream's state");
    assert.ok(!sealed.includes(upstreamState));

    // B replays A's sealed state with proper modern headers: refused before the upstream.
    const forwardedBefore = upstream.requests.length;
    const replay = await fetch(url, {
      method: "POST",
      headers: mcpHeaders({
        authorization: `Bearer ${bobToken}`,
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "needs_input",
      }),
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: 77,
        method: "tools/call",
        params: {
          name: "needs_input",
          arguments: {},
          inputResponses: { name: { action: "accept", content: { name: "Mallory" } } },
          requestState: sealed,
          _meta: {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": { elicitation: {} },
          },
        },
      }),
    });
    assert.equal(replay.status, 400);
    const refused = (await replay.json()) as { id: unknown; error: { data?: { code?: string } } };
    assert.equal(refused.id, 77);
    assert.equal(refused.error.data?.code, "ERR_SEALED_VALUE_INVALID");
    assert.equal(upstream.requests.length, forwardedBefore, "the replay never reached the upstream");
    assert.ok(
      harness.events.some((event) => event.type === "request.refused" && event.reason === "request-state"),
    );
  });

  it("T1 a task's full life cycle for A through the gateway (both eras are covered elsewhere; this is the SDK path): created, polled to completion, approved through tasks/update, cancelled", async () => {
    // slow_task: CreateTaskResult, then tasks/get (echoing the sealed requestState) until completed.
    const seed = await createTask(aliceToken, "slow_task", { steps: 2 });
    assert.equal(seed["resultType"], "task");
    assert.equal(seed["status"], "working");
    const slowId = String(seed["taskId"]);
    assert.equal(typeof seed["requestState"], "string");
    assert.ok(!upstreamStates().has(String(seed["requestState"])), "the seed's requestState is sealed");
    const done = await pollTask(alice.client, slowId, String(seed["requestState"]), (s) => s === "completed");
    assert.equal(done.result?.content[0]?.text, "slow_task done: 2 steps");
    const gets = upstreamCalls("tasks/get").filter((record) => bodyOf(record).params?.["taskId"] === slowId);
    assert.ok(gets.length >= 2);
    const minted = upstreamStates();
    for (const get of gets) {
      assert.equal(get.headers["mcp-name"], slowId);
      assert.equal(get.headers["mcp-method"], "tasks/get");
      const state = bodyOf(get).params?.["requestState"];
      assert.ok(typeof state === "string" && minted.has(state), "the upstream got its own requestState");
      assert.equal(resultOf(get)["taskId"], slowId, "the upstream served the poll");
    }

    // approval_task: input_required, answered by tasks/update with the task's requestState.
    const approval = await createTask(aliceToken, "approval_task", {});
    const approvalId = String(approval["taskId"]);
    const waiting = await pollTask(
      alice.client,
      approvalId,
      String(approval["requestState"]),
      (s) => s === "input_required",
    );
    assert.deepEqual(Object.keys(waiting.inputRequests ?? {}), ["approve"]);
    assert.equal(typeof waiting.requestState, "string");
    assert.ok(!upstreamStates().has(String(waiting.requestState)), "a poll's requestState is sealed too");
    const ack = await alice.client.request(
      {
        method: "tasks/update",
        params: {
          taskId: approvalId,
          inputResponses: { approve: { action: "accept", content: { approve: true } } },
          requestState: waiting.requestState,
        },
      },
      AckSchema,
    );
    assert.deepEqual(Object.keys(ack), ["_meta"]);
    const approved = await pollTask(alice.client, approvalId, waiting.requestState, (s) => s === "completed");
    assert.equal(approved.result?.content[0]?.text, "approved");
    const [update] = upstreamCalls("tasks/update");
    assert.equal(update?.headers["mcp-name"], approvalId);
    assert.ok(upstreamStates().has(String(bodyOf(update!).params?.["requestState"])));

    // tasks/cancel.
    const doomed = await createTask(aliceToken, "slow_task", { steps: 5 });
    const doomedId = String(doomed["taskId"]);
    await alice.client.request({ method: "tasks/cancel", params: { taskId: doomedId } }, AckSchema);
    const cancelled = await pollTask(alice.client, doomedId, undefined, () => true);
    assert.equal(cancelled.status, "cancelled");
    const [cancel] = upstreamCalls("tasks/cancel");
    assert.equal(cancel?.headers["mcp-name"], doomedId);
    assert.ok(harness.events.some((event) => event.type === "task.claimed"));
  });

  it("T1 B's tasks/get, tasks/update, tasks/cancel and subscriptions/listen on A's task get -32602 exactly like an unknown task, and none reaches the upstream", async () => {
    const seed = await createTask(aliceToken, "approval_task", {});
    const taskId = String(seed["taskId"]);
    const aliceState = String(seed["requestState"]);
    const unknownId = crypto.randomUUID();

    const forwardedBefore = upstream.requests.length;
    const attempts: Array<[string, (id: string) => Promise<unknown>]> = [
      ["tasks/get", (id) => bob.client.request({ method: "tasks/get", params: { taskId: id } }, TaskSchema)],
      [
        "tasks/get with A's requestState",
        (id) =>
          bob.client.request(
            { method: "tasks/get", params: { taskId: id, requestState: aliceState } },
            TaskSchema,
          ),
      ],
      [
        "tasks/update",
        (id) =>
          bob.client.request(
            {
              method: "tasks/update",
              params: {
                taskId: id,
                inputResponses: { approve: { action: "accept", content: { approve: false } } },
                requestState: aliceState,
              },
            },
            AckSchema,
          ),
      ],
      [
        "tasks/cancel",
        (id) => bob.client.request({ method: "tasks/cancel", params: { taskId: id } }, AckSchema),
      ],
      // The SDK's SubscriptionFilter type has no task filter in 2.4.0, but Client.listen sends the
      // filter as given: the tasks extension's `tasksStatus` goes on the wire.
      [
        "subscriptions/listen",
        (id) => bob.client.listen({ tasksStatus: [id] } as SubscriptionFilter, { timeout: 5_000 }),
      ],
    ];
    for (const [title, attempt] of attempts) {
      const stolen = await refusal(attempt(taskId));
      const unknown = await refusal(attempt(unknownId));
      assert.equal(stolen.code, -32602, title);
      assert.deepEqual(stolen, unknown, `${title}: A's task and an unknown one look alike`);
    }
    // On the wire too: the same status and body, but for the echoed id.
    const refusals = bob.exchanges.filter((exchange) => {
      const params = sentBody(exchange).params ?? {};
      return JSON.stringify(params).includes(taskId) || JSON.stringify(params).includes(unknownId);
    });
    assert.equal(refusals.length, attempts.length * 2);
    const generic = (exchange: Exchange) => {
      const { id: _id, ...rest } = JSON.parse(exchange.body ?? "null") as Record<string, unknown>;
      return `${exchange.status} ${JSON.stringify(rest)}`;
    };
    for (let index = 0; index < refusals.length; index += 2) {
      assert.equal(generic(refusals[index]!), generic(refusals[index + 1]!));
    }

    assert.equal(upstream.requests.length, forwardedBefore, "nothing of B's reached the upstream");
    assert.ok(harness.events.some((event) => event.type === "task.denied" && event.reason === "not-owned"));
    const still = await pollTask(alice.client, taskId, aliceState, () => true);
    assert.notEqual(still.status, "cancelled", "A's task is untouched");
  });

  it("M1 over the whole run: every request the upstream received was modern, none carried or got a session id", () => {
    const posts = upstream.requests.filter((record) => record.method === "POST");
    assert.ok(posts.length > 10);
    assert.equal(upstream.requests.length, posts.length, "no GET or DELETE reached the upstream");
    for (const record of posts) {
      assert.equal(record.headers["mcp-protocol-version"], MODERN, record.body);
      assert.equal(record.headers["mcp-session-id"], undefined);
      assert.equal(record.response?.headers["mcp-session-id"], undefined);
      assert.equal(typeof record.headers["tenantgate-assertion"], "string");
    }
    for (const exchange of [...alice.exchanges, ...bob.exchanges]) {
      assert.equal(exchange.requestHeaders.get("mcp-session-id"), null);
      assert.equal(exchange.responseHeaders.get("mcp-session-id"), null);
    }
  });
});
