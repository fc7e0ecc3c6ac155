/**
 * The access log as `startGateway` writes it (through `StartGatewayOptions.log`): one line per
 * request, however it ends; the path only for the gateway's own endpoints; no query, no unknown
 * path, no session id; operator warnings as `msg` lines.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { parseConfig } from "../../src/config/load-config.ts";
import { createIdentifierTagger } from "../../src/crypto/identifier-tag.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { type RunningGateway, startGateway } from "../../src/gateway/start-gateway.ts";
import { ownershipKey } from "../../src/store/keys.ts";
import { INITIALIZE, mcpHeaders } from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";
import { withTestProfile } from "../support/test-profile.ts";

const masterKey = randomBytes(32);
const tagger = createIdentifierTagger(
  Keyring.fromKeys([{ id: "default", key: masterKey }], "default").purposeKey("log-tag"),
);

describe("access log through startGateway", () => {
  let upstream: RecordingUpstream;
  let gateway: RunningGateway;
  const lines: string[] = [];
  const access = () =>
    lines
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((line) => line["kind"] === "access");

  before(async () => {
    upstream = await startRecordingUpstream();
    const config = parseConfig(
      withTestProfile({
        listen: { host: "127.0.0.1", port: 0 },
        store: "memory:",
        secrets: { masterKey: "env:TG_ACCESS_LOG_KEY" },
        auth: { anonymous: true },
        upstreams: [{ name: "recorder", path: "/mcp", url: upstream.url, protocolVersions: ["2025-11-25"] }],
        audit: { stdout: true },
        // The lines asserted here are info lines: the level is this test's, whatever a profile says.
        log: { level: "info" },
        admin: { listen: { port: 0 } },
      }),
      { env: {} },
    );
    gateway = await startGateway(config, {
      env: { TG_ACCESS_LOG_KEY: masterKey.toString("base64url") },
      eventsOut: new Writable({ write: (_chunk, _encoding, done) => done() }),
      log: (line) => void lines.push(line),
    });
  });

  after(async () => {
    await gateway?.close({ graceMs: 0 });
    await upstream?.close();
  });

  /** Waits until `count` access lines are written (a line follows its response's end). */
  async function untilLines(count: number): Promise<Record<string, unknown>[]> {
    for (let waited = 0; access().length < count && waited < 5_000; waited += 10) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return access();
  }

  it("writes the gateway's own endpoints' paths, and no other path nor any query", async () => {
    const before = access().length;
    const secret = `sk-${randomBytes(16).toString("hex")}`;
    const paths = [
      "/.tenantgate/health",
      "/.well-known/jwks.json",
      "/.well-known/oauth-protected-resource/mcp",
      `/mcp/${secret}`,
      `/.well-known/${secret}`,
      `/.tenantgate/session/${secret}`,
      `/.tenantgate/health?key=${secret}`,
    ];
    for (const path of paths) {
      const response = await fetch(`${gateway.url}${path}`);
      await response.arrayBuffer();
    }
    const written = (await untilLines(before + paths.length)).slice(before);
    assert.deepEqual(
      written.map((line) => [line["path"] ?? null, line["status"], line["code"] ?? null]),
      [
        ["/.tenantgate/health", 200, null],
        ["/.well-known/jwks.json", 200, null],
        ["/.well-known/oauth-protected-resource/mcp", 200, null],
        [null, 404, "ERR_NOT_FOUND"],
        [null, 404, "ERR_NOT_FOUND"],
        [null, 404, "ERR_NOT_FOUND"],
        ["/.tenantgate/health", 200, null],
      ],
    );
    assert.ok(!lines.join("\n").includes(secret));
  });

  it("tags the session by its digest, names the MCP method, and never writes the id", async () => {
    const before = access().length;
    const initialized = await fetch(`${gateway.url}/mcp`, {
      method: "POST",
      headers: mcpHeaders(),
      body: JSON.stringify(INITIALIZE),
    });
    await initialized.arrayBuffer();
    const sessionId = initialized.headers.get("mcp-session-id") ?? "";
    assert.equal(initialized.status, 200);
    const odd = await fetch(`${gateway.url}/mcp`, {
      method: "POST",
      headers: mcpHeaders({ "mcp-session-id": sessionId, "mcp-protocol-version": "2025-11-25" }),
      body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: `x/${sessionId}` }),
    });
    await odd.arrayBuffer();
    const [init, call] = (await untilLines(before + 2)).slice(before);
    const sessionTag = tagger.tag(ownershipKey("session", sessionId).segments[1] ?? "");
    assert.equal(init?.["mcpMethod"], "initialize");
    assert.equal(init?.["sessionTag"], sessionTag);
    assert.equal(init?.["issuer"], "urn:tenantgate:anonymous");
    assert.equal(call?.["mcpMethod"], "(other)");
    assert.equal(call?.["sessionTag"], sessionTag);
    assert.equal(call?.["era"], "legacy");
    assert.equal(call?.["upstream"], "recorder");
    assert.ok(!lines.join("\n").includes(sessionId));
  });

  it("writes exactly one line for a request whose client leaves mid-stream", async () => {
    const initialized = await fetch(`${gateway.url}/mcp`, {
      method: "POST",
      headers: mcpHeaders(),
      body: JSON.stringify(INITIALIZE),
    });
    await initialized.arrayBuffer();
    const sessionId = initialized.headers.get("mcp-session-id") ?? "";
    const before = access().length;
    const leave = new AbortController();
    const stream = await fetch(`${gateway.url}/mcp`, {
      headers: { accept: "text/event-stream", "mcp-session-id": sessionId },
      signal: leave.signal,
    });
    const reader = stream.body?.getReader();
    await reader?.read();
    leave.abort();
    await reader?.cancel().catch(() => undefined);
    const written = (await untilLines(before + 1)).slice(before);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(access().length, before + 1, "one line, not one per close and finish");
    assert.equal(written[0]?.["method"], "GET");
    assert.equal(written[0]?.["status"], 200);
    assert.equal(written[0]?.["aborted"], true);
    assert.ok(typeof written[0]?.["bytesOut"] === "number" && written[0]["bytesOut"] > 0);
  });
});
