/**
 * THREATS E1, end to end: a real `tenantgate serve` process with every output on (audit.stdout, the
 * audit file, the log file, stderr), fed requests carrying planted canaries in every place a client
 * or an upstream can put a secret: a garbage bearer token, a valid token whose email claim (and
 * subject and tenant) are canaries, a cookie, a query-string token, a Last-Event-ID, an upstream's
 * error body, and the session id the gateway minted (a canary by observation). After SIGTERM every
 * byte the process wrote is scanned: no canary appears raw or in a cheap encoding, and the keyed
 * tags of the session and of both principals appear where those were logged.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createIdentifierTagger } from "../../src/crypto/identifier-tag.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { ownershipKey } from "../../src/store/keys.ts";
import { INITIALIZE, mcpHeaders } from "../support/gateway-harness.ts";
import { type GatewayProcess, spawnGateway } from "../support/processes.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";
import {
  makeSigningKey,
  nowSeconds,
  type SigningKey,
  signToken,
  writeJwksFile,
} from "../support/token-issuer.ts";

const ISSUER = "https://issuer.test";
const MASTER_KEY_VARIABLE = "TG_CANARY_MASTER_KEY";

const hex = (bytes = 12): string => randomBytes(bytes).toString("hex");

/** The forms a value could leak in that are cheap to look for. */
function encodedForms(value: string): string[] {
  const bytes = Buffer.from(value, "utf8");
  return [
    ...new Set([
      value,
      encodeURIComponent(value),
      bytes.toString("base64"),
      bytes.toString("base64url"),
      bytes.toString("hex"),
      JSON.stringify(value).slice(1, -1),
    ]),
  ];
}

function jsonLines(text: string): Record<string, unknown>[] {
  return text
    .split("\n")
    .filter((line) => line.trim().startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe("E1 canaries never reach a log or audit line", () => {
  let dir: string;
  let key: SigningKey;
  let jwks: Awaited<ReturnType<typeof writeJwksFile>>;
  let upstream: RecordingUpstream;
  let gateway: GatewayProcess | undefined;
  const masterKey = randomBytes(32).toString("base64url");

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "tenantgate-e1-"));
    key = await makeSigningKey("EdDSA", "main");
    jwks = await writeJwksFile({ keys: [key.publicJwk] });
    upstream = await startRecordingUpstream();
  });

  after(async () => {
    await gateway?.close();
    await upstream?.close();
    await jwks?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it("E1 no raw token, session id, cookie, email, query string or upstream error body is written; the tags are", async (t) => {
    const logFile = join(dir, "gateway.log");
    const auditFile = join(dir, "audit.jsonl");
    gateway = await spawnGateway({
      config: {
        listen: { host: "127.0.0.1", port: 0 },
        store: "memory:",
        secrets: { masterKey: `env:${MASTER_KEY_VARIABLE}` },
        auth: {
          issuers: [{ issuer: ISSUER, jwksFile: jwks.path, algorithms: ["EdDSA"], tenantClaim: "tenant" }],
        },
        upstreams: [
          {
            name: "recorder",
            path: "/mcp",
            url: upstream.url,
            protocolVersions: ["2025-03-26", "2025-06-18", "2025-11-25"],
          },
        ],
        audit: { stdout: true, file: auditFile },
        log: { level: "info", file: logFile },
        admin: { listen: { port: 0 } },
      },
      env: { [MASTER_KEY_VARIABLE]: masterKey },
    });
    const endpoint = `${gateway.url}/mcp`;

    // --- the canaries ---------------------------------------------------------------------------
    const garbageToken = `canary-garbage-${hex()}`;
    const cookie = `canary-cookie-${hex()}`;
    const queryToken = `canary-query-${hex()}`;
    const lastEventId = `canary-event-${hex()}`;
    const upstreamErrorBody = `canary-upstream-error-${hex()}`;
    const alice = { subject: `canary-alice-${hex()}`, tenant: `canary-acme-${hex()}` };
    const bob = { subject: `canary-bob-${hex()}`, tenant: `canary-globex-${hex()}` };
    const email = `canary.${hex()}@mail.example`;
    const tokenFor = (who: { subject: string; tenant: string }, extra: Record<string, unknown> = {}) =>
      signToken(key, {
        iss: ISSUER,
        sub: who.subject,
        tenant: who.tenant,
        aud: endpoint,
        iat: nowSeconds(),
        exp: nowSeconds() + 600,
        ...extra,
      });
    const aliceToken = await tokenFor(alice, { email });
    const bobToken = await tokenFor(bob);

    // --- the flows ------------------------------------------------------------------------------
    let requests = 0;
    const send = async (
      init: { method: string; headers?: Record<string, string>; body?: unknown },
      url = endpoint,
    ): Promise<Response> => {
      requests += 1;
      return fetch(url, {
        method: init.method,
        headers: init.headers ?? {},
        ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
      });
    };
    const asAlice = (extra: Record<string, string> = {}) =>
      mcpHeaders({ authorization: `Bearer ${aliceToken}`, cookie: `sid=${cookie}`, ...extra });

    const initialized = await send({ method: "POST", headers: asAlice(), body: INITIALIZE });
    assert.equal(initialized.status, 200, await initialized.text());
    const sessionId = initialized.headers.get("mcp-session-id") ?? "";
    assert.ok(sessionId.length >= 22, "the gateway minted a session id");
    const session = { "mcp-session-id": sessionId, "mcp-protocol-version": "2025-11-25" };

    const notified = await send({
      method: "POST",
      headers: asAlice(session),
      body: { jsonrpc: "2.0", method: "notifications/initialized" },
    });
    assert.equal(notified.status, 202, await notified.text());

    const called = await send({
      method: "POST",
      headers: asAlice(session),
      body: { jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "echo", arguments: {} } },
    });
    assert.equal(called.status, 200, await called.text());

    upstream.failWith(500, { body: `internal failure: ${upstreamErrorBody}` });
    const failed = await send({
      method: "POST",
      headers: asAlice(session),
      body: { jsonrpc: "2.0", id: 3, method: "tools/call", params: { name: "echo", arguments: {} } },
    });
    assert.equal(failed.status, 500);
    assert.match(await failed.text(), new RegExp(upstreamErrorBody), "relayed to the client, nowhere else");
    upstream.failWith(null);

    // A GET stream with a Last-Event-ID the gateway never wrapped; the client leaves after one event.
    const leave = new AbortController();
    const stream = await fetch(endpoint, {
      method: "GET",
      headers: {
        authorization: `Bearer ${aliceToken}`,
        cookie: `sid=${cookie}`,
        accept: "text/event-stream",
        "last-event-id": lastEventId,
        ...session,
      },
      signal: leave.signal,
    });
    requests += 1;
    assert.equal(stream.status, 200);
    const reader = stream.body?.getReader();
    const first = await reader?.read();
    assert.match(Buffer.from(first?.value ?? new Uint8Array()).toString("utf8"), /notifications\/message/);
    leave.abort();
    await reader?.cancel().catch(() => undefined);
    // Its line is written when the gateway sees the client go; waiting for it keeps a slow machine
    // from ending the stream at shutdown instead (a finished line, not an aborted one).
    for (let waited = 0; waited < 5_000; waited += 20) {
      if ((await readFile(logFile, "utf8").catch(() => "")).includes('"method":"GET"')) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }

    const garbage = await send({
      method: "POST",
      headers: mcpHeaders({ authorization: `Bearer ${garbageToken}`, cookie: `sid=${cookie}`, ...session }),
      body: { jsonrpc: "2.0", id: 4, method: "tools/list" },
    });
    assert.equal(garbage.status, 401);
    await garbage.arrayBuffer();

    const queried = await send(
      {
        method: "POST",
        headers: asAlice(session),
        body: { jsonrpc: "2.0", id: 5, method: "tools/list" },
      },
      `${endpoint}?access_token=${queryToken}`,
    );
    assert.equal(queried.status, 400);
    await queried.arrayBuffer();

    const stolen = await send({
      method: "POST",
      headers: mcpHeaders({ authorization: `Bearer ${bobToken}`, ...session }),
      body: { jsonrpc: "2.0", id: 6, method: "tools/list" },
    });
    assert.equal(stolen.status, 404);
    await stolen.arrayBuffer();

    const deleted = await send({ method: "DELETE", headers: asAlice(session) });
    assert.equal(deleted.status, 200);
    await deleted.arrayBuffer();

    // What the upstream saw: no canary of the client's crossed the gateway either.
    const upstreamSaw = JSON.stringify(upstream.requests);
    for (const value of [cookie, lastEventId, aliceToken, garbageToken, queryToken, sessionId]) {
      assert.ok(!upstreamSaw.includes(value), "a client canary reached the upstream");
    }
    const upstreamSessionIds = [...upstream.sessionIds];
    assert.equal(upstreamSessionIds.length, 1);

    // --- stop, then read every output -----------------------------------------------------------
    const running = gateway;
    gateway = undefined;
    const output = running.output;
    await running.close();
    const { stdout, stderr } = output();
    const logText = await readFile(logFile, "utf8");
    const auditText = await readFile(auditFile, "utf8");
    const headText = await readFile(`${auditFile}.head`, "utf8").catch(() => "");
    assert.equal((await stat(logFile)).mode & 0o777, 0o600, "the log file is 0600");
    const outputs: Record<string, string> = {
      stdout,
      stderr,
      "log.file": logText,
      "audit.file": auditText,
      "audit.head": headText,
    };

    const [jwtHeader, jwtPayload, jwtSignature] = aliceToken.split(".");
    const canaries: Record<string, string> = {
      "garbage bearer token": garbageToken,
      "valid bearer token": aliceToken,
      "its payload": jwtPayload ?? "",
      "its signature": jwtSignature ?? "",
      "bob's token": bobToken,
      "email claim": email,
      "alice's subject": alice.subject,
      "alice's tenant": alice.tenant,
      "bob's subject": bob.subject,
      "bob's tenant": bob.tenant,
      cookie,
      "query-string token": queryToken,
      "Last-Event-ID": lastEventId,
      "upstream error body": upstreamErrorBody,
      "minted session id": sessionId,
      "upstream session id": upstreamSessionIds[0] ?? "",
      "master key": masterKey,
    };
    assert.ok(jwtHeader, "a JWT has three parts");
    let forms = 0;
    for (const [what, value] of Object.entries(canaries)) {
      assert.ok(value.length >= 16, `${what} is a usable canary`);
      for (const form of encodedForms(value)) {
        forms += 1;
        for (const [where, text] of Object.entries(outputs)) {
          assert.ok(!text.includes(form), `${what} appears in ${where}`);
        }
      }
    }
    assert.ok(!logText.includes("?"), "no query string (nor any ?) in the log");
    assert.ok(!logText.includes("access_token"), "not even the query's parameter name");

    // --- the tags are there -------------------------------------------------------------------
    const keyring = Keyring.fromKeys(
      [{ id: "default", key: Buffer.from(masterKey, "base64url") }],
      "default",
    );
    const tagger = createIdentifierTagger(keyring.purposeKey("log-tag"));
    const sessionDigest = ownershipKey("session", sessionId).segments[1] ?? "";
    const tags = {
      session: tagger.tag(sessionDigest),
      aliceSubject: tagger.tag(alice.subject),
      aliceTenant: tagger.tag(alice.tenant),
      bobSubject: tagger.tag(bob.subject),
      client: tagger.tag("127.0.0.1"),
    };

    const logLines = jsonLines(logText);
    const access = logLines.filter((line) => line["kind"] === "access");
    assert.equal(access.length, requests, "exactly one access line per request");
    for (const line of access) {
      assert.equal(line["path"], "/mcp");
      assert.equal(line["upstream"], "recorder");
      assert.equal(line["clientTag"], tags.client);
      assert.equal(typeof line["durationMs"], "number");
      assert.equal(typeof line["bytesOut"], "number");
    }
    const aliceLines = access.filter((line) => line["subjectTag"] === tags.aliceSubject);
    // Every request alice made that got past the query check: initialize, initialized, two calls,
    // the stream and DELETE (the query-string request is refused before authentication).
    assert.equal(aliceLines.length, 6);
    for (const line of aliceLines) {
      assert.equal(line["tenantTag"], tags.aliceTenant);
      assert.equal(line["issuer"], ISSUER);
    }
    // Lines are written as responses end, so the stream's may come after later requests': compared
    // as a set.
    const summary = (line: Record<string, unknown>) =>
      JSON.stringify([
        line["method"],
        line["mcpMethod"] ?? null,
        line["status"] ?? null,
        line["code"] ?? null,
      ]);
    assert.deepEqual(
      access.map(summary).sort(),
      [
        ["POST", "initialize", 200, null],
        ["POST", "notifications/initialized", 202, null],
        ["POST", "tools/call", 200, null],
        ["POST", "tools/call", 500, null],
        ["GET", null, 200, null],
        ["POST", null, 401, "ERR_AUTH_INVALID"],
        ["POST", null, 400, "ERR_REQUEST_INVALID"],
        ["POST", "tools/list", 404, "ERR_SESSION_NOT_FOUND"],
        ["DELETE", null, 200, null],
      ]
        .map((fields) => JSON.stringify(fields))
        .sort(),
    );
    const withSession = access.filter((line) => line["sessionTag"] === tags.session);
    assert.equal(withSession.length, 6, "initialize, initialized, both calls, the stream and DELETE");
    const streamLine = access.find((line) => line["method"] === "GET");
    assert.equal(streamLine?.["aborted"], true, "the stream's client left");
    assert.equal(streamLine?.["sessionTag"], tags.session);
    const bobLine = access.find((line) => line["subjectTag"] === tags.bobSubject);
    assert.equal(bobLine?.["subjectTag"], tags.bobSubject);
    assert.equal(bobLine?.["sessionTag"], undefined, "a refused session names none");

    const auditRecords = jsonLines(auditText)
      .map((line) => line["record"] as Record<string, unknown> | undefined)
      .filter((record) => record !== undefined);
    const created = auditRecords.find((record) => record["type"] === "session.created");
    assert.equal(created?.["sessionTag"], tags.session);
    assert.equal(created?.["subjectTag"], tags.aliceSubject);
    const foreign = auditRecords.find(
      (record) => record["type"] === "session.denied" && record["reason"] === "foreign-principal",
    );
    assert.equal(foreign?.["subjectTag"], tags.bobSubject);
    assert.equal(foreign?.["sessionTag"], tags.session);
    assert.ok(auditRecords.some((record) => record["type"] === "auth.denied"));
    assert.ok(
      auditRecords.some(
        (record) => record["type"] === "request.refused" && record["reason"] === "query-string",
      ),
    );
    assert.ok(auditRecords.some((record) => record["type"] === "stream.event-id-refused"));
    const stdoutEvents = jsonLines(stdout);
    assert.ok(stdoutEvents.some((event) => event["sessionTag"] === tags.session));

    const count = (text: string, value: string) => text.split(value).length - 1;
    const found = Object.entries(tags).map(
      ([name, value]) =>
        `${name} ${count(logText, value)}/${count(auditText, value)}/${count(stdout, value)}`,
    );
    for (const [name, value] of Object.entries(tags)) {
      assert.ok(count(logText, value) > 0, `the ${name} tag is in the log`);
      assert.ok(count(auditText, value) > 0, `the ${name} tag is in the audit file`);
    }
    t.diagnostic(
      `E1 scan: ${Object.entries(outputs)
        .map(([where, text]) => `${where} ${Buffer.byteLength(text)} B`)
        .join(", ")}; ${Object.keys(canaries).length} canaries in ${forms} forms absent; ` +
        `tags found (log/audit/stdout): ${found.join(", ")}; ${access.length} access lines for ${requests} requests`,
    );
  });
});
