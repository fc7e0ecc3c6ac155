/**
 * THREATS "Identity and audience" (A1-A4), end to end: a real gateway on loopback, real tokens from
 * the harness's issuers (and forged ones), real HTTP, the official SDK client where a client is
 * natural, and the recording upstream where the upstream has to misbehave.
 */
import assert from "node:assert/strict";
import { createPublicKey } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SignJWT } from "jose";
import type { SecurityEventRecord } from "../../src/audit/security-events.ts";
import {
  type Harness,
  INITIALIZE,
  initializeSession,
  mcpHeaders,
  OTHER_ISSUER,
  startHarness,
  TEST_ISSUER,
} from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";
import { makeSigningKey, nowSeconds, signToken, unsignedToken } from "../support/token-issuer.ts";

const TOOLS_LIST = { jsonrpc: "2.0", id: 2, method: "tools/list" };

interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly text: string;
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const response = await fetch(url, {
    method: "POST",
    headers: mcpHeaders(headers),
    body: JSON.stringify(body),
  });
  return { status: response.status, headers: response.headers, text: await response.text() };
}

function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

/** Runs `action` and returns the security events it left. */
async function eventsOf(harness: Harness, action: () => Promise<unknown>): Promise<SecurityEventRecord[]> {
  const before = harness.events.length;
  await action();
  return harness.events.slice(before);
}

function textOf(result: unknown): string {
  const content = (result as { content?: Array<{ type: string; text?: string }> }).content ?? [];
  return content.map((part) => part.text ?? "").join("");
}

async function sdkClient(url: string, token: string): Promise<{ client: Client; sessionId: string }> {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: bearer(token) },
  });
  const client = new Client({ name: "threats-identity", version: "1.0.0" });
  await client.connect(transport);
  return { client, sessionId: transport.sessionId ?? "" };
}

describe("THREATS A1-A3: identity and audience", () => {
  let harness: Harness;
  let publicUrl: string;
  const opened: Client[] = [];

  before(async () => {
    harness = await startHarness({
      upstreams: [
        { name: "a", path: "/a" },
        { name: "b", path: "/b" },
      ],
    });
    publicUrl = harness.gateway.config.publicUrl;
  });
  after(async () => {
    await Promise.allSettled(opened.map((client) => client.close()));
    await harness.close();
  });

  it("A1 a token for upstream /a is refused at upstream /b (401) and the challenge names /b's metadata", async () => {
    const token = await harness.token("alice", { audience: `${publicUrl}/a` });

    // The token is good where its audience points.
    await initializeSession(`${harness.url}/a`, token);

    const events = await eventsOf(harness, async () => {
      const refused = await post(`${harness.url}/b`, INITIALIZE, bearer(token));
      assert.equal(refused.status, 401);
      assert.equal(
        refused.headers.get("www-authenticate"),
        `Bearer error="invalid_token", resource_metadata="${publicUrl}/.well-known/oauth-protected-resource/b"`,
      );
      assert.equal(JSON.parse(refused.text).error.data.code, "ERR_AUTH_INVALID");
    });
    assert.deepEqual(
      events.map((event) => [event.type, event.code, event.reason, event.upstream, event.status]),
      [["auth.denied", "ERR_AUTH_INVALID", "audience", "b", 401]],
    );
  });

  it("A1 protected resource metadata names exactly the URL the client used, per upstream", async () => {
    for (const path of ["/a", "/b"]) {
      const response = await fetch(`${publicUrl}/.well-known/oauth-protected-resource${path}`);
      assert.equal(response.status, 200);
      const metadata = (await response.json()) as { resource: string; authorization_servers?: string[] };
      assert.equal(metadata.resource, `${publicUrl}${path}`);
      assert.deepEqual(
        [...(metadata.authorization_servers ?? [])].sort(),
        [OTHER_ISSUER, TEST_ISSUER].sort(),
      );
    }
  });

  it("A2 forged, misdirected, stale and incomplete tokens are each 401 with one generic body and a challenge", async () => {
    const audience = `${publicUrl}/a`;
    const now = nowSeconds();
    const good = { iss: TEST_ISSUER, sub: "mallory", aud: audience, iat: now, exp: now + 600, tenant: "t-m" };
    const main = harness.keys.main;
    const stranger = await makeSigningKey("EdDSA", "main"); // same kid, key the issuer never published
    const unknownKid = await makeSigningKey("EdDSA", "not-published");
    // The classic confusion: the issuer's public key, as PEM, used as an HMAC secret.
    const publicPem = createPublicKey({ key: main.publicJwk, format: "jwk" }).export({
      type: "spki",
      format: "pem",
    });
    const valid = await signToken(main, good);
    const [validHeader, validPayload] = valid.split(".");

    const forged: Array<[string, string, readonly string[]]> = [
      ["alg none, empty signature", unsignedToken({ alg: "none", kid: main.kid }, good, ""), ["malformed"]],
      ["alg none, some signature", unsignedToken({ alg: "none", kid: main.kid }, good), ["algorithm"]],
      [
        "HS256 keyed with the public key",
        await new SignJWT(good)
          .setProtectedHeader({ alg: "HS256", kid: main.kid })
          .sign(new TextEncoder().encode(String(publicPem))),
        ["algorithm"],
      ],
      ["wrong iss", await signToken(main, { ...good, iss: "https://evil.test" }), ["unknown-issuer"]],
      ["wrong aud", await signToken(main, { ...good, aud: `${publicUrl}/b` }), ["audience"]],
      ["expired", await signToken(main, { ...good, iat: now - 7200, exp: now - 3600 }), ["expired"]],
      ["not yet valid", await signToken(main, { ...good, nbf: now + 3600 }), ["not-yet-valid"]],
      ["unknown kid", await signToken(unknownKid, good), ["unknown-kid"]],
      ["bad signature (another key)", await signToken(stranger, good), ["bad-signature"]],
      [
        "bad signature (tampered payload)",
        `${validHeader}.${Buffer.from(JSON.stringify({ ...good, sub: "alice" })).toString("base64url")}.${valid.split(".")[2]}`,
        ["bad-signature"],
      ],
      ["missing tenant claim", await signToken(main, { ...good, tenant: undefined }), ["tenant-claim"]],
    ];
    assert.ok(validPayload);

    const bodies = new Set<string>();
    const challenges = new Set<string | null>();
    for (const [label, token, reasons] of forged) {
      const events = await eventsOf(harness, async () => {
        const answer = await post(`${harness.url}/a`, INITIALIZE, bearer(token));
        assert.equal(answer.status, 401, label);
        bodies.add(answer.text);
        challenges.add(answer.headers.get("www-authenticate"));
        assert.doesNotMatch(answer.text, /mallory|evil|tenant|kid|alg|Error:|\n\s+at /, label);
      });
      assert.equal(events.length, 1, `${label}: exactly one event`);
      assert.equal(events[0]?.type, "auth.denied", label);
      assert.equal(events[0]?.code, "ERR_AUTH_INVALID", label);
      assert.ok(reasons.includes(events[0]?.reason ?? ""), `${label}: reason ${events[0]?.reason}`);
    }
    assert.deepEqual(
      [...bodies],
      [
        '{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"authentication required","data":{"code":"ERR_AUTH_INVALID"}}}',
      ],
    );
    assert.deepEqual(
      [...challenges],
      [
        `Bearer error="invalid_token", resource_metadata="${publicUrl}/.well-known/oauth-protected-resource/a"`,
      ],
    );

    // The genuine token still works: nothing above was refused for lack of a usable issuer.
    await initializeSession(`${harness.url}/a`, valid);
  });

  it("A2 no token at all is 401 with resource_metadata and no error attribute", async () => {
    const events = await eventsOf(harness, async () => {
      const answer = await post(`${harness.url}/a`, INITIALIZE);
      assert.equal(answer.status, 401);
      assert.equal(
        answer.headers.get("www-authenticate"),
        `Bearer resource_metadata="${publicUrl}/.well-known/oauth-protected-resource/a"`,
      );
      assert.equal(JSON.parse(answer.text).error.data.code, "ERR_AUTH_REQUIRED");
    });
    assert.deepEqual(
      events.map((event) => [event.type, event.code, event.reason]),
      [["auth.denied", "ERR_AUTH_REQUIRED", "no-credential"]],
    );
  });

  it("A3 the same sub from two issuers is two principals: no shared session, no shared notes", async () => {
    const url = `${harness.url}/a`;
    const fromMain = await harness.token("sam", { audience: `${publicUrl}/a`, issuer: "main" });
    const fromOther = await harness.token("sam", { audience: `${publicUrl}/a`, issuer: "other" });

    const a = await sdkClient(url, fromMain);
    const b = await sdkClient(url, fromOther);
    opened.push(a.client, b.client);
    assert.notEqual(a.sessionId, b.sessionId);

    await a.client.callTool({ name: "add_note", arguments: { text: "main-issuer sam's note" } });
    const whoA = JSON.parse(textOf(await a.client.callTool({ name: "whoami", arguments: {} })));
    const whoB = JSON.parse(textOf(await b.client.callTool({ name: "whoami", arguments: {} })));
    assert.equal(whoA.sub, "sam");
    assert.equal(whoB.sub, "sam");
    assert.equal(whoA.principal_iss, TEST_ISSUER);
    assert.equal(whoB.principal_iss, OTHER_ISSUER);
    assert.doesNotMatch(
      textOf(await b.client.callTool({ name: "list_notes", arguments: {} })),
      /main-issuer/,
    );
    assert.match(textOf(await a.client.callTool({ name: "list_notes", arguments: {} })), /main-issuer/);

    // B presenting A's live session id: the answer for an unknown session.
    const events = await eventsOf(harness, async () => {
      const foreign = await post(url, TOOLS_LIST, {
        ...bearer(fromOther),
        "mcp-session-id": a.sessionId,
        "mcp-protocol-version": "2025-11-25",
      });
      const unknown = await post(url, TOOLS_LIST, {
        ...bearer(fromOther),
        "mcp-session-id": "never-existed-0123456789abcdefghijklmnop",
        "mcp-protocol-version": "2025-11-25",
      });
      assert.equal(foreign.status, 404);
      assert.equal(foreign.text, unknown.text);
      assert.equal(JSON.parse(foreign.text).error.data.code, "ERR_SESSION_NOT_FOUND");
    });
    assert.equal(events[0]?.type, "session.denied");
    assert.equal(events[0]?.reason, "foreign-principal");
    assert.equal(events[0]?.issuer, OTHER_ISSUER);

    // A's session is untouched by the attempt.
    assert.match(textOf(await a.client.callTool({ name: "list_notes", arguments: {} })), /main-issuer/);
  });

  it("A3 a refreshed token (same iss, sub, tenant) keeps the session; another tenant claim is foreign", async () => {
    const url = `${harness.url}/a`;
    const audience = `${publicUrl}/a`;
    const first = await harness.token("rita", { audience, tenant: "t-rita" });
    const sessionId = await initializeSession(url, first);
    const session = (token: string) => ({
      ...bearer(token),
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-11-25",
    });

    // A refresh: a different token (other iat/exp), same identity.
    const refreshed = await signToken(harness.keys.main, {
      iss: TEST_ISSUER,
      sub: "rita",
      aud: audience,
      tenant: "t-rita",
      iat: nowSeconds() - 5,
      exp: nowSeconds() + 1200,
    });
    assert.notEqual(refreshed, first);
    const kept = await post(url, TOOLS_LIST, session(refreshed));
    assert.equal(kept.status, 200);
    assert.match(kept.text, /add_note/);

    const otherTenant = await harness.token("rita", { audience, tenant: "t-elsewhere" });
    const events = await eventsOf(harness, async () => {
      const foreign = await post(url, TOOLS_LIST, session(otherTenant));
      assert.equal(foreign.status, 404);
      assert.equal(JSON.parse(foreign.text).error.data.code, "ERR_SESSION_NOT_FOUND");
    });
    assert.deepEqual(
      events.map((event) => [event.type, event.reason]),
      [["session.denied", "foreign-principal"]],
    );

    // And the owner, refreshed, is still served after the foreign attempt.
    assert.equal((await post(url, TOOLS_LIST, session(refreshed))).status, 200);
  });
});

describe("THREATS A4: an upstream's own 401 is never relayed", () => {
  let harness: Harness;
  let upstream: RecordingUpstream;

  before(async () => {
    upstream = await startRecordingUpstream();
    harness = await startHarness({ upstreams: [{ name: "recorder", path: "/mcp", url: upstream.url }] });
  });
  after(async () => {
    await harness.close();
    await upstream.close();
  });

  for (const status of [401, 403] as const) {
    it(`A4 the upstream's ${status} after initialize becomes the gateway's 502, with no challenge`, async () => {
      upstream.failWith(null);
      const token = await harness.token("ursula");
      const sessionId = await initializeSession(`${harness.url}/mcp`, token);
      upstream.failWith(status);
      try {
        const events = await eventsOf(harness, async () => {
          const answer = await post(`${harness.url}/mcp`, TOOLS_LIST, {
            ...bearer(token),
            "mcp-session-id": sessionId,
            "mcp-protocol-version": "2025-11-25",
          });
          assert.equal(answer.status, 502);
          assert.equal(answer.headers.get("www-authenticate"), null);
          assert.equal(
            answer.text,
            '{"jsonrpc":"2.0","id":2,"error":{"code":-32000,"message":"upstream unavailable","data":{"code":"ERR_UPSTREAM_REFUSED"}}}',
          );
          assert.doesNotMatch(answer.text, /upstream says no|realm/);
        });
        assert.deepEqual(
          events.map((event) => [event.type, event.reason, event.upstream, event.status]),
          [["upstream.refused", status === 401 ? "unauthorized" : "forbidden", "recorder", 502]],
        );
      } finally {
        upstream.failWith(null);
      }
    });
  }

  it("A4 the upstream's 401 to initialize itself is a 502 too, and no session is created", async () => {
    const token = await harness.token("victor");
    upstream.failWith(401, { includeInitialize: true });
    try {
      const events = await eventsOf(harness, async () => {
        const answer = await post(`${harness.url}/mcp`, INITIALIZE, bearer(token));
        assert.equal(answer.status, 502);
        assert.equal(answer.headers.get("www-authenticate"), null);
        assert.equal(answer.headers.get("mcp-session-id"), null);
        assert.equal(JSON.parse(answer.text).error.data.code, "ERR_UPSTREAM_REFUSED");
      });
      assert.deepEqual(
        events.map((event) => [event.type, event.reason]),
        [["upstream.refused", "unauthorized"]],
      );
    } finally {
      upstream.failWith(null);
    }
  });
});
