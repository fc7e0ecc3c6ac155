/**
 * Tasks bound to their owners, and modern (2026-07-28) requests, end to end: real gateway, real
 * store (every backend for the ownership cases), and a careless task upstream that checks nothing
 * itself (tests/support/task-upstream.ts), so every refusal seen here is the gateway's.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type Harness, initializeSession, mcpHeaders, startHarness } from "../support/gateway-harness.ts";
import { storeBackendCases } from "../support/store-cases.ts";
import { startTaskUpstream, type TaskUpstream } from "../support/task-upstream.ts";

const MODERN = "2026-07-28";
const LEGACY_AND_MODERN = ["2025-11-25", MODERN];
const NAME_FIELD: Record<string, string> = {
  "tools/call": "name",
  "tasks/get": "taskId",
  "tasks/update": "taskId",
  "tasks/cancel": "taskId",
};

interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly text: string;
  json(): {
    id?: unknown;
    result?: Record<string, unknown>;
    error?: { code: number; data?: { code?: string } };
  };
}

async function answerOf(response: Response): Promise<Answer> {
  const text = await response.text();
  return { status: response.status, headers: response.headers, text, json: () => JSON.parse(text) };
}

/** The JSON-RPC message of a JSON or SSE answer (the last `data:` of a stream). */
function messageOf(answer: Answer): ReturnType<Answer["json"]> {
  if ((answer.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
    const data = answer.text
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).trim());
    return JSON.parse(data.at(-1) ?? "null");
  }
  return answer.json();
}

let nextId = 1;

async function modern(
  url: string,
  token: string,
  method: string,
  params: Record<string, unknown>,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const field = NAME_FIELD[method];
  const name = field ? params[field] : undefined;
  const response = await fetch(url, {
    method: "POST",
    headers: mcpHeaders({
      authorization: `Bearer ${token}`,
      "mcp-protocol-version": MODERN,
      "mcp-method": method,
      ...(typeof name === "string" ? { "mcp-name": name } : {}),
      ...headers,
    }),
    body: JSON.stringify({
      jsonrpc: "2.0",
      id: nextId++,
      method,
      params: { ...params, _meta: { "io.modelcontextprotocol/protocolVersion": MODERN } },
    }),
  });
  return answerOf(response);
}

async function legacy(
  url: string,
  token: string,
  sessionId: string,
  method: string,
  params: Record<string, unknown>,
) {
  const response = await fetch(url, {
    method: "POST",
    headers: mcpHeaders({
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-11-25",
    }),
    body: JSON.stringify({ jsonrpc: "2.0", id: nextId++, method, params }),
  });
  return answerOf(response);
}

/** Status and body of a refusal, with the echoed JSON-RPC id taken out. */
function generic(answer: Answer): string {
  const { id: _id, ...rest } = answer.json();
  return `${answer.status} ${JSON.stringify(rest)}`;
}

for (const backend of await storeBackendCases("tasks-e2e")) {
  describe(`tasks bound to their owners on ${backend.name}`, { skip: backend.skip }, () => {
    let upstream: TaskUpstream;
    let harness: Harness;
    let cleanup: () => Promise<void>;
    let url: string;
    let alice: string;
    let bob: string;
    before(async () => {
      const opened = await backend.open();
      cleanup = opened.cleanup;
      upstream = await startTaskUpstream();
      harness = await startHarness({
        store: opened.url,
        upstreams: [{ name: "tasks", path: "/mcp", url: upstream.url, protocolVersions: LEGACY_AND_MODERN }],
      });
      url = `${harness.url}/mcp`;
      alice = await harness.token("alice");
      bob = await harness.token("bob");
    });
    after(async () => {
      await harness.close();
      await upstream.close();
      await cleanup();
    });

    it("T1 modern: B's tasks/get, tasks/update, tasks/cancel and subscriptions/listen on A's task get what an unknown task gets, and nothing is forwarded", async () => {
      const created = messageOf(
        await modern(url, alice, "tools/call", { name: "start_task", arguments: {} }),
      );
      const taskId = String(created.result?.["taskId"]);
      assert.equal(created.result?.["resultType"], "task");
      const own = messageOf(await modern(url, alice, "tasks/get", { taskId }));
      assert.equal(own.result?.["taskId"], taskId, "the owner polls its task");

      const forwardedBefore = upstream.requests.length;
      const attempts = [
        ["tasks/get", { taskId }],
        ["tasks/update", { taskId, inputResponses: {} }],
        ["tasks/cancel", { taskId }],
        ["subscriptions/listen", { notifications: { tasksStatus: [taskId] } }],
      ] as const;
      for (const [method, params] of attempts) {
        const stolen = await modern(url, bob, method, params);
        const unknown = await modern(
          url,
          bob,
          method,
          JSON.parse(JSON.stringify(params).replace(taskId, "task-never")),
        );
        assert.equal(stolen.json().error?.code, -32602, method);
        assert.equal(generic(stolen), generic(unknown), `${method}: foreign and unknown look alike`);
      }
      assert.equal(upstream.requests.length, forwardedBefore, "nothing of B's reached the upstream");
      assert.ok(harness.events.some((event) => event.type === "task.denied" && event.reason === "not-owned"));
      const still = messageOf(await modern(url, alice, "tasks/get", { taskId }));
      assert.equal(still.result?.["status"], "working", "A's task is untouched");
    });

    it("T1 modern: a task created inside an SSE answer is claimed before the client sees it", async () => {
      const answer = await modern(url, alice, "tools/call", {
        name: "start_task",
        arguments: { stream: true },
      });
      assert.match(answer.headers.get("content-type") ?? "", /text\/event-stream/);
      const taskId = String(messageOf(answer).result?.["taskId"]);
      assert.equal(messageOf(await modern(url, alice, "tasks/get", { taskId })).result?.["taskId"], taskId);
      assert.equal(messageOf(await modern(url, bob, "tasks/get", { taskId })).error?.code, -32602);
    });

    it("T1 legacy: B cannot get, read the result of or cancel A's task, and B's tasks/list never shows it", async () => {
      const aliceSession = await initializeSession(url, alice);
      const bobSession = await initializeSession(url, bob);
      const created = messageOf(
        await legacy(url, alice, aliceSession, "tools/call", {
          name: "start_task",
          arguments: {},
          task: { ttl: 60_000 },
        }),
      );
      const taskId = String((created.result?.["task"] as { taskId?: string } | undefined)?.taskId);
      const forwardedBefore = upstream.requests.length;
      for (const method of ["tasks/get", "tasks/result", "tasks/cancel"]) {
        const stolen = await legacy(url, bob, bobSession, method, { taskId });
        assert.equal(stolen.json().error?.code, -32602, method);
      }
      assert.equal(upstream.requests.length, forwardedBefore, "nothing of B's reached the upstream");

      // Every page, following the (sealed) cursors.
      const listAll = async (token: string, session: string): Promise<string[]> => {
        const ids: string[] = [];
        let cursor: unknown;
        for (let page = 0; page < 50; page++) {
          const list = messageOf(
            await legacy(url, token, session, "tasks/list", cursor === undefined ? {} : { cursor }),
          );
          const listed = list.result?.["tasks"];
          assert.ok(Array.isArray(listed), "tasks/list answers a list");
          ids.push(...(listed as Array<{ taskId: string }>).map((task) => task.taskId));
          cursor = list.result?.["nextCursor"];
          if (typeof cursor !== "string") break;
        }
        return ids;
      };
      assert.ok(!(await listAll(bob, bobSession)).includes(taskId), "B's list never shows A's task");
      assert.ok((await listAll(alice, aliceSession)).includes(taskId), "A's list shows A's task");
      const result = messageOf(await legacy(url, alice, aliceSession, "tasks/result", { taskId }));
      assert.ok(result.result, "A reads its own task's result");
    });

    it("T1 legacy: tasks/list pages through cursors the gateway sealed; no cursor shows a task id, and B cannot use A's", async () => {
      const aliceSession = await initializeSession(url, alice);
      const bobSession = await initializeSession(url, bob);
      const created: string[] = [];
      for (let i = 0; i < 3; i++) {
        const answer = messageOf(
          await legacy(url, alice, aliceSession, "tools/call", {
            name: "start_task",
            arguments: {},
            task: { ttl: 60_000 },
          }),
        );
        created.push(String((answer.result?.["task"] as { taskId?: string } | undefined)?.taskId));
      }
      // Page through A's list: every cursor is sealed, and A sees all of its tasks.
      const seen: string[] = [];
      const cursors: string[] = [];
      let cursor: string | undefined;
      for (let page = 0; page < 20; page++) {
        const list = messageOf(
          await legacy(url, alice, aliceSession, "tasks/list", cursor === undefined ? {} : { cursor }),
        );
        const tasksOnPage = list.result?.["tasks"];
        assert.ok(Array.isArray(tasksOnPage), JSON.stringify(list));
        seen.push(...(tasksOnPage as Array<{ taskId: string }>).map((task) => task.taskId));
        const next = list.result?.["nextCursor"];
        if (typeof next !== "string") break;
        cursors.push(next);
        cursor = next;
      }
      for (const taskId of created) assert.ok(seen.includes(taskId), "A pages through all of its tasks");
      assert.ok(cursors.length > 0, "the list had more than one page");
      for (const sealed of cursors) {
        assert.doesNotMatch(sealed, /task-[0-9a-f]{12}/, "a cursor never shows a task id");
      }
      // B's own pages never show A's ids, in tasks or cursors.
      const bobsPage = await legacy(url, bob, bobSession, "tasks/list", {});
      for (const taskId of created) assert.ok(!bobsPage.text.includes(taskId));
      // A's cursor presented by B is refused, and nothing is forwarded.
      const forwardedBefore = upstream.requests.length;
      const stolen = await legacy(url, bob, bobSession, "tasks/list", { cursor: cursors[0] });
      assert.equal(stolen.status, 400);
      assert.equal(stolen.json().error?.data?.code, "ERR_SEALED_VALUE_INVALID");
      const raw = await legacy(url, bob, bobSession, "tasks/list", { cursor: created[0] });
      assert.equal(raw.status, 400, "a raw task id is not a cursor the gateway accepts");
      assert.equal(upstream.requests.length, forwardedBefore);
    });

    it("T7 the upstream hands one task id to A and to B: exactly one owns it, the other gets an error, the event is audited", async () => {
      upstream.sameTaskIdForEveryone("task-shared");
      try {
        const first = messageOf(
          await modern(url, alice, "tools/call", { name: "start_task", arguments: {} }),
        );
        const second = messageOf(await modern(url, bob, "tools/call", { name: "start_task", arguments: {} }));
        assert.equal(first.result?.["taskId"], "task-shared");
        assert.equal(second.result, undefined, "B is not handed A's task id");
        assert.equal(second.error?.data?.code, "ERR_UPSTREAM_UNAVAILABLE");
        assert.ok(harness.events.some((event) => event.type === "task.conflict"));
        assert.equal(
          messageOf(await modern(url, alice, "tasks/get", { taskId: "task-shared" })).result?.["taskId"],
          "task-shared",
        );
        assert.equal(
          messageOf(await modern(url, bob, "tasks/get", { taskId: "task-shared" })).error?.code,
          -32602,
        );
      } finally {
        upstream.sameTaskIdForEveryone(null);
      }
    });

    it("T1 task status notifications on a listen stream reach only the task's owner", async () => {
      const alicesTask = String(
        messageOf(await modern(url, alice, "tools/call", { name: "start_task", arguments: {} })).result?.[
          "taskId"
        ],
      );
      const bobsTask = String(
        messageOf(await modern(url, bob, "tools/call", { name: "start_task", arguments: {} })).result?.[
          "taskId"
        ],
      );
      const bobsStream = await modern(url, bob, "subscriptions/listen", {
        notifications: { toolsListChanged: true },
      });
      assert.match(bobsStream.text, /notifications\/subscriptions\/acknowledged/);
      assert.ok(bobsStream.text.includes(bobsTask), "B sees its own task's status");
      assert.ok(!bobsStream.text.includes(alicesTask), "B never sees A's task's status");
      const alicesStream = await modern(url, alice, "subscriptions/listen", {
        notifications: { toolsListChanged: true },
      });
      assert.ok(alicesStream.text.includes(alicesTask));
      assert.ok(!alicesStream.text.includes(bobsTask));
    });

    it("T3 a task id the gateway never saw created has no owner record and is refused, never served", async () => {
      // Created at the upstream directly, behind the gateway's back: no owner record exists.
      const direct = await fetch(upstream.url, {
        method: "POST",
        headers: mcpHeaders({ "mcp-protocol-version": MODERN }),
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/call", params: { name: "start_task" } }),
      });
      const taskId = String(((await direct.json()) as { result: { taskId: string } }).result.taskId);
      const forwardedBefore = upstream.requests.length;
      assert.equal(messageOf(await modern(url, alice, "tasks/get", { taskId })).error?.code, -32602);
      assert.equal(upstream.requests.length, forwardedBefore);
    });
  });
}

describe("modern requests through the gateway", () => {
  let upstream: TaskUpstream;
  let harness: Harness;
  let url: string;
  let alice: string;
  before(async () => {
    upstream = await startTaskUpstream();
    harness = await startHarness({
      upstreams: [{ name: "tasks", path: "/mcp", url: upstream.url, protocolVersions: LEGACY_AND_MODERN }],
    });
    url = `${harness.url}/mcp`;
    alice = await harness.token("alice");
  });
  after(async () => {
    await harness.close();
    await upstream.close();
  });

  it("M1 a modern request never creates, accepts or echoes a session id; Mcp-Session-Id and Last-Event-ID never reach the upstream", async () => {
    const answer = await modern(
      url,
      alice,
      "tools/list",
      {},
      { "mcp-session-id": "client-chosen", "last-event-id": "e-1" },
    );
    assert.equal(answer.status, 200);
    assert.equal(answer.headers.get("mcp-session-id"), null);
    const received = upstream.received("tools/list").at(-1);
    assert.ok(received);
    assert.equal(received.headers["mcp-session-id"], undefined);
    assert.equal(received.headers["last-event-id"], undefined);
    assert.equal(received.headers["mcp-protocol-version"], MODERN);
    assert.equal(received.headers["mcp-method"], "tools/list");
    // GET and DELETE have no place in the modern era.
    for (const method of ["GET", "DELETE"]) {
      const response = await fetch(url, {
        method,
        headers: { authorization: `Bearer ${alice}`, "mcp-protocol-version": MODERN },
      });
      assert.equal(response.status, 405);
    }
  });

  it("M2 a modern request to a modern-capable upstream is served; an unknown version gets -32022 listing both eras", async () => {
    assert.equal((await modern(url, alice, "tools/list", {})).status, 200);
    const response = await fetch(url, {
      method: "POST",
      headers: mcpHeaders({ authorization: `Bearer ${alice}`, "mcp-protocol-version": "2099-01-01" }),
      body: JSON.stringify({ jsonrpc: "2.0", id: 5, method: "tools/list" }),
    });
    assert.equal(response.status, 400);
    const body = (await response.json()) as { error: { code: number; data: { supported: string[] } } };
    assert.equal(body.error.code, -32022);
    assert.deepEqual(body.error.data.supported, [MODERN, "2025-11-25"]);
  });

  it("M3 mirrored headers that disagree with the body, and duplicate JSON keys, get 400 -32020 and reach nothing", async () => {
    const before = upstream.requests.length;
    const mismatched: Record<string, string>[] = [
      { "mcp-method": "tools/list" },
      { "mcp-name": "harmless_tool" },
      { "mcp-name": "=?base64?aGFybWxlc3NfdG9vbA==?=" },
    ];
    for (const headers of mismatched) {
      const answer = await modern(url, alice, "tools/call", { name: "start_task", arguments: {} }, headers);
      assert.equal(answer.status, 400, JSON.stringify(headers));
      assert.equal(answer.json().error?.code, -32020);
    }
    const duplicate = await fetch(url, {
      method: "POST",
      headers: mcpHeaders({
        authorization: `Bearer ${alice}`,
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "harmless_tool",
      }),
      body: `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"harmless_tool","name":"start_task","_meta":{"io.modelcontextprotocol/protocolVersion":"${MODERN}"}}}`,
    });
    assert.equal(duplicate.status, 400);
    assert.equal(((await duplicate.json()) as { error: { code: number } }).error.code, -32020);
    assert.equal(upstream.requests.length, before, "nothing reached the upstream");
    assert.ok(
      harness.events.some((event) => event.type === "request.refused" && event.reason === "header-mismatch"),
    );

    // The upstream receives exactly the values that were checked, base64 form included.
    await modern(
      url,
      alice,
      "tools/call",
      { name: "start_task", arguments: {} },
      {
        "mcp-name": "=?base64?c3RhcnRfdGFzaw==?=",
      },
    );
    assert.equal(upstream.received("tools/call").at(-1)?.headers["mcp-name"], "=?base64?c3RhcnRfdGFzaw==?=");
  });

  it("tasks/result and tasks/list are 2025-11-25 methods: in the modern era they are -32601", async () => {
    const before = upstream.requests.length;
    for (const method of ["tasks/result", "tasks/list"]) {
      const answer = await modern(url, alice, method, method === "tasks/result" ? { taskId: "t" } : {});
      assert.equal(answer.status, 404);
      assert.equal(answer.json().error?.code, -32601);
    }
    assert.equal(upstream.requests.length, before);
  });
});

describe("multi-round-trip requestState through the gateway", () => {
  let upstream: TaskUpstream;
  let harness: Harness;
  let url: string;
  before(async () => {
    upstream = await startTaskUpstream();
    harness = await startHarness({
      upstreams: [{ name: "tasks", path: "/mcp", url: upstream.url, protocolVersions: LEGACY_AND_MODERN }],
    });
    url = `${harness.url}/mcp`;
  });
  after(async () => {
    await harness.close();
    await upstream.close();
  });

  it("M4 requestState minted for A is sealed to A: A's retry works with the upstream's own value, B's replay is refused", async () => {
    const alice = await harness.token("alice");
    const bob = await harness.token("bob");
    const first = messageOf(await modern(url, alice, "tools/call", { name: "needs_input", arguments: {} }));
    assert.equal(first.result?.["resultType"], "input_required");
    const sealed = String(first.result?.["requestState"]);
    assert.doesNotMatch(sealed, /upstream-state-/, "the client never sees the upstream's state");

    const retry = messageOf(
      await modern(url, alice, "tools/call", {
        name: "needs_input",
        arguments: {},
        requestState: sealed,
        inputResponses: {},
      }),
    );
    const text = (retry.result?.["content"] as Array<{ text: string }> | undefined)?.[0]?.text ?? "";
    assert.match(text, /^completed with upstream-state-[0-9a-f]{8}$/, "the upstream got its own value back");

    const forwardedBefore = upstream.requests.length;
    const attempts: Array<[string, string, Record<string, unknown>]> = [
      ["B replays A's state", bob, { name: "needs_input", requestState: sealed }],
      ["A's state on another tool", alice, { name: "start_task", requestState: sealed }],
      ["a tampered state", alice, { name: "needs_input", requestState: `${sealed.slice(0, -2)}xx` }],
      [
        "a state the gateway never sealed",
        alice,
        { name: "needs_input", requestState: "upstream-state-00000000" },
      ],
    ];
    for (const [title, token, params] of attempts) {
      const answer = await modern(url, token, "tools/call", { arguments: {}, inputResponses: {}, ...params });
      assert.equal(answer.status, 400, title);
      assert.equal(answer.json().error?.data?.code, "ERR_SEALED_VALUE_INVALID", title);
    }
    assert.equal(upstream.requests.length, forwardedBefore, "no refused retry reached the upstream");
    assert.ok(
      harness.events.some((event) => event.type === "request.refused" && event.reason === "request-state"),
    );
  });
});

describe("anonymous modern clients hold task capabilities", () => {
  let upstream: TaskUpstream;
  let harness: Harness;
  let url: string;
  before(async () => {
    upstream = await startTaskUpstream();
    harness = await startHarness({
      anonymous: true,
      upstreams: [{ name: "tasks", path: "/mcp", url: upstream.url, protocolVersions: LEGACY_AND_MODERN }],
    });
    url = `${harness.url}/mcp`;
  });
  after(async () => {
    await harness.close();
    await upstream.close();
  });

  /** A modern request without a credential. */
  async function anonymous(method: string, params: Record<string, unknown>): Promise<Answer> {
    const field = NAME_FIELD[method];
    const name = field ? params[field] : undefined;
    const response = await fetch(url, {
      method: "POST",
      headers: mcpHeaders({
        "mcp-protocol-version": MODERN,
        "mcp-method": method,
        ...(typeof name === "string" ? { "mcp-name": name } : {}),
      }),
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: nextId++,
        method,
        params: { ...params, _meta: { "io.modelcontextprotocol/protocolVersion": MODERN } },
      }),
    });
    return answerOf(response);
  }

  it("T1 anonymous: the client gets a gateway-minted capability, polls with it, and nobody reaches the task by the upstream's id", async () => {
    const created = messageOf(await anonymous("tools/call", { name: "start_task", arguments: {} }));
    const capability = String(created.result?.["taskId"]);
    assert.match(capability, /^[A-Za-z0-9_-]{32}$/, "a 192-bit gateway-minted id");

    const polled = messageOf(await anonymous("tasks/get", { taskId: capability }));
    assert.equal(polled.result?.["taskId"], capability, "answers name the task by its capability");
    const received = upstream.received("tasks/get").at(-1);
    const realId = String((received?.body?.["params"] as { taskId?: string } | undefined)?.taskId);
    assert.match(realId, /^task-[0-9a-f]{12}$/, "the upstream was asked with its own id");
    assert.equal(received?.headers["mcp-name"], realId, "Mcp-Name names the upstream's id too");

    const forwardedBefore = upstream.requests.length;
    assert.equal(messageOf(await anonymous("tasks/get", { taskId: realId })).error?.code, -32602);
    assert.equal(messageOf(await anonymous("tasks/get", { taskId: "A".repeat(32) })).error?.code, -32602);
    const alice = await harness.token("alice");
    assert.equal(messageOf(await modern(url, alice, "tasks/get", { taskId: realId })).error?.code, -32602);
    assert.equal(
      messageOf(await modern(url, alice, "tasks/get", { taskId: capability })).error?.code,
      -32602,
    );
    assert.equal(upstream.requests.length, forwardedBefore, "nothing was forwarded for those");
  });
});
