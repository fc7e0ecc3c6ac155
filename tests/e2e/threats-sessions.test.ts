/**
 * THREATS.md, legacy sessions (S1-S5, S9-S12), end to end: a real gateway on a real store, the demo
 * upstream or the recording upstream behind it, and clients speaking real HTTP (fetch, node:http for
 * headers fetch refuses to send, and the official SDK v1 client). "Generic" refusals are compared
 * byte for byte with the answer for an id that never existed.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { after, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { createRemoteJWKSet, decodeJwt, jwtVerify } from "jose";
import {
  type Harness,
  type HarnessOptions,
  INITIALIZE,
  initializeSession,
  mcpHeaders,
  startHarness,
  TEST_ISSUER,
} from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";
import { storeBackendCases } from "../support/store-cases.ts";
import { makeSigningKey, nowSeconds, signToken } from "../support/token-issuer.ts";

const VERSION = "2025-11-25";

// --- helpers -------------------------------------------------------------------------------------

interface Answer {
  readonly status: number;
  /** Every header but `date`, as sorted [name, value] pairs. */
  readonly headers: Array<[string, string]>;
  readonly body: string;
}

async function answerOf(response: Response): Promise<Answer> {
  const headers = [...response.headers.entries()]
    .filter(([name]) => name !== "date")
    .sort(([a], [b]) => a.localeCompare(b));
  return { status: response.status, headers, body: await response.text() };
}

function sessionRequestHeaders(token: string, sessionId: string | undefined): Record<string, string> {
  return mcpHeaders({
    authorization: `Bearer ${token}`,
    "mcp-protocol-version": VERSION,
    ...(sessionId !== undefined ? { "mcp-session-id": sessionId } : {}),
  });
}

async function post(url: string, token: string, sessionId: string | undefined, message: unknown) {
  return fetch(url, {
    method: "POST",
    headers: sessionRequestHeaders(token, sessionId),
    body: JSON.stringify(message),
  });
}

/** The four things a holder of a session id can do with it (S1): two POSTs, a GET stream, a DELETE. */
async function probe(url: string, token: string, sessionId: string | undefined): Promise<Answer[]> {
  const answers: Answer[] = [];
  answers.push(
    await answerOf(await post(url, token, sessionId, { jsonrpc: "2.0", id: 7, method: "tools/list" })),
  );
  answers.push(
    await answerOf(
      await post(url, token, sessionId, {
        jsonrpc: "2.0",
        id: 8,
        method: "tools/call",
        params: { name: "list_notes", arguments: {} },
      }),
    ),
  );
  const headers = sessionRequestHeaders(token, sessionId);
  // Were the stream ever opened (a regression), it is cut at once rather than left to hang the test.
  const controller = new AbortController();
  const stream = await fetch(url, {
    method: "GET",
    headers: { ...headers, accept: "text/event-stream" },
    signal: controller.signal,
  });
  if (stream.headers.get("content-type")?.startsWith("text/event-stream")) {
    controller.abort();
    answers.push({ status: stream.status, headers: [], body: "(a stream was opened)" });
  } else {
    answers.push(await answerOf(stream));
  }
  answers.push(await answerOf(await fetch(url, { method: "DELETE", headers })));
  return answers;
}

function errorCodeOf(answer: Answer): string | undefined {
  return (JSON.parse(answer.body) as { error?: { data?: { code?: string } } }).error?.data?.code;
}

/** A well-formed id the gateway never minted: the same shape as its own (24 CSPRNG bytes, base64url). */
function inventedId(): string {
  return randomBytes(24).toString("base64url");
}

function textOf(result: unknown): string {
  const content = (result as { content?: Array<{ type: string; text?: string }> }).content ?? [];
  return content.map((part) => part.text ?? "").join("");
}

async function v1Client(url: string, token: string) {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
  });
  const client = new Client({ name: "threats-sessions", version: "1.0.0" });
  await client.connect(transport);
  return { client, transport };
}

async function callText(url: string, token: string, sessionId: string, name: string, args = {}) {
  const response = await post(url, token, sessionId, {
    jsonrpc: "2.0",
    id: 3,
    method: "tools/call",
    params: { name, arguments: args },
  });
  assert.equal(response.status, 200);
  const text = await response.text();
  // The demo upstream answers on an SSE stream (a priming event with empty data, then the response);
  // plain JSON is read as well.
  const json = response.headers.get("content-type")?.startsWith("text/event-stream")
    ? (text
        .split("\n")
        .filter((line) => line.startsWith("data:") && line.slice(5).trim() !== "")
        .at(-1)
        ?.slice(5) ?? "{}")
    : text;
  return textOf((JSON.parse(json) as { result?: unknown }).result);
}

interface FirstEvent {
  readonly status: number;
  readonly id: string | undefined;
  readonly data: unknown;
}

/** Opens a GET stream, reads its first SSE event, then aborts it so nothing is left hanging. */
async function firstStreamEvent(
  url: string,
  token: string,
  sessionId: string,
  lastEventId?: string,
): Promise<FirstEvent> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 10_000);
  try {
    const response = await fetch(url, {
      method: "GET",
      signal: controller.signal,
      headers: {
        ...sessionRequestHeaders(token, sessionId),
        accept: "text/event-stream",
        ...(lastEventId !== undefined ? { "last-event-id": lastEventId } : {}),
      },
    });
    assert.equal(response.status, 200);
    assert.ok(response.body);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = "";
    while (!text.includes("\n\n")) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    const event = text.slice(0, text.indexOf("\n\n"));
    let id: string | undefined;
    let data = "";
    for (const line of event.split("\n")) {
      if (line.startsWith("id:")) id = line.slice(3).trim();
      if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    return { status: response.status, id, data: JSON.parse(data) };
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
}

interface RawAnswer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

/**
 * node:http, not fetch: fetch refuses to send `Connection` (and names in it) as a request header,
 * and S9 needs exactly that. With `firstEventOnly`, the response is cut after its first SSE event.
 */
function rawRequest(
  url: string,
  options: { method: string; headers: Record<string, string>; body?: string; firstEventOnly?: boolean },
): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(url, { method: options.method, headers: options.headers, agent: false });
    request.setTimeout(10_000, () => request.destroy(new Error("timed out")));
    request.on("error", reject);
    request.on("response", (response) => {
      let body = "";
      response.setEncoding("utf8");
      const finish = () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body });
      response.on("data", (chunk: string) => {
        body += chunk;
        if (options.firstEventOnly && body.includes("\n\n")) {
          finish();
          request.destroy();
        }
      });
      response.on("end", finish);
      response.on("error", () => finish());
    });
    request.end(options.body);
  });
}

async function withHarness(
  options: HarnessOptions,
  body: (harness: Harness) => Promise<void>,
): Promise<void> {
  const harness = await startHarness(options);
  try {
    await body(harness);
  } finally {
    await harness.close();
  }
}

async function withRecording(
  body: (harness: Harness, upstream: RecordingUpstream) => Promise<void>,
  options: HarnessOptions = {},
): Promise<void> {
  const upstream = await startRecordingUpstream();
  try {
    await withHarness(
      { ...options, upstreams: [{ name: "recorded", path: "/mcp", url: upstream.url }] },
      (h) => body(h, upstream),
    );
  } finally {
    await upstream.close();
  }
}

// --- store backends ------------------------------------------------------------------------------

const storeCases = await storeBackendCases("threats");

// --- S1 ------------------------------------------------------------------------------------------

for (const storeCase of storeCases) {
  describe(`sessions on the ${storeCase.name} store`, { skip: storeCase.skip }, () => {
    let store: { url: string; cleanup(): Promise<void> } | undefined;
    after(async () => {
      await store?.cleanup();
    });

    it(`S1 B presenting A's live session id gets the unknown-id answer; A is untouched (${storeCase.name})`, async () => {
      store = await storeCase.open();
      await withHarness({ store: store.url }, async (harness) => {
        const url = `${harness.url}/mcp`;
        const aliceToken = await harness.token("alice");
        const bobToken = await harness.token("bob");
        const alice = await v1Client(url, aliceToken);
        try {
          const aliceId = alice.transport.sessionId ?? "";
          assert.match(aliceId, /^[A-Za-z0-9_-]{32}$/);
          await alice.client.callTool({ name: "add_note", arguments: { text: "alice's secret plan" } });
          const notesBefore = textOf(await alice.client.callTool({ name: "list_notes", arguments: {} }));
          assert.match(notesBefore, /alice's secret plan/);
          // B has a session of its own: being a real user of the gateway changes nothing.
          await initializeSession(url, bobToken);

          const foreign = await probe(url, bobToken, aliceId);
          const neverExisted = await probe(url, bobToken, inventedId());
          const garbage = await probe(url, bobToken, "not a session id!");
          for (const [index, answer] of foreign.entries()) {
            assert.equal(answer.status, 404, `operation ${index}`);
            assert.equal(errorCodeOf(answer), "ERR_SESSION_NOT_FOUND");
            assert.doesNotMatch(answer.body, /alice|secret/);
            assert.ok(!answer.body.includes(aliceId), "the id is not echoed");
            assert.deepEqual(answer, neverExisted[index], `operation ${index}: same as a never-existing id`);
            assert.deepEqual(answer, garbage[index], `operation ${index}: same as a garbage id`);
          }

          const denied = harness.events.filter(
            (event) => event.type === "session.denied" && event.reason === "foreign-principal",
          );
          assert.ok(denied.length >= 4, "each foreign attempt is a session.denied event");

          // B's DELETE ended nothing: A's session, and its notes, are as they were.
          assert.equal(alice.transport.sessionId, aliceId);
          const tools = await alice.client.listTools();
          assert.ok(tools.tools.some((tool) => tool.name === "list_notes"));
          const notesAfter = textOf(await alice.client.callTool({ name: "list_notes", arguments: {} }));
          assert.equal(notesAfter, notesBefore);
          assert.doesNotMatch(
            await callText(url, bobToken, await initializeSession(url, bobToken), "list_notes"),
            /alice/,
          );
        } finally {
          await alice.client.close();
        }
      });
    });
  });
}

// --- S2 ------------------------------------------------------------------------------------------

describe("sessions: required, never adopted, ended", () => {
  it("S2 a non-initialize request without Mcp-Session-Id is 400 and reaches nothing, even with other sessions alive", async () => {
    await withRecording(async (harness, upstream) => {
      const url = `${harness.url}/mcp`;
      const aliceToken = await harness.token("alice");
      const bobToken = await harness.token("bob");
      await initializeSession(url, aliceToken);
      await initializeSession(url, bobToken);
      const seen = upstream.requests.length;

      // A brand-new client (carol) and a client that has a session (alice) alike: no "most recent
      // session" is picked for them.
      for (const token of [await harness.token("carol"), aliceToken]) {
        const answers = [
          await post(url, token, undefined, { jsonrpc: "2.0", id: 1, method: "tools/list" }),
          await post(url, token, undefined, {
            jsonrpc: "2.0",
            id: 2,
            method: "tools/call",
            params: { name: "list_notes", arguments: {} },
          }),
          await post(url, token, undefined, { jsonrpc: "2.0", method: "notifications/initialized" }),
          await fetch(url, {
            method: "GET",
            headers: { ...sessionRequestHeaders(token, undefined), accept: "text/event-stream" },
          }),
          await fetch(url, { method: "DELETE", headers: sessionRequestHeaders(token, undefined) }),
        ];
        for (const response of answers) {
          const answer = await answerOf(response);
          assert.equal(answer.status, 400);
          assert.equal(errorCodeOf(answer), "ERR_SESSION_REQUIRED");
          assert.equal(response.headers.get("mcp-session-id"), null);
        }
      }
      assert.equal(upstream.requests.length, seen, "the upstream received nothing for them");
      assert.ok(
        harness.events.some(
          (event) => event.type === "request.refused" && event.reason === "session-required",
        ),
      );
    });
  });

  // --- S3 ----------------------------------------------------------------------------------------

  it("S3 a client-invented session id is never adopted: 404, and initialize mints the gateway's own", async () => {
    await withRecording(async (harness, upstream) => {
      const url = `${harness.url}/mcp`;
      const token = await harness.token("alice");
      await initializeSession(url, token);
      const seen = upstream.requests.length;

      const invented = [
        inventedId(),
        randomBytes(16).toString("base64url"),
        "A".repeat(32),
        "1",
        "session-1",
        "00000000-0000-0000-0000-000000000000",
        "../../admin",
        "x".repeat(300),
        "with spaces and ; semicolons",
      ];
      for (const sessionId of invented) {
        for (const answer of await probe(url, token, sessionId)) {
          assert.equal(answer.status, 404, sessionId);
          assert.equal(errorCodeOf(answer), "ERR_SESSION_NOT_FOUND");
          assert.ok(!answer.body.includes(sessionId) || sessionId === "1");
        }
      }
      assert.equal(upstream.requests.length, seen, "nothing reached the upstream for an invented id");

      // Fixation: initialize carrying a chosen id gets a fresh one; the chosen one stays unknown.
      const chosen = inventedId();
      const response = await fetch(url, {
        method: "POST",
        headers: mcpHeaders({ authorization: `Bearer ${token}`, "mcp-session-id": chosen }),
        body: JSON.stringify(INITIALIZE),
      });
      await response.arrayBuffer();
      assert.equal(response.status, 200);
      const minted = response.headers.get("mcp-session-id");
      assert.ok(minted);
      assert.notEqual(minted, chosen);
      assert.match(minted, /^[A-Za-z0-9_-]{32}$/);
      const initialize = upstream.requests.at(-1);
      assert.equal(initialize?.headers["mcp-session-id"], undefined, "the chosen id is not forwarded");
      const [chosenAnswer] = await probe(url, token, chosen);
      assert.equal(chosenAnswer?.status, 404);
      const works = await post(url, token, minted, { jsonrpc: "2.0", id: 2, method: "tools/list" });
      await works.arrayBuffer();
      assert.equal(works.status, 200);
    });
  });

  // --- S4 ----------------------------------------------------------------------------------------

  it("S4 after DELETE the id is 404 for its owner too; the upstream got the DELETE with its own session id", async () => {
    await withRecording(async (harness, upstream) => {
      const url = `${harness.url}/mcp`;
      const token = await harness.token("alice");
      const sessionId = await initializeSession(url, token);
      const upstreamSessionId = upstream.sessionIds.at(-1);
      assert.ok(upstreamSessionId);

      const deleted = await fetch(url, {
        method: "DELETE",
        headers: sessionRequestHeaders(token, sessionId),
      });
      await deleted.arrayBuffer();
      assert.equal(deleted.status, 200);
      const upstreamDeletes = upstream.requests.filter((request) => request.method === "DELETE");
      assert.equal(upstreamDeletes.length, 1);
      assert.equal(upstreamDeletes[0]?.headers["mcp-session-id"], upstreamSessionId);
      assert.notEqual(upstreamDeletes[0]?.headers["mcp-session-id"], sessionId);

      const seen = upstream.requests.length;
      for (const answer of await probe(url, token, sessionId)) {
        assert.equal(answer.status, 404);
        assert.equal(errorCodeOf(answer), "ERR_SESSION_NOT_FOUND");
      }
      assert.equal(upstream.requests.length, seen, "an ended session reaches nothing");
      assert.ok(harness.events.some((event) => event.type === "session.ended" && event.by === "client"));
    });
  });

  it("S4 after an operator revoke the id is 404 for its owner", async () => {
    await withHarness({}, async (harness) => {
      const url = `${harness.url}/mcp`;
      const token = await harness.token("alice");
      const sessionId = await initializeSession(url, token);
      assert.equal(await harness.gateway.sessions.revoke(sessionId), true);
      for (const answer of await probe(url, token, sessionId)) assert.equal(answer.status, 404);
    });
  });

  it("S4 after the absolute timeout the id is 404 for its owner", async () => {
    await withHarness(
      { extra: { sessions: { idleTimeout: "1s", absoluteTimeout: "1s" } } },
      async (harness) => {
        const url = `${harness.url}/mcp`;
        const token = await harness.token("alice");
        const sessionId = await initializeSession(url, token);
        const live = await post(url, token, sessionId, { jsonrpc: "2.0", id: 1, method: "tools/list" });
        await live.arrayBuffer();
        assert.equal(live.status, 200);
        await new Promise((resolve) => setTimeout(resolve, 1_200));
        for (const answer of await probe(url, token, sessionId)) assert.equal(answer.status, 404);
      },
    );
  });

  // --- S5 ----------------------------------------------------------------------------------------

  it("S5 two principals of one tenant are isolated from each other's sessions and notes", async () => {
    await withHarness({}, async (harness) => {
      const url = `${harness.url}/mcp`;
      const aliceToken = await harness.token("alice", { tenant: "acme" });
      const bobToken = await harness.token("bob", { tenant: "acme" });
      const aliceId = await initializeSession(url, aliceToken);
      const bobId = await initializeSession(url, bobToken);
      await callText(url, aliceToken, aliceId, "add_note", { text: "alice in acme" });
      await callText(url, bobToken, bobId, "add_note", { text: "bob in acme" });

      for (const [token, foreignId] of [
        [bobToken, aliceId],
        [aliceToken, bobId],
      ] as const) {
        const foreign = await probe(url, token, foreignId);
        const unknown = await probe(url, token, inventedId());
        for (const [index, answer] of foreign.entries()) {
          assert.equal(answer.status, 404);
          assert.deepEqual(answer, unknown[index]);
        }
      }
      assert.ok(
        harness.events.some(
          (event) => event.type === "session.denied" && event.reason === "foreign-principal",
        ),
      );
      assert.equal(await callText(url, aliceToken, aliceId, "list_notes"), "alice in acme");
      assert.equal(await callText(url, bobToken, bobId, "list_notes"), "bob in acme");
      const who = JSON.parse(await callText(url, bobToken, bobId, "whoami"));
      assert.deepEqual([who.tenant, who.sub], ["acme", "bob"]);
    });
  });
});

// --- S9 ------------------------------------------------------------------------------------------

/** What a client may see in a response: the gateway's own headers, the relayed allowlist, framing. */
const CLIENT_VISIBLE = new Set([
  "content-type",
  "content-length",
  "cache-control",
  "retry-after",
  "mcp-session-id",
  "x-accel-buffering",
  "x-content-type-options",
  "date",
  "connection",
  "keep-alive",
  "transfer-encoding",
]);

/** What the upstream may receive: the forwarded allowlist, the gateway's own headers, framing. */
const UPSTREAM_VISIBLE = new Set([
  "accept",
  "content-type",
  "user-agent",
  "tenantgate-assertion",
  "mcp-session-id",
  "mcp-protocol-version",
  "last-event-id",
  "host",
  "connection",
  "content-length",
  "transfer-encoding",
]);

describe("sessions: what crosses the gateway", () => {
  it("S9 no upstream session id or cookie reaches the client; no client credential or stray header reaches the upstream", async () => {
    await withRecording(async (harness, upstream) => {
      const url = `${harness.url}/mcp`;
      const token = await harness.token("alice");
      const mallory = await makeSigningKey("EdDSA", "mallory");
      const forged = await signToken(mallory, {
        iss: harness.gateway.config.publicUrl,
        sub: "mallory",
        tenant: "t-alice",
        aud: upstream.url,
        iat: nowSeconds(),
        exp: nowSeconds() + 60,
      });
      const hostile = {
        authorization: `Bearer ${token}`,
        cookie: "client-session=client-cookie-secret",
        "tenantgate-assertion": forged,
        "x-forwarded-for": "203.0.113.7",
        "x-secret": "hop-by-hop-secret",
        "user-agent": "client-agent-named-in-connection",
        connection: "x-secret, user-agent",
        "mcp-protocol-version": VERSION,
      };

      const initialize = await rawRequest(url, {
        method: "POST",
        headers: { ...mcpHeaders(), ...hostile },
        body: JSON.stringify(INITIALIZE),
      });
      assert.equal(initialize.status, 200);
      const sessionId = String(initialize.headers["mcp-session-id"] ?? "");
      assert.match(sessionId, /^[A-Za-z0-9_-]{32}$/);
      const upstreamSessionId = upstream.sessionIds.at(-1);
      assert.ok(upstreamSessionId);

      const withSession = { ...hostile, "mcp-session-id": sessionId };
      const list = await rawRequest(url, {
        method: "POST",
        headers: { ...mcpHeaders(), ...withSession },
        body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
      });
      assert.equal(list.status, 200);
      const stream = await rawRequest(url, {
        method: "GET",
        headers: { ...withSession, accept: "text/event-stream" },
        firstEventOnly: true,
      });
      assert.equal(stream.status, 200);
      const ended = await rawRequest(url, { method: "DELETE", headers: withSession });
      assert.equal(ended.status, 200);

      for (const answer of [initialize, list, stream, ended]) {
        for (const name of Object.keys(answer.headers)) {
          assert.ok(CLIENT_VISIBLE.has(name), `the client saw ${name}`);
        }
        assert.equal(answer.headers["set-cookie"], undefined);
        assert.equal(answer.headers["x-upstream-internal"], undefined);
        const shown = answer.headers["mcp-session-id"];
        if (shown !== undefined) assert.equal(shown, sessionId);
        assert.ok(!JSON.stringify(answer).includes(upstreamSessionId), "the upstream's id never shows");
      }

      const jwks = createRemoteJWKSet(new URL(`${harness.url}/.well-known/jwks.json`));
      const received = upstream.requests;
      assert.deepEqual(
        received.map((request) => request.method),
        ["POST", "POST", "GET", "DELETE"],
      );
      for (const [index, request] of received.entries()) {
        const headers = request.headers;
        for (const name of Object.keys(headers)) {
          assert.ok(UPSTREAM_VISIBLE.has(name), `the upstream received ${name} (request ${index})`);
        }
        assert.equal(headers.authorization, undefined);
        assert.equal(headers.cookie, undefined);
        assert.equal(headers["x-forwarded-for"], undefined);
        assert.equal(headers["x-secret"], undefined);
        assert.notEqual(headers["user-agent"], "client-agent-named-in-connection");
        assert.ok(!JSON.stringify(headers).includes(token), "the client's token never reaches the upstream");
        const assertion = String(headers["tenantgate-assertion"] ?? "");
        assert.notEqual(assertion, forged);
        const { payload } = await jwtVerify(assertion, jwks, {
          issuer: harness.gateway.config.publicUrl,
          audience: upstream.url,
        });
        assert.equal(payload.sub, "alice");
        assert.equal(payload["tenant"], "t-alice");
        assert.equal(payload["principal_iss"], TEST_ISSUER);
        assert.equal(decodeJwt(assertion).sub, "alice");
        // The upstream's own session id after initialize, never the gateway's.
        assert.equal(headers["mcp-session-id"], index === 0 ? undefined : upstreamSessionId);
        assert.ok(!JSON.stringify(headers).includes(sessionId));
      }
    });
  });

  // --- S10 ---------------------------------------------------------------------------------------

  it("S10 session ids are >= 128-bit base64url, all distinct, never in an event record or a URL", async () => {
    await withHarness({}, async (harness) => {
      const url = `${harness.url}/mcp`;
      const token = await harness.token("alice");
      const ids: string[] = [];
      for (let i = 0; i < 50; i++) ids.push(await initializeSession(url, token));
      for (const id of ids) {
        assert.match(id, /^[\x21-\x7e]+$/, "visible ASCII");
        assert.match(id, /^[A-Za-z0-9_-]{22,}$/, "base64url, at least 22 characters");
        assert.equal(id.length, 32);
        assert.ok(Buffer.from(id, "base64url").byteLength * 8 >= 128);
      }
      assert.equal(new Set(ids).size, ids.length, "50 ids, all distinct");

      // Events about these ids: foreign use, an end, a revoke. None names the id itself.
      const bobToken = await harness.token("bob");
      await probe(url, bobToken, ids[0]);
      const ended = await fetch(url, { method: "DELETE", headers: sessionRequestHeaders(token, ids[1]) });
      await ended.arrayBuffer();
      // A session id offered in a URL is refused, never looked up or forwarded.
      const inQuery = await fetch(`${url}?mcp-session-id=${ids[2]}`, {
        method: "POST",
        headers: sessionRequestHeaders(token, undefined),
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
      });
      const inQueryBody = await inQuery.text();
      assert.equal(inQuery.status, 400);
      assert.ok(!inQueryBody.includes(ids[2] ?? ""));
      const inPath = await fetch(`${url}/${ids[3]}`, {
        method: "POST",
        headers: sessionRequestHeaders(token, undefined),
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
      });
      assert.equal(inPath.status, 404);
      assert.ok(!(await inPath.text()).includes(ids[3] ?? ""));

      const recorded = JSON.stringify(harness.events);
      assert.ok(harness.events.length >= 50);
      for (const id of ids) assert.ok(!recorded.includes(id), "a session id in an event record");
      // Nor in anything the gateway publishes by URL.
      const metadata = await fetch(`${harness.url}/.well-known/oauth-protected-resource/mcp`);
      const published = await metadata.text();
      for (const id of ids) assert.ok(!published.includes(id));
    });
  });

  // --- S11 ---------------------------------------------------------------------------------------

  it("S11 a session from /a presented at /b, with a valid /b token, is 404", async () => {
    await withHarness(
      {
        upstreams: [
          { name: "a", path: "/a" },
          { name: "b", path: "/b" },
        ],
      },
      async (harness) => {
        const publicUrl = harness.gateway.config.publicUrl;
        const tokenA = await harness.token("alice", { audience: `${publicUrl}/a` });
        const tokenB = await harness.token("alice", { audience: `${publicUrl}/b` });
        const sessionA = await initializeSession(`${harness.url}/a`, tokenA);
        await callText(`${harness.url}/a`, tokenA, sessionA, "add_note", { text: "note at a" });
        // alice has a session at /b too: the id still names only the /a one.
        await initializeSession(`${harness.url}/b`, tokenB);

        const crossed = await probe(`${harness.url}/b`, tokenB, sessionA);
        const unknown = await probe(`${harness.url}/b`, tokenB, inventedId());
        for (const [index, answer] of crossed.entries()) {
          assert.equal(answer.status, 404);
          assert.equal(errorCodeOf(answer), "ERR_SESSION_NOT_FOUND");
          assert.deepEqual(answer, unknown[index]);
        }
        assert.ok(
          harness.events.some(
            (event) => event.type === "session.denied" && event.reason === "other-upstream",
          ),
        );
        // The /b DELETE ended nothing at /a.
        assert.equal(await callText(`${harness.url}/a`, tokenA, sessionA, "list_notes"), "note at a");
      },
    );
  });

  // --- S12 ---------------------------------------------------------------------------------------

  it("S12 B with A's stream event id in Last-Event-ID replays nothing of A's stream", async () => {
    await withRecording(async (harness, upstream) => {
      const url = `${harness.url}/mcp`;
      const aliceToken = await harness.token("alice");
      const bobToken = await harness.token("bob");
      const aliceId = await initializeSession(url, aliceToken);
      const aliceFirst = await firstStreamEvent(url, aliceToken, aliceId);
      assert.ok(aliceFirst.id);
      assert.doesNotMatch(aliceFirst.id, /upstream-event/, "the client sees a wrapped id");
      assert.notEqual(aliceFirst.id, "upstream-event-1");

      const bobId = await initializeSession(url, bobToken);
      const bobUpstreamId = upstream.sessionIds.at(-1);
      const bobFirst = await firstStreamEvent(url, bobToken, bobId, aliceFirst.id);
      assert.deepEqual((bobFirst.data as { params: { data: unknown } }).params.data, { replayedAfter: null });
      const bobGet = upstream.requests.filter(
        (request) => request.method === "GET" && request.headers["mcp-session-id"] === bobUpstreamId,
      );
      assert.equal(bobGet.length, 1);
      assert.equal(bobGet[0]?.headers["last-event-id"], undefined, "A's event id never reached the upstream");
      assert.ok(harness.events.some((event) => event.type === "stream.event-id-refused"));

      // A resumes its own stream: the upstream gets its own event id back, unwrapped.
      const seen = upstream.requests.length;
      const resumed = await firstStreamEvent(url, aliceToken, aliceId, aliceFirst.id);
      const resumeRequest = upstream.requests.slice(seen).find((request) => request.method === "GET");
      assert.equal(resumeRequest?.headers["last-event-id"], "upstream-event-1");
      assert.deepEqual((resumed.data as { params: { data: unknown } }).params.data, {
        replayedAfter: "upstream-event-1",
      });
    });
  });
});
