/**
 * THREATS "Limits and exposure" L3-L5, end to end: the real `tenantgate serve` process for the
 * start-up refusals, and a real gateway on loopback for Host/Origin and for hostile framing, sizes
 * and JSON-RPC. Requests that fetch cannot make (a chosen Host, repeated headers, Content-Length with
 * Transfer-Encoding) go through node:http or a raw socket.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from "node:http";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import type { SecurityEventRecord } from "../../src/audit/security-events.ts";
import { parseConfig } from "../../src/config/load-config.ts";
import { isGateError } from "../../src/errors.ts";
import { startGateway } from "../../src/gateway/start-gateway.ts";
import {
  type Harness,
  INITIALIZE,
  initializeSession,
  mcpHeaders,
  startHarness,
} from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";
import { withTestProfile } from "../support/test-profile.ts";

const WORKTREE = resolve(import.meta.dirname, "../..");
const CLI = join(WORKTREE, "src/cli/main.ts");

interface RawAnswer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

/** One request over node:http, with exactly the headers given (Host included; none is added). */
function rawRequest(
  port: number,
  options: { path: string; method?: string; headers?: OutgoingHttpHeaders; body?: string | Buffer },
): Promise<RawAnswer> {
  return new Promise((resolvePromise, reject) => {
    const request = httpRequest(
      {
        host: "127.0.0.1",
        port,
        path: options.path,
        method: options.method ?? "GET",
        headers: options.headers ?? {},
        setHost: false,
        agent: false,
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () =>
          resolvePromise({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: Buffer.concat(chunks).toString("utf8"),
          }),
        );
        response.on("error", reject);
      },
    );
    request.on("error", reject);
    request.end(options.body);
  });
}

/** Writes `text` on a fresh socket and returns everything the server sends until it closes. */
async function rawSocket(port: number, text: string): Promise<string> {
  const socket = connect(port, "127.0.0.1");
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  await once(socket, "connect");
  socket.write(text);
  const timer = setTimeout(() => socket.destroy(), 5_000);
  await once(socket, "close");
  clearTimeout(timer);
  return Buffer.concat(chunks).toString("latin1");
}

async function eventsOf(harness: Harness, action: () => Promise<unknown>): Promise<SecurityEventRecord[]> {
  const before = harness.events.length;
  await action();
  return harness.events.slice(before);
}

/** What no client-facing body may ever carry: a stack trace, an exception's text, a file path. */
function assertNothingInternal(body: string, label: string): void {
  assert.doesNotMatch(body, /Error:|\n\s+at |\.ts:\d+|node:internal|TypeError|SyntaxError/, label);
}

// --- L3 ---------------------------------------------------------------------------------------------

interface Exited {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

interface Served {
  readonly child: ChildProcess;
  readonly exited: Promise<Exited>;
  /** What the process has written to stderr so far. */
  readonly stderrSoFar: string;
}

function serve(configFile: string, env: Record<string, string>): Served {
  const cleanEnv: Record<string, string> = {};
  // The environment overlays the config file: none of the runner's TENANTGATE_ settings may leak in.
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !name.startsWith("TENANTGATE_")) cleanEnv[name] = value;
  }
  const child = spawn(process.execPath, [CLI, "serve", "--config", configFile], {
    cwd: WORKTREE,
    env: { ...cleanEnv, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
  });
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<Exited>((resolvePromise) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      // Let the pipes drain before reading what was written.
      setImmediate(() => resolvePromise({ code, signal, stdout, stderr }));
    });
  });
  return {
    child,
    exited,
    get stderrSoFar() {
      return stderr;
    },
  };
}

async function waitFor(read: () => string, pattern: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const match = read().match(pattern);
    if (match) return match;
    await new Promise((resolvePromise) => setTimeout(resolvePromise, 25));
  }
  throw new Error(`timed out waiting for ${pattern}; got: ${read()}`);
}

describe("THREATS L3: unsafe exposure is refused at start, naming the setting", () => {
  let dir: string;
  const key = randomBytes(32).toString("base64url");
  const env = { TG_KEY: key };
  const base = {
    store: "memory:",
    secrets: { masterKey: "env:TG_KEY" },
    upstreams: [{ name: "notes", path: "/mcp", url: "http://127.0.0.1:9/mcp" }],
    audit: { stdout: true },
    admin: { listen: { port: 0 } },
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "tenantgate-l3-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function configFile(name: string, settings: object): Promise<string> {
    const file = join(dir, name);
    await writeFile(file, JSON.stringify(withTestProfile({ ...base, ...settings }), null, 2));
    return file;
  }

  it("L3 serve with no authentication configured exits non-zero and names auth", async () => {
    const file = await configFile("no-auth.json", { listen: { host: "127.0.0.1", port: 0 } });
    const { code, stderr } = await serve(file, env).exited;
    assert.notEqual(code, 0);
    assert.match(stderr, /\bauth\b.*(auth\.issuers|auth\.apiKeys|auth\.anonymous)/);
    assert.doesNotMatch(stderr, /serving on/);
    assert.ok(!stderr.includes(key), "the master key is never printed");
    assertNothingInternal(stderr, "stderr");
  });

  it("L3 serve anonymous on 0.0.0.0 without the attestation exits non-zero and names listen.allowUnauthenticatedExposure", async () => {
    const file = await configFile("anonymous-exposed.json", {
      publicUrl: "http://gateway.example",
      listen: { host: "0.0.0.0", port: 0 },
      auth: { anonymous: true },
    });
    const { code, stderr } = await serve(file, env).exited;
    assert.notEqual(code, 0);
    assert.match(stderr, /listen\.allowUnauthenticatedExposure/);
    assert.match(stderr, /auth\.anonymous/);
    assert.doesNotMatch(stderr, /serving on/);
  });

  it("L3 serve anonymous on 0.0.0.0 with the attestation starts, prints a WARNING, serves, and exits 0 on SIGTERM", async () => {
    const file = await configFile("anonymous-attested.json", {
      publicUrl: "http://gateway.example",
      listen: { host: "0.0.0.0", port: 0, allowUnauthenticatedExposure: true },
      auth: { anonymous: true },
    });
    const running = serve(file, env);
    const [, port] = await waitFor(() => running.stderrSoFar, /serving on http:\/\/0\.0\.0\.0:(\d+)/);
    assert.match(running.stderrSoFar, /^WARNING: UNAUTHENTICATED EXPOSURE\..*0\.0\.0\.0/m);
    assert.match(running.stderrSoFar, /listen\.allowUnauthenticatedExposure is true/);

    // It really serves, behind its Host check (the public URL's host is the only allowed one).
    const health = await rawRequest(Number(port), {
      path: "/.tenantgate/health",
      headers: { host: "gateway.example" },
    });
    assert.equal(health.status, 200);
    const hostile = await rawRequest(Number(port), {
      path: "/.tenantgate/health",
      headers: { host: `127.0.0.1:${port}` },
    });
    assert.equal(hostile.status, 403);

    running.child.kill("SIGTERM");
    const { code, signal } = await running.exited;
    assert.equal(signal, null);
    assert.equal(code, 0);
  });

  it("L3 startGateway itself refuses anonymous on a non-loopback bound address (config built by hand)", async () => {
    const loopback = parseConfig(
      withTestProfile({
        ...base,
        listen: { host: "127.0.0.1", port: 0 },
        auth: { anonymous: true },
      }),
      { env: {} },
    );
    // What the config layer would have refused: only the bound-address check stands in the way.
    const exposed = { ...loopback, listen: { ...loopback.listen, host: "0.0.0.0" } };
    const lines: string[] = [];
    await assert.rejects(
      startGateway(exposed, {
        env,
        log: (line) => void lines.push(line),
        eventsOut: new Writable({ write: (_chunk, _encoding, done) => done() }),
      }),
      (error: unknown) => {
        assert.ok(isGateError(error));
        assert.equal(error.code, "ERR_UNSAFE_EXPOSURE");
        assert.match(error.message, /listen\.allowUnauthenticatedExposure/);
        return true;
      },
    );
    assert.deepEqual(lines, [], "no warning, no serving line: it never served");

    const noAuth = {
      ...loopback,
      auth: { ...loopback.auth, anonymous: false, issuers: [], apiKeys: [] },
    };
    await assert.rejects(
      startGateway(noAuth, { env, eventsOut: new Writable({ write: (_c, _e, done) => done() }) }),
      (error: unknown) => {
        assert.ok(isGateError(error));
        assert.match(error.message, /\bauth\b/);
        return true;
      },
    );
  });
});

// --- L4 ---------------------------------------------------------------------------------------------

describe("THREATS L4: hostile Host and Origin are refused on every endpoint", () => {
  let harness: Harness;
  let port: number;
  before(async () => {
    harness = await startHarness();
    port = harness.gateway.address.port;
  });
  after(async () => {
    await harness.close();
  });

  const endpoints = [
    { label: "an MCP POST", path: "/mcp", method: "POST" },
    { label: "the metadata endpoint", path: "/.well-known/oauth-protected-resource/mcp", method: "GET" },
    { label: "the JWKS", path: "/.well-known/jwks.json", method: "GET" },
  ] as const;

  async function call(
    endpoint: (typeof endpoints)[number],
    headers: OutgoingHttpHeaders,
    token?: string,
  ): Promise<RawAnswer> {
    return rawRequest(port, {
      path: endpoint.path,
      method: endpoint.method,
      headers: {
        ...headers,
        ...(endpoint.method === "POST" ? mcpHeaders() : {}),
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      ...(endpoint.method === "POST" ? { body: JSON.stringify(INITIALIZE) } : {}),
    });
  }

  it("L4 a hostile Host is 403 on an MCP POST, the metadata endpoint and the JWKS (loopback deployment)", async () => {
    const token = await harness.token("hank");
    for (const endpoint of endpoints) {
      // The legitimate Host passes (an MCP POST with a token initializes).
      const fine = await call(endpoint, { host: `127.0.0.1:${port}` }, token);
      assert.equal(fine.status, 200, endpoint.label);

      for (const host of [
        "evil.example",
        `evil.example:${port}`,
        `127.0.0.1.nip.io:${port}`,
        `127.0.0.1:${port + 1}`,
      ]) {
        const events = await eventsOf(harness, async () => {
          const answer = await call(endpoint, { host }, token);
          assert.equal(answer.status, 403, `${endpoint.label}, Host ${host}`);
          assert.equal(JSON.parse(answer.body).error.data.code, "ERR_HOST_FORBIDDEN");
          assert.ok(!answer.body.includes("evil"), "the Host is not echoed");
        });
        assert.deepEqual(
          events.map((event) => [event.type, event.reason, event.status]),
          [["request.refused", "host-forbidden", 403]],
        );
      }
    }
  });

  it("L4 a hostile Origin is 403 on an MCP POST, the metadata endpoint and the JWKS", async () => {
    const token = await harness.token("olga");
    const host = `127.0.0.1:${port}`;
    for (const endpoint of endpoints) {
      const own = await call(endpoint, { host, origin: `http://127.0.0.1:${port}` }, token);
      assert.equal(own.status, 200, `${endpoint.label}: the gateway's own origin`);
      for (const origin of ["https://evil.example", "null", `http://localhost:${port}.evil.example`]) {
        const events = await eventsOf(harness, async () => {
          const answer = await call(endpoint, { host, origin }, token);
          assert.equal(answer.status, 403, `${endpoint.label}, Origin ${origin}`);
          assert.equal(JSON.parse(answer.body).error.data.code, "ERR_ORIGIN_FORBIDDEN");
        });
        assert.deepEqual(
          events.map((event) => [event.type, event.reason, event.status]),
          [["request.refused", "origin-forbidden", 403]],
        );
      }
    }
  });
});

describe("THREATS L4: the same checks on a deployment behind a public name", () => {
  let harness: Harness;
  let upstream: RecordingUpstream;
  let port: number;
  before(async () => {
    // The recording upstream, not the demo: the demo fetches the gateway's JWKS by its loopback
    // address, which this deployment's Host allowlist rightly refuses.
    upstream = await startRecordingUpstream();
    harness = await startHarness({
      upstreams: [{ name: "notes", path: "/mcp", url: upstream.url }],
      extra: {
        publicUrl: "https://gateway.example",
        listen: { host: "127.0.0.1", port: 0, allowedHosts: ["gateway.example"] },
      },
    });
    port = harness.gateway.address.port;
  });
  after(async () => {
    await harness.close();
    await upstream.close();
  });

  it("L4 Host gateway.example passes the check; any other Host, the socket's own address included, is 403", async () => {
    assert.equal(harness.gateway.config.publicUrl, "https://gateway.example");
    const token = await harness.token("gina");
    const initialize = (host: string, origin?: string) =>
      rawRequest(port, {
        path: "/mcp",
        method: "POST",
        headers: {
          host,
          ...(origin ? { origin } : {}),
          ...mcpHeaders({ authorization: `Bearer ${token}` }),
        },
        body: JSON.stringify(INITIALIZE),
      });

    const passes = await initialize("gateway.example");
    assert.equal(passes.status, 200);
    assert.ok(passes.headers["mcp-session-id"]);
    assert.equal((await initialize("gateway.example", "https://gateway.example")).status, 200);
    const jwks = await rawRequest(port, {
      path: "/.well-known/jwks.json",
      headers: { host: "GATEWAY.example" },
    });
    assert.equal(jwks.status, 200, "host names ignore case");
    // The metadata names the URL clients use (the public one), not the socket's address.
    const metadata = await rawRequest(port, {
      path: "/.well-known/oauth-protected-resource/mcp",
      headers: { host: "gateway.example" },
    });
    assert.equal(metadata.status, 200);
    assert.equal(JSON.parse(metadata.body).resource, "https://gateway.example/mcp");

    const initializesBefore = upstream.requests.length;
    for (const host of [
      `127.0.0.1:${port}`,
      `localhost:${port}`,
      "evil.example",
      "gateway.example.evil.test",
    ]) {
      const answer = await initialize(host);
      assert.equal(answer.status, 403, host);
      assert.equal(JSON.parse(answer.body).error.data.code, "ERR_HOST_FORBIDDEN");
      const metadata = await rawRequest(port, {
        path: "/.well-known/oauth-protected-resource/mcp",
        headers: { host },
      });
      assert.equal(metadata.status, 403, `metadata, ${host}`);
    }
    assert.equal(upstream.requests.length, initializesBefore, "nothing refused reached the upstream");
    const events = await eventsOf(harness, async () => {
      const answer = await initialize("gateway.example", "http://gateway.example");
      assert.equal(answer.status, 403, "an http origin for an https deployment");
    });
    assert.deepEqual(
      events.map((event) => [event.type, event.reason]),
      [["request.refused", "origin-forbidden"]],
    );
  });
});

// --- L5 ---------------------------------------------------------------------------------------------

describe("THREATS L5: hostile sizes, framing and JSON-RPC get a generic 4xx, never a crash", () => {
  const MAX_BODY = 2048;
  const MAX_HEADERS = 4096;
  const MAX_BATCH = 3;
  let harness: Harness;
  let port: number;
  let token: string;
  const bodies: string[] = [];

  before(async () => {
    harness = await startHarness({
      extra: { limits: { maxBodyBytes: MAX_BODY, maxHeaderBytes: MAX_HEADERS, maxBatchSize: MAX_BATCH } },
    });
    port = harness.gateway.address.port;
    token = await harness.token("lena");
  });
  after(async () => {
    for (const [index, body] of bodies.entries()) assertNothingInternal(body, `response ${index}`);
    await harness.close();
  });

  async function post(body: string | Buffer, headers: Record<string, string> = {}) {
    const response = await fetch(`${harness.url}/mcp`, {
      method: "POST",
      headers: mcpHeaders({ authorization: `Bearer ${token}`, ...headers }),
      body,
    });
    const text = await response.text();
    bodies.push(text);
    return { status: response.status, text };
  }

  it("L5 a body over limits.maxBodyBytes is 413, declared or streamed", async () => {
    const oversized = JSON.stringify({
      ...INITIALIZE,
      params: { ...INITIALIZE.params, pad: "x".repeat(MAX_BODY) },
    });
    const events = await eventsOf(harness, async () => {
      const declared = await post(oversized);
      assert.equal(declared.status, 413);
      assert.equal(JSON.parse(declared.text).error.data.code, "ERR_BODY_TOO_LARGE");
      assert.ok(!declared.text.includes("xxxx"));
    });
    assert.deepEqual(
      events.map((event) => [event.type, event.reason, event.status]),
      [["request.refused", "body-too-large", 413]],
    );

    // Chunked: no Content-Length to refuse up front; the chunk that crosses the limit is refused.
    const streamed = await rawRequest(port, {
      path: "/mcp",
      method: "POST",
      headers: {
        host: `127.0.0.1:${port}`,
        "transfer-encoding": "chunked",
        ...mcpHeaders({ authorization: `Bearer ${token}` }),
      },
      body: oversized,
    });
    bodies.push(streamed.body);
    assert.equal(streamed.status, 413);
    assert.equal(streamed.body, JSON.stringify(JSON.parse(streamed.body)));
  });

  it("L5 headers over limits.maxHeaderBytes are 431", async () => {
    const events = await eventsOf(harness, async () => {
      const answer = await rawSocket(
        port,
        `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Pad: ${"p".repeat(MAX_HEADERS * 2)}\r\n` +
          "Content-Length: 2\r\n\r\n{}",
      );
      const [head = "", body = ""] = answer.split("\r\n\r\n");
      bodies.push(body);
      assert.match(head, /^HTTP\/1\.1 431 /);
      assert.equal(JSON.parse(body).error.data.code, "ERR_HEADERS_TOO_LARGE");
      assert.ok(!body.includes("ppp"));
    });
    assert.deepEqual(
      events.map((event) => [event.type, event.reason, event.status]),
      [["request.refused", "headers-too-large", 431]],
    );
    // And through fetch, as a client would see it.
    const response = await fetch(`${harness.url}/.well-known/jwks.json`, {
      headers: { "x-pad": "q".repeat(MAX_HEADERS * 2) },
    });
    bodies.push(await response.text());
    assert.equal(response.status, 431);
  });

  it("L5 malformed JSON, non-JSON-RPC JSON and refused batches are 400 with generic bodies", async () => {
    const invalid: Array<[string, string, Record<string, string>]> = [
      ["malformed JSON", '{"jsonrpc":"2.0","id":1,"method":"initialize",', {}],
      ["not JSON at all", "<xml>nope</xml>", {}],
      ["JSON, not JSON-RPC", '{"hello":"world","secret-echo-probe":1}', {}],
      ["JSON-RPC 1.0", '{"id":1,"method":"tools/list","params":[]}', {}],
      ["a bare number", "42", {}],
      ["an empty body", "", {}],
    ];
    const seen = new Set<string>();
    for (const [label, body, headers] of invalid) {
      const events = await eventsOf(harness, async () => {
        const answer = await post(body, headers);
        assert.equal(answer.status, 400, label);
        assert.ok(!answer.text.includes("secret-echo-probe"), label);
        seen.add(answer.text);
      });
      assert.deepEqual(
        events.map((event) => [event.type, event.reason, event.status]),
        [["request.refused", "request-invalid", 400]],
        label,
      );
    }
    assert.deepEqual(
      [...seen],
      [
        '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request","data":{"code":"ERR_REQUEST_INVALID"}}}',
      ],
    );

    const call = (id: number) => ({ jsonrpc: "2.0", id, method: "tools/list" });
    const batches: Array<[string, unknown[], string]> = [
      ["a batch on 2025-11-25", [call(1), call(2)], "2025-11-25"],
      ["a batch on 2025-06-18", [call(1)], "2025-06-18"],
      [
        "a batch over maxBatchSize on 2025-03-26",
        Array.from({ length: MAX_BATCH + 1 }, (_, i) => call(i)),
        "2025-03-26",
      ],
    ];
    const refusals = new Set<string>();
    for (const [label, batch, version] of batches) {
      const events = await eventsOf(harness, async () => {
        const answer = await post(JSON.stringify(batch), { "mcp-protocol-version": version });
        assert.equal(answer.status, 400, label);
        refusals.add(answer.text);
      });
      assert.deepEqual(
        events.map((event) => [event.type, event.reason]),
        [["request.refused", "batch-refused"]],
        label,
      );
    }
    assert.deepEqual(
      [...refusals],
      [
        '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch refused","data":{"code":"ERR_BATCH_REFUSED"}}}',
      ],
    );
  });

  it("L5 two Mcp-Session-Id headers are 400", async () => {
    const sessionId = await initializeSession(`${harness.url}/mcp`, token);
    const events = await eventsOf(harness, async () => {
      const answer = await rawRequest(port, {
        path: "/mcp",
        method: "POST",
        headers: {
          host: `127.0.0.1:${port}`,
          ...mcpHeaders({ authorization: `Bearer ${token}`, "mcp-protocol-version": "2025-11-25" }),
          "mcp-session-id": [sessionId, "another-session-id-0123456789abcdef"],
        },
        body: JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/list" }),
      });
      bodies.push(answer.body);
      assert.equal(answer.status, 400);
      assert.equal(JSON.parse(answer.body).error.data.code, "ERR_REQUEST_INVALID");
      assert.ok(!answer.body.includes(sessionId));
    });
    assert.deepEqual(
      events.map((event) => [event.type, event.reason, event.status]),
      [["request.refused", "request-invalid", 400]],
    );
    // The same id, once, still works: the refusal did not end the session.
    const fine = await post(JSON.stringify({ jsonrpc: "2.0", id: 8, method: "tools/list" }), {
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-11-25",
    });
    assert.equal(fine.status, 200);
  });

  it("L5 Content-Length with Transfer-Encoding: chunked is 400, nothing smuggled is served, and the gateway stays up", async () => {
    const smuggled = `GET /.well-known/jwks.json HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
    const body = `0\r\n\r\n${smuggled}`;
    const events = await eventsOf(harness, async () => {
      const answer = await rawSocket(
        port,
        `POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${token}\r\n` +
          "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n" +
          `Content-Length: ${Buffer.byteLength(body)}\r\nTransfer-Encoding: chunked\r\n\r\n${body}`,
      );
      assert.match(answer, /^HTTP\/1\.1 400 /);
      assert.equal(answer.match(/HTTP\/1\.1 /g)?.length, 1, "exactly one response: nothing smuggled");
      const [, responseBody = ""] = answer.split("\r\n\r\n");
      bodies.push(responseBody);
      assert.equal(JSON.parse(responseBody).error.data.code, "ERR_REQUEST_INVALID");
    });
    assert.deepEqual(
      events.map((event) => [event.type, event.reason, event.status]),
      [["request.refused", "request-invalid", 400]],
    );

    // Still serving.
    const health = await fetch(`${harness.url}/.tenantgate/health`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: "ok" });
    const sessionId = await initializeSession(`${harness.url}/mcp`, token);
    assert.ok(sessionId);
  });
});
