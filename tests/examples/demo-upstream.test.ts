import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  type JSONRPCMessage,
  LoggingMessageNotificationSchema,
  type Progress,
} from "@modelcontextprotocol/sdk/types.js";
import { BoundedEventStore } from "../../examples/demo-upstream/bounded-event-store.ts";
import { type DemoUpstream, startDemoUpstream } from "../../examples/demo-upstream/server.ts";
import { type AssertionSigner, createAssertionSigner } from "../../src/crypto/assertion-signer.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";

const ISSUER = "http://127.0.0.1:7000";
const AUDIENCE = "http://127.0.0.1:7000/mcp";
const PROTOCOL_VERSION = "2025-11-25";

function principal(issuer: string, subject: string, tenant: string): Principal {
  return makePrincipal({ kind: "jwt", issuer, subject, tenant, scopes: [], expiresAt: null });
}

const alice = principal("https://idp.example.com", "alice", "acme");
const bob = principal("https://idp.example.com", "bob", "acme");
// Same subject as alice, vouched for by another identity provider: someone else.
const otherAlice = principal("https://other-idp.example.com", "alice", "acme");

const signer = createAssertionSigner({ keyring: Keyring.ephemeral(), issuer: ISSUER });

async function connect(upstream: DemoUpstream, token: string): Promise<Client> {
  const transport = new StreamableHTTPClientTransport(new URL(upstream.url), {
    requestInit: { headers: { "Tenantgate-Assertion": token } },
  });
  const client = new Client({ name: "demo-upstream-test", version: "0.0.0" });
  await client.connect(transport);
  return client;
}

async function callText(client: Client, name: string, args: Record<string, unknown> = {}): Promise<string> {
  const result = await client.callTool({ name, arguments: args });
  assert.notEqual(result.isError, true, `${name} failed`);
  const [first] = result.content as { type: string; text: string }[];
  assert.equal(first?.type, "text");
  return first.text;
}

function initializeBody(): string {
  return JSON.stringify({
    jsonrpc: "2.0",
    id: 1,
    method: "initialize",
    params: {
      protocolVersion: PROTOCOL_VERSION,
      capabilities: {},
      clientInfo: { name: "raw", version: "0" },
    },
  });
}

async function rawPost(
  upstream: DemoUpstream,
  body: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: string }> {
  const response = await fetch(upstream.url, {
    method: "POST",
    headers: {
      accept: "application/json, text/event-stream",
      "content-type": "application/json",
      "mcp-protocol-version": PROTOCOL_VERSION,
      ...headers,
    },
    body,
  });
  return { status: response.status, body: await response.text() };
}

describe("demo upstream", () => {
  let upstream: DemoUpstream;
  const clients: Client[] = [];
  const as = async (who: Principal, signWith: AssertionSigner = signer): Promise<Client> => {
    const client = await connect(upstream, await signWith.sign(who, { audience: AUDIENCE }));
    clients.push(client);
    return client;
  };

  before(async () => {
    upstream = await startDemoUpstream({
      gateway: { issuer: ISSUER, audience: AUDIENCE, jwks: signer.jwks() },
    });
  });
  after(async () => {
    await Promise.allSettled(clients.map((client) => client.close()));
    await upstream.close();
  });

  it("serves MCP on /mcp of a loopback address", () => {
    assert.match(upstream.url, /^http:\/\/127\.0\.0\.1:\d+\/mcp$/);
  });

  it("keeps each principal's notes to that principal", async () => {
    const aliceClient = await as(alice);
    const bobClient = await as(bob);
    const otherAliceClient = await as(otherAlice);

    assert.equal(await callText(aliceClient, "add_note", { text: "alice secret one" }), "1");
    assert.equal(await callText(aliceClient, "add_note", { text: "alice secret two" }), "2");
    assert.equal(await callText(bobClient, "add_note", { text: "bob's note" }), "1");

    assert.equal(await callText(aliceClient, "list_notes"), "alice secret one\nalice secret two");
    const bobNotes = await callText(bobClient, "list_notes");
    assert.equal(bobNotes, "bob's note");
    assert.doesNotMatch(bobNotes, /alice/);
    // Same `sub`, other issuer: the key is the whole principal, not the subject.
    assert.equal(await callText(otherAliceClient, "list_notes"), "");

    // A new session for the same principal sees the same notes: they belong to the caller, not
    // to the session.
    const aliceAgain = await as(alice);
    assert.equal(await callText(aliceAgain, "list_notes"), "alice secret one\nalice secret two");
  });

  it("reports the identity from the signed assertion", async () => {
    const client = await as(bob);
    assert.deepEqual(JSON.parse(await callText(client, "whoami")), {
      tenant: "acme",
      sub: "bob",
      principal_iss: "https://idp.example.com",
    });
  });

  it("refuses requests without a valid assertion with one generic 401", async () => {
    const good = await signer.sign(alice, { audience: AUDIENCE });
    const [header, payload, signature] = good.split(".") as [string, string, string];
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as Record<string, unknown>;
    const forgedPayload = Buffer.from(JSON.stringify({ ...claims, sub: "bob" })).toString("base64url");
    const strangers = createAssertionSigner({ keyring: Keyring.ephemeral(), issuer: ISSUER });
    const wrongIssuer = createAssertionSigner({ keyring: Keyring.ephemeral(), issuer: "http://evil.test" });

    const cases: [string, Record<string, string>][] = [
      ["no assertion", {}],
      ["empty assertion", { "tenantgate-assertion": "" }],
      ["tampered claims", { "tenantgate-assertion": `${header}.${forgedPayload}.${signature}` }],
      [
        "another audience",
        { "tenantgate-assertion": await signer.sign(alice, { audience: "http://127.0.0.1:7000/other" }) },
      ],
      ["another keyring", { "tenantgate-assertion": await strangers.sign(alice, { audience: AUDIENCE }) }],
      ["another issuer", { "tenantgate-assertion": await wrongIssuer.sign(alice, { audience: AUDIENCE }) }],
      ["a bearer token instead", { authorization: `Bearer ${good}` }],
    ];
    const bodies = new Set<string>();
    for (const [label, headers] of cases) {
      const response = await rawPost(upstream, initializeBody(), headers);
      assert.equal(response.status, 401, label);
      bodies.add(response.body);
    }
    // Every refusal looks the same: nothing says which check failed.
    assert.equal(bodies.size, 1);
    assert.deepEqual(JSON.parse([...bodies][0]!), {
      jsonrpc: "2.0",
      error: { code: -32000, message: "Unauthorized" },
      id: null,
    });

    // The same valid assertion is accepted, so the refusals above are about the assertion.
    const accepted = await rawPost(upstream, initializeBody(), { "tenantgate-assertion": good });
    assert.equal(accepted.status, 200);
  });

  it("answers another principal's session id exactly like an unknown one (404)", async () => {
    const aliceClient = await as(alice);
    const aliceSession = (aliceClient.transport as StreamableHTTPClientTransport).sessionId;
    assert.ok(aliceSession);
    const bobToken = await signer.sign(bob, { audience: AUDIENCE });
    const toolsList = JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" });

    const foreign = await rawPost(upstream, toolsList, {
      "tenantgate-assertion": bobToken,
      "mcp-session-id": aliceSession,
    });
    const unknown = await rawPost(upstream, toolsList, {
      "tenantgate-assertion": bobToken,
      "mcp-session-id": crypto.randomUUID(),
    });
    assert.equal(foreign.status, 404);
    assert.deepEqual(foreign, unknown);

    // The same principal with another issuer or tenant is someone else too.
    for (const other of [otherAlice, principal("https://idp.example.com", "alice", "globex")]) {
      const attempt = await rawPost(upstream, toolsList, {
        "tenantgate-assertion": await signer.sign(other, { audience: AUDIENCE }),
        "mcp-session-id": aliceSession,
      });
      assert.deepEqual(attempt, unknown);
    }

    // Refusing bob did not harm alice's session.
    assert.ok((await aliceClient.listTools()).tools.some((tool) => tool.name === "list_notes"));
  });

  it("sends progress and a log message for count_slowly", async () => {
    const client = await as(alice);
    const logs: unknown[] = [];
    client.setNotificationHandler(LoggingMessageNotificationSchema, (notification) => {
      logs.push(notification.params.data);
    });
    const progress: Progress[] = [];
    const result = await client.callTool(
      { name: "count_slowly", arguments: { steps: 3, delayMs: 5 } },
      undefined,
      {
        onprogress: (update) => progress.push(update),
      },
    );
    assert.deepEqual(result.content, [{ type: "text", text: "done 3" }]);
    assert.deepEqual(
      progress.map(({ progress: step, total }) => [step, total]),
      [
        [1, 3],
        [2, 3],
        [3, 3],
      ],
    );
    assert.deepEqual(logs, ["counting to 3"]);
  });

  it("refuses count_slowly arguments out of range", async () => {
    const client = await as(alice);
    const result = await client.callTool({ name: "count_slowly", arguments: { steps: 21, delayMs: 0 } });
    assert.equal(result.isError, true);
  });
});

describe("demo upstream: key sources and shutdown", () => {
  it("fetches the gateway's keys from jwksUrl", async () => {
    const jwksServer = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(signer.jwks()));
    });
    await new Promise<void>((resolve) => jwksServer.listen(0, "127.0.0.1", resolve));
    const { port } = jwksServer.address() as AddressInfo;
    const upstream = await startDemoUpstream({
      gateway: {
        issuer: ISSUER,
        audience: AUDIENCE,
        jwksUrl: `http://127.0.0.1:${port}/.well-known/jwks.json`,
      },
    });
    try {
      const client = await connect(upstream, await signer.sign(alice, { audience: AUDIENCE }));
      assert.equal(JSON.parse(await callText(client, "whoami")).sub, "alice");
      await client.close();
    } finally {
      await upstream.close();
      jwksServer.closeAllConnections();
      await new Promise((resolve) => jwksServer.close(resolve));
    }
  });

  it("refuses options without exactly one key source", async () => {
    await assert.rejects(startDemoUpstream({ gateway: { issuer: ISSUER, audience: AUDIENCE } }), TypeError);
    await assert.rejects(
      startDemoUpstream({
        gateway: {
          issuer: ISSUER,
          audience: AUDIENCE,
          jwks: signer.jwks(),
          jwksUrl: "http://127.0.0.1:1/jwks",
        },
      }),
      TypeError,
    );
  });

  it("closes promptly with sessions and streams still open", async () => {
    const upstream = await startDemoUpstream({
      gateway: { issuer: ISSUER, audience: AUDIENCE, jwks: signer.jwks() },
    });
    const client = await connect(upstream, await signer.sign(alice, { audience: AUDIENCE }));
    // A call in flight holds an SSE stream open on the server side.
    const pending = client
      .callTool({ name: "count_slowly", arguments: { steps: 20, delayMs: 1000 } })
      .catch(() => "ended");
    await new Promise((resolve) => setTimeout(resolve, 50));
    const started = performance.now();
    await upstream.close();
    assert.ok(performance.now() - started < 1000, "close() waited on open connections");
    await client.close();
    assert.equal(await pending, "ended");
  });
});

describe("bounded event store", () => {
  const message = (id: number): JSONRPCMessage => ({
    jsonrpc: "2.0",
    method: "notifications/x",
    params: { id },
  });

  async function replay(store: BoundedEventStore, after: string) {
    const sent: [string, JSONRPCMessage][] = [];
    const streamId = await store.replayEventsAfter(after, {
      send: async (eventId, sentMessage) => {
        sent.push([eventId, sentMessage]);
      },
    });
    return { streamId, sent: sent.map(([, sentMessage]) => sentMessage) };
  }

  it("replays one stream's later events in the order they were stored", async () => {
    const store = new BoundedEventStore();
    const first = await store.storeEvent("stream-a", message(0));
    for (let id = 1; id <= 50; id++) {
      await store.storeEvent(id % 2 === 0 ? "stream-a" : "stream-b", message(id));
    }
    const { streamId, sent } = await replay(store, first);
    assert.equal(streamId, "stream-a");
    assert.deepEqual(
      sent,
      Array.from({ length: 25 }, (_, index) => message((index + 1) * 2)),
    );
  });

  it("resumes the SDK's standalone GET stream, whose id contains underscores", async () => {
    const store = new BoundedEventStore();
    const first = await store.storeEvent("_GET_stream", message(1));
    await store.storeEvent("_GET_stream", message(2));
    assert.equal(await store.getStreamIdForEventId(first), "_GET_stream");
    assert.deepEqual(await replay(store, first), { streamId: "_GET_stream", sent: [message(2)] });
  });

  it("keeps at most maxEvents and forgets the oldest", async () => {
    const store = new BoundedEventStore(3);
    const ids: string[] = [];
    for (let id = 0; id < 5; id++) ids.push(await store.storeEvent("s", message(id)));
    assert.equal(await store.getStreamIdForEventId(ids[1]!), undefined);
    assert.deepEqual((await replay(store, ids[2]!)).sent, [message(3), message(4)]);
    assert.deepEqual(await replay(store, "nope"), { streamId: "", sent: [] });
  });
});
