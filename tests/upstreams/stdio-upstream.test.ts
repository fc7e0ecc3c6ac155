/**
 * The stdio bridge (src/upstreams/stdio-upstream.ts), driven directly with request objects that carry
 * principals, against real child processes: the probe server in tests/support/stdio-probe-server.ts
 * and `@modelcontextprotocol/server-everything` in stdio mode. Nothing about child processes is
 * mocked; the vault is an in-memory test double.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chownSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { after, afterEach, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import type { StdioUpstreamConfig } from "../../src/config/gateway-config.ts";
import { type GateErrorCode, isGateError } from "../../src/errors.ts";
import type {
  UpstreamClient,
  UpstreamRequest,
  UpstreamResponse,
  UpstreamSessionBinding,
} from "../../src/gateway/upstream-client.ts";
import { ownerScope, type Principal } from "../../src/identity/principal.ts";
import { principalDigest, type RevocationSignal } from "../../src/sessions/revocation-bus.ts";
import {
  createStdioUpstreamClient,
  type StdioProcessContext,
  type StdioProcessEvent,
  type StdioUpstreamOptions,
} from "../../src/upstreams/stdio-upstream.ts";
import { alive, eventually, PROCESS_WAIT_MS } from "../support/process-watch.ts";
import {
  LEGACY_VERSION as PROTOCOL_VERSION,
  testPrincipal as principal,
  readBody as readAll,
  probeUpstream as upstreamConfig,
} from "../support/stdio-bridge.ts";
import { createVaultDouble, type VaultDouble } from "../support/vault-double.ts";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
/**
 * uids for the distinct-uid tests, above every account on a Debian-like system (nobody is 65534).
 * Ten per run, placed by pid: a range must belong to one gateway only (the bridge kills whatever is
 * left with a uid it handed out), and another checkout may be running these tests at the same time.
 */
const UID_BASE = 100_000 + (process.pid % 5_000) * 10;
const UID_RANGE: [number, number] = [UID_BASE, UID_BASE + 9];

const isRoot = process.getuid?.() === 0;

const alice = principal("alice");
const bob = principal("bob");

interface EventLog {
  readonly events: StdioProcessEvent[];
  onEvent(event: StdioProcessEvent): void;
  waitFor(matches: (event: StdioProcessEvent) => boolean, timeoutMs?: number): Promise<StdioProcessEvent>;
}

function eventLog(): EventLog {
  const events: StdioProcessEvent[] = [];
  const waiters: {
    matches: (event: StdioProcessEvent) => boolean;
    done: (event: StdioProcessEvent) => void;
  }[] = [];
  return {
    events,
    onEvent(event) {
      events.push(event);
      for (const waiter of [...waiters]) {
        if (waiter.matches(event)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.done(event);
        }
      }
    },
    waitFor(matches, timeoutMs = PROCESS_WAIT_MS) {
      const seen = events.find(matches);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("event did not come")), timeoutMs);
        waiters.push({
          matches,
          done: (event) => {
            clearTimeout(timer);
            resolve(event);
          },
        });
      });
    },
  };
}

function headers(sessionId?: string): Record<string, string> {
  return {
    "content-type": "application/json",
    accept: "application/json, text/event-stream",
    "mcp-protocol-version": PROTOCOL_VERSION,
    ...(sessionId !== undefined ? { "mcp-session-id": sessionId } : {}),
  };
}

function post(
  client: UpstreamClient,
  caller: Principal | undefined,
  sessionId: string | undefined,
  message: unknown,
): Promise<UpstreamResponse> {
  const request: UpstreamRequest = {
    method: "POST",
    headers: headers(sessionId),
    body: Buffer.from(JSON.stringify(message)),
    ...(caller !== undefined ? { principal: caller } : {}),
  };
  return client.request(request);
}

async function postJson(
  client: UpstreamClient,
  caller: Principal,
  sessionId: string | undefined,
  message: unknown,
): Promise<{ status: number; headers: UpstreamResponse["headers"]; json: unknown }> {
  const answer = await post(client, caller, sessionId, message);
  const text = await readAll(answer.body);
  return { status: answer.status, headers: answer.headers, json: text === "" ? undefined : JSON.parse(text) };
}

let nextId = 1;

/** initialize + notifications/initialized; answers the bridge's session id. */
async function openSession(client: UpstreamClient, caller: Principal): Promise<string> {
  const answer = await postJson(client, caller, undefined, {
    jsonrpc: "2.0",
    id: nextId++,
    method: "initialize",
    params: {
      protocolVersion: PROTOCOL_VERSION,
      capabilities: {},
      clientInfo: { name: "stdio-bridge-test", version: "1.0.0" },
    },
  });
  assert.equal(answer.status, 200);
  const sessionId = answer.headers["mcp-session-id"];
  assert.equal(typeof sessionId, "string");
  const initialized = await post(client, caller, sessionId as string, {
    jsonrpc: "2.0",
    method: "notifications/initialized",
  });
  assert.equal(initialized.status, 202);
  assert.equal(await readAll(initialized.body), "");
  return sessionId as string;
}

/** tools/call and the tool's JSON result (the probe answers one text part holding JSON). */
async function callTool(
  client: UpstreamClient,
  caller: Principal,
  sessionId: string,
  name: string,
  args: Record<string, unknown> = {},
): Promise<Record<string, unknown>> {
  const answer = await postJson(client, caller, sessionId, {
    jsonrpc: "2.0",
    id: nextId++,
    method: "tools/call",
    params: { name, arguments: args },
  });
  assert.equal(answer.status, 200, JSON.stringify(answer.json));
  const result = (answer.json as { result: { content: { text: string }[] } }).result;
  return JSON.parse(result.content[0]?.text ?? "null") as Record<string, unknown>;
}

async function rejectsWith(promise: Promise<unknown>, code: GateErrorCode): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    assert.ok(isGateError(error, code), `expected ${code}, got ${String(error)}`);
    return error;
  }
  assert.fail(`expected ${code}, but it resolved`);
}

/** Reads `data:` events from a GET stream as they arrive. */
function sseReader(body: Readable): {
  next(matches: (message: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  ended(): Promise<void>;
} {
  const messages: Record<string, unknown>[] = [];
  let buffer = "";
  let ended = false;
  const listeners = new Set<() => void>();
  const notify = (): void => {
    for (const listener of [...listeners]) listener();
  };
  body.setEncoding("utf8");
  body.on("data", (chunk: string) => {
    buffer += chunk;
    for (let end = buffer.indexOf("\n\n"); end !== -1; end = buffer.indexOf("\n\n")) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) messages.push(JSON.parse(line.slice(6)) as Record<string, unknown>);
      }
    }
    notify();
  });
  const finish = (): void => {
    ended = true;
    notify();
  };
  body.on("end", finish);
  body.on("close", finish);
  const waitFor = <T>(probe: () => T | undefined, what: string): Promise<T> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        listeners.delete(check);
        reject(new Error(`GET stream: ${what} did not come`));
      }, PROCESS_WAIT_MS);
      const check = (): void => {
        const found = probe();
        if (found === undefined) return;
        clearTimeout(timer);
        listeners.delete(check);
        resolve(found);
      };
      listeners.add(check);
      check();
    });
  return {
    next(matches) {
      return waitFor(() => {
        const index = messages.findIndex(matches);
        return index === -1 ? undefined : messages.splice(index, 1)[0];
      }, "a message");
    },
    ended() {
      return waitFor(() => (ended ? true : undefined), "the end").then(() => undefined);
    },
  };
}

function openGet(
  client: UpstreamClient,
  caller: Principal,
  sessionId: string,
  signal?: AbortSignal,
): Promise<UpstreamResponse> {
  return client.request({
    method: "GET",
    headers: headers(sessionId),
    principal: caller,
    ...(signal !== undefined ? { signal } : {}),
  });
}

function del(client: UpstreamClient, caller: Principal, sessionId: string): Promise<UpstreamResponse> {
  return client.request({ method: "DELETE", headers: headers(sessionId), principal: caller });
}

/** Binds a bridge session as the gateway does after recording it; answers the session's digest. */
function bind(
  client: UpstreamClient,
  sessionId: string,
  binding: Partial<UpstreamSessionBinding> = {},
): string {
  const sessionDigest = binding.sessionDigest ?? randomBytes(32).toString("base64url");
  assert.ok(client.bindSession, "the stdio bridge takes bindings");
  client.bindSession(sessionId, {
    killGeneration: 1,
    stillValid: async () => true,
    expiresAt: Date.now() + 3_600_000,
    ...binding,
    sessionDigest,
  });
  return sessionDigest;
}

function revoke(client: UpstreamClient, signal: RevocationSignal): void {
  assert.ok(client.applyRevocation, "the stdio bridge takes revocations");
  client.applyRevocation(signal);
}

describe("stdio upstream bridge", () => {
  let base: string;
  let roots = 0;
  const clients: UpstreamClient[] = [];
  const canaryName = `STDIO_CANARY_${randomBytes(4).toString("hex").toUpperCase()}`;
  const canaryValue = `canary-${randomBytes(12).toString("hex")}`;
  const tenantgateCanaryValue = `tg-canary-${randomBytes(12).toString("hex")}`;

  before(async () => {
    base = await mkdtemp(join(tmpdir(), "tenantgate-stdio-test-"));
    // Children of other uids (runAs distinct-uid) must be able to pass through to their directory.
    await chmod(base, 0o711);
    // Set before any client exists: a bridge that copied the gateway's environment would pass them on.
    process.env[canaryName] = canaryValue;
    process.env["TENANTGATE_STDIO_CANARY"] = tenantgateCanaryValue;
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
  });

  after(async () => {
    delete process.env[canaryName];
    delete process.env["TENANTGATE_STDIO_CANARY"];
    await rm(base, { recursive: true, force: true });
  });

  function newClient(
    options: StdioUpstreamOptions = {},
    upstream: StdioUpstreamConfig = upstreamConfig(),
  ): { client: UpstreamClient; log: EventLog; workRoot: string } {
    const log = eventLog();
    const workRoot = join(base, `root-${++roots}`);
    const client = createStdioUpstreamClient(upstream, {
      workRoot,
      onEvent: (event) => log.onEvent(event),
      ...options,
    });
    clients.push(client);
    return { client, log, workRoot };
  }

  it("initialize, tools/list, tools/call and a batch round-trip through one process", async () => {
    const { client, log } = newClient();
    const initialize = await postJson(client, alice, undefined, {
      jsonrpc: "2.0",
      id: "init-1",
      method: "initialize",
      params: {
        protocolVersion: PROTOCOL_VERSION,
        capabilities: {},
        clientInfo: { name: "t", version: "1" },
      },
    });
    assert.equal(initialize.status, 200);
    assert.equal(initialize.headers["content-type"], "application/json");
    const sessionId = initialize.headers["mcp-session-id"] as string;
    // The bridge's own id: 192 random bits, base64url.
    assert.match(sessionId, /^[A-Za-z0-9_-]{32}$/);
    const init = initialize.json as {
      id: string;
      result: { serverInfo: { name: string }; protocolVersion: string };
    };
    assert.equal(init.id, "init-1");
    assert.equal(init.result.serverInfo.name, "stdio-probe");
    assert.equal(init.result.protocolVersion, PROTOCOL_VERSION);

    const list = await postJson(client, alice, sessionId, { jsonrpc: "2.0", id: 2, method: "tools/list" });
    assert.equal(list.status, 200);
    const tools = (list.json as { result: { tools: { name: string }[] } }).result.tools.map((t) => t.name);
    for (const name of ["env", "whoami", "crash", "notify", "readfile"]) assert.ok(tools.includes(name));

    const whoami = await callTool(client, alice, sessionId, "whoami");
    assert.equal(whoami["uid"], process.getuid?.());

    // A batch (2025-03-26) is answered with every response, in the order of the requests, whatever
    // order the server answers in; 1 and "1" are different ids.
    const batch = await postJson(client, alice, sessionId, [
      { jsonrpc: "2.0", id: 1, method: "tools/call", params: { name: "sleep", arguments: { ms: 300 } } },
      { jsonrpc: "2.0", id: "1", method: "ping" },
      { jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 1, progress: 1 } },
    ]);
    assert.equal(batch.status, 200);
    assert.deepEqual(
      (batch.json as { id: unknown }[]).map((m) => m.id),
      [1, "1"],
    );
    assert.equal(log.events.filter((e) => e.type === "process.started").length, 1);
  });

  it("a request id already in flight in the session answers 400; the first request still completes", async () => {
    const { client } = newClient();
    const sessionId = await openSession(client, alice);
    const slow = postJson(client, alice, sessionId, {
      jsonrpc: "2.0",
      id: 77,
      method: "tools/call",
      params: { name: "sleep", arguments: { ms: 1000 } },
    });
    await delay(100);
    const duplicate = await postJson(client, alice, sessionId, { jsonrpc: "2.0", id: 77, method: "ping" });
    assert.equal(duplicate.status, 400);
    assert.equal((duplicate.json as { id: number }).id, 77);
    assert.equal((await slow).status, 200);
  });

  it("a POST the server does not answer within requestTimeoutMs fails, the server is told, the session lives on", async () => {
    const lines: string[] = [];
    const { client } = newClient({ requestTimeoutMs: 1_000, onStderr: (line) => lines.push(line) });
    const session = await openSession(client, alice);
    const stream = sseReader((await openGet(client, alice, session)).body);
    const started = Date.now();
    await rejectsWith(
      post(client, alice, session, {
        jsonrpc: "2.0",
        id: "slow-1",
        method: "tools/call",
        params: { name: "sleep", arguments: { ms: 2_000 } },
      }),
      "ERR_UPSTREAM_UNAVAILABLE",
    );
    assert.ok(Date.now() - started < 1_000 + 5_000);
    await eventually(
      () => lines.includes('probe: cancelled "slow-1"'),
      "notifications/cancelled reached the server",
    );
    // The late answer reaches nobody (responses never go to the GET stream); the session still works.
    await delay(1_500);
    assert.equal(
      (await postJson(client, alice, session, { jsonrpc: "2.0", id: "slow-1", method: "ping" })).status,
      200,
    );
    await callTool(client, alice, session, "notify", { text: "after" });
    const next = await stream.next(() => true);
    assert.equal(next["method"], "notifications/message");
  });

  it("refuses a call without a principal (wiring mistake) and a non-initialize POST without a session id", async () => {
    const { client, log } = newClient();
    await rejectsWith(
      post(client, undefined, undefined, { jsonrpc: "2.0", id: 1, method: "initialize", params: {} }),
      "ERR_INTERNAL",
    );
    const noSession = await postJson(client, alice, undefined, {
      jsonrpc: "2.0",
      id: 1,
      method: "tools/list",
    });
    assert.equal(noSession.status, 400);
    assert.equal(log.events.length, 0, "no process was started");
  });

  it("a server that refuses initialize gets no session id and its process ends", async () => {
    const { client, log } = newClient({}, upstreamConfig({ env: { PROBE_REFUSE_INITIALIZE: "1" } }));
    const answer = await postJson(client, alice, undefined, {
      jsonrpc: "2.0",
      id: 1,
      method: "initialize",
      params: {
        protocolVersion: PROTOCOL_VERSION,
        capabilities: {},
        clientInfo: { name: "t", version: "1" },
      },
    });
    assert.equal(answer.status, 200);
    assert.equal(answer.headers["mcp-session-id"], undefined);
    assert.ok((answer.json as { error?: unknown }).error);
    const ended = await log.waitFor((e) => e.type === "process.ended");
    assert.equal(ended.type === "process.ended" && ended.reason, "initialize-refused");
  });

  it("C4 the child's environment is built from nothing: exactly the expected keys, none of the gateway's", async () => {
    const vault = createVaultDouble();
    const aliceSecret = `alice-${randomBytes(16).toString("hex")}`;
    const bobSecret = `bob-${randomBytes(16).toString("hex")}`;
    await vault.put(ownerScope(alice), "api_token", aliceSecret);
    await vault.put(ownerScope(bob), "api_token", bobSecret);
    const { client } = newClient(
      { vault },
      upstreamConfig({ env: { GREETING: "hello", API_TOKEN: "vault:api_token" } }),
    );
    const aliceSession = await openSession(client, alice);
    const bobSession = await openSession(client, bob);
    const aliceEnv = (await callTool(client, alice, aliceSession, "env")) as Record<string, string>;
    const bobEnv = (await callTool(client, bob, bobSession, "env")) as Record<string, string>;

    const expected = ["API_TOKEN", "GREETING", "HOME", "LANG", "PATH", "TEMP", "TMP", "TMPDIR"];
    assert.deepEqual(Object.keys(aliceEnv).sort(), expected);
    assert.deepEqual(Object.keys(bobEnv).sort(), expected);
    assert.equal(aliceEnv["PATH"], "/usr/local/bin:/usr/bin:/bin");
    assert.equal(aliceEnv["LANG"], "C.UTF-8");
    assert.equal(aliceEnv["GREETING"], "hello");
    // Each process holds its own principal's entry, never the other's.
    assert.equal(aliceEnv["API_TOKEN"], aliceSecret);
    assert.equal(bobEnv["API_TOKEN"], bobSecret);
    for (const [env, foreign] of [
      [aliceEnv, bobSecret],
      [bobEnv, aliceSecret],
    ] as const) {
      const values = Object.values(env);
      assert.ok(!values.some((value) => value.includes(foreign)), "another principal's secret");
      assert.ok(!Object.keys(env).some((key) => key.startsWith("TENANTGATE_")));
      assert.ok(!(canaryName in env));
      for (const canary of [canaryValue, tenantgateCanaryValue]) {
        assert.ok(!values.some((value) => value.includes(canary)), "a value from the gateway's environment");
      }
      // Nothing of the parent's environment that was not configured, whatever its name.
      for (const [name, value] of Object.entries(process.env)) {
        if (value === undefined || value.length < 4 || expected.includes(name)) continue;
        assert.ok(!values.includes(value), `the parent's ${name}`);
      }
    }
    // The vault was asked for each caller's own entries only.
    assert.deepEqual(
      vault.reveals.map((r) => r.owner.subject),
      ["alice", "bob"],
    );
  });

  it("C4 PATH is the fixed default unless upstream.env.PATH sets it; HOME and TMPDIR cannot be configured", async () => {
    const { client } = newClient({}, upstreamConfig({ env: { PATH: "/opt/probe/bin:/usr/bin:/bin" } }));
    const session = await openSession(client, alice);
    const env = (await callTool(client, alice, session, "env")) as Record<string, string>;
    assert.equal(env["PATH"], "/opt/probe/bin:/usr/bin:/bin");
    for (const name of ["HOME", "TMPDIR", "TMP", "TEMP"]) {
      assert.throws(
        () =>
          createStdioUpstreamClient(upstreamConfig({ env: { [name]: "/somewhere" } }), {
            workRoot: join(base, "x"),
          }),
        (error) => isGateError(error, "ERR_CONFIG_INVALID"),
      );
    }
  });

  it("C4 processes get distinct 0700 HOME, TMPDIR and cwd, never shared, removed when they end", async () => {
    const { client, log, workRoot } = newClient();
    const aliceSession = await openSession(client, alice);
    const aliceSecond = await openSession(client, alice);
    const bobSession = await openSession(client, bob);
    const seen = await Promise.all([
      callTool(client, alice, aliceSession, "whoami"),
      callTool(client, alice, aliceSecond, "whoami"),
      callTool(client, bob, bobSession, "whoami"),
    ]);
    for (const key of ["home", "tmpdir", "cwd"]) {
      assert.equal(new Set(seen.map((w) => w[key])).size, 3, `${key} is distinct per process`);
    }
    assert.equal(statSync(workRoot).mode & 0o777, 0o700);
    for (const whoami of seen) {
      assert.deepEqual(whoami["modes"], { home: "700", tmpdir: "700", cwd: "700" });
      const home = whoami["home"] as string;
      assert.ok(home.startsWith(`${workRoot}/`));
      assert.equal(statSync(join(home, "..")).mode & 0o777, 0o700);
      assert.equal(whoami["cwd"], join(home, "..", "work"));
    }
    const bobHome = seen[2]?.["home"] as string;
    assert.equal((await del(client, bob, bobSession)).status, 204);
    await log.waitFor((e) => e.type === "process.ended" && e.reason === "deleted");
    assert.equal(existsSync(join(bobHome, "..")), false, "the process directory is removed");
    assert.equal(
      (await postJson(client, bob, bobSession, { jsonrpc: "2.0", id: 1, method: "ping" })).status,
      404,
    );
  });

  it("C4 runAs distinct-uid: each process has its own uid and no other group, and cannot read another's home", {
    skip: !isRoot && "needs root",
  }, async () => {
    const { client, log } = newClient({ runAs: "distinct-uid", uidRange: UID_RANGE });
    const aliceSession = await openSession(client, alice);
    const bobSession = await openSession(client, bob);
    const aliceWho = await callTool(client, alice, aliceSession, "whoami");
    const bobWho = await callTool(client, bob, bobSession, "whoami");
    for (const who of [aliceWho, bobWho]) {
      const uid = who["uid"] as number;
      assert.ok(uid >= UID_RANGE[0] && uid <= UID_RANGE[1], `uid ${uid} from the range`);
      assert.equal(who["gid"], uid);
      // No supplementary group of the gateway (root's group would open root-group files).
      assert.deepEqual(
        (who["groups"] as number[]).filter((g) => g !== uid),
        [],
      );
      assert.equal(statSync(who["home"] as string).uid, uid);
    }
    assert.notEqual(aliceWho["uid"], bobWho["uid"]);

    const bobFile = join(bobWho["home"] as string, "credentials.json");
    await callTool(client, bob, bobSession, "writefile", { path: bobFile, content: "bob's token" });
    assert.deepEqual(await callTool(client, bob, bobSession, "readfile", { path: bobFile }), {
      ok: true,
      content: "bob's token",
    });
    assert.deepEqual(await callTool(client, alice, aliceSession, "readfile", { path: bobFile }), {
      ok: false,
      code: "EACCES",
    });
    // The uids go back only once their processes are gone.
    assert.equal((await del(client, alice, aliceSession)).status, 204);
    await log.waitFor((e) => e.type === "process.ended");
    assert.ok(!log.events.some((e) => e.type === "uid.quarantined"));
  });

  it("C4 runAs distinct-uid: a grandchild that left the process group dies before its uid is handed out again", {
    skip: !isRoot && "needs root",
  }, async () => {
    const { client, log } = newClient({ runAs: "distinct-uid", uidRange: UID_RANGE });
    const session = await openSession(client, alice);
    const { pid } = (await callTool(client, alice, session, "orphan")) as { pid: number };
    assert.ok(pid > 0 && alive(pid));
    assert.equal((await del(client, alice, session)).status, 204);
    const ended = await log.waitFor((e) => e.type === "process.ended");
    assert.equal(ended.type === "process.ended" && ended.reason, "deleted");
    // process.ended comes after the sweep and before the uid is free again. The orphan may remain a
    // zombie awaiting its reaper (init), which holds no files and runs nothing.
    assert.ok(!alive(pid) || isZombie(pid), "the orphan is killed");
    assert.ok(!log.events.some((e) => e.type === "uid.quarantined"));
  });

  it("runAs distinct-uid is refused at creation when the gateway does not run as root", {
    skip: !isRoot && "needs root to start an unprivileged node",
  }, () => {
    const script = [
      `const { createStdioUpstreamClient } = await import(${JSON.stringify(
        new URL("../../src/upstreams/stdio-upstream.ts", import.meta.url).href,
      )});`,
      "try {",
      `  createStdioUpstreamClient({ transport: "stdio", name: "p", path: "/p", audience: "a", scopes: [],`,
      `    protocolVersions: undefined, inject: {}, command: "true", args: [], env: {} },`,
      `    { runAs: "distinct-uid", uidRange: [61000, 61009], workRoot: "/tmp/never-made" });`,
      `  console.log("created");`,
      `} catch (error) { console.log(error.code, error.message); }`,
    ].join("\n");
    const run = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
      uid: 65534,
      gid: 65534,
      cwd: "/",
      env: { PATH: "/usr/bin:/bin", HOME: "/" },
      encoding: "utf8",
      timeout: PROCESS_WAIT_MS,
    });
    assert.match(run.stdout, /^ERR_CONFIG_INVALID .*root/, run.stderr);
  });

  it("uidRange that covers an account, or uid 0, is refused at creation", {
    skip: !isRoot && "needs root",
  }, () => {
    for (const uidRange of [
      [0, 10],
      [1, 5],
    ] as [number, number][]) {
      assert.throws(
        () =>
          createStdioUpstreamClient(upstreamConfig(), {
            runAs: "distinct-uid",
            uidRange,
            workRoot: join(base, "refused"),
          }),
        (error) => isGateError(error, "ERR_CONFIG_INVALID") || isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
    }
  });

  it("crash isolation: a process that exits ends only its own session", async () => {
    const { client, log } = newClient();
    const crashing = await openSession(client, alice);
    const other = await openSession(client, alice);
    const stream = sseReader((await openGet(client, alice, crashing)).body);
    const pending = post(client, alice, crashing, {
      jsonrpc: "2.0",
      id: 500,
      method: "tools/call",
      params: { name: "sleep", arguments: { ms: 60_000 } },
    });
    await delay(100);
    await rejectsWith(
      post(client, alice, crashing, {
        jsonrpc: "2.0",
        id: 501,
        method: "tools/call",
        params: { name: "crash", arguments: {} },
      }),
      "ERR_UPSTREAM_UNAVAILABLE",
    );
    // Every POST still pending in that session fails too (the gateway answers 502), and its GET ends.
    await rejectsWith(pending, "ERR_UPSTREAM_UNAVAILABLE");
    await stream.ended();
    const ended = await log.waitFor((e) => e.type === "process.ended");
    assert.equal(ended.type === "process.ended" && ended.reason, "exited");
    assert.equal(ended.type === "process.ended" && ended.exitCode, 1);

    const list = await postJson(client, alice, other, { jsonrpc: "2.0", id: 1, method: "tools/list" });
    assert.equal(list.status, 200);
    assert.equal(
      (await postJson(client, alice, crashing, { jsonrpc: "2.0", id: 2, method: "ping" })).status,
      404,
    );
    assert.equal((await openGet(client, alice, crashing)).status, 404);
    assert.equal((await del(client, alice, crashing)).status, 404);
  });

  it("another principal's session id answers 404 on POST, GET and DELETE, exactly as an unknown id", async () => {
    const { client } = newClient();
    const session = await openSession(client, alice);
    const otherTenant = principal("alice", "globex");
    for (const stranger of [bob, otherTenant]) {
      const foreign = await postJson(client, stranger, session, { jsonrpc: "2.0", id: 1, method: "ping" });
      const unknown = await postJson(client, stranger, "A".repeat(32), {
        jsonrpc: "2.0",
        id: 1,
        method: "ping",
      });
      assert.deepEqual(foreign, unknown);
      assert.equal(foreign.status, 404);
      assert.equal((await openGet(client, stranger, session)).status, 404);
      assert.equal((await del(client, stranger, session)).status, 404);
    }
    assert.equal(
      (await postJson(client, alice, session, { jsonrpc: "2.0", id: 2, method: "ping" })).status,
      200,
    );
  });

  it("an idle process is ended: its id answers 404, its process and directories are gone; an open GET stream keeps it", async () => {
    const { client, log } = newClient({ idleTimeoutMs: 1_000 });
    const idle = await openSession(client, alice);
    const watched = await openSession(client, alice);
    const who = await callTool(client, alice, idle, "whoami");
    const abort = new AbortController();
    const stream = sseReader((await openGet(client, alice, watched, abort.signal)).body);

    const ended = await log.waitFor((e) => e.type === "process.ended");
    assert.equal(ended.type === "process.ended" && ended.reason, "idle");
    assert.equal(
      (await postJson(client, alice, idle, { jsonrpc: "2.0", id: 1, method: "ping" })).status,
      404,
    );
    assert.equal(alive(who["pid"] as number), false);
    assert.equal(existsSync(who["home"] as string), false);

    await delay(1_500);
    assert.equal(
      (await postJson(client, alice, watched, { jsonrpc: "2.0", id: 2, method: "ping" })).status,
      200,
    );
    abort.abort();
    await stream.ended();
    await log.waitFor((e) => e.type === "process.ended" && e.processRef !== ended.processRef);
    assert.equal(
      (await postJson(client, alice, watched, { jsonrpc: "2.0", id: 3, method: "ping" })).status,
      404,
    );
  });

  it("caps: a principal's limit is ERR_CONNECTION_LIMIT, the global one ERR_OVERLOADED, both before spawning", async () => {
    const { client, log } = newClient({ maxProcesses: 3, maxProcessesPerPrincipal: 2 });
    const first = await openSession(client, alice);
    await openSession(client, alice);
    await rejectsWith(openSession(client, alice), "ERR_CONNECTION_LIMIT");
    await openSession(client, bob);
    await rejectsWith(openSession(client, principal("carol")), "ERR_OVERLOADED");
    assert.equal(log.events.filter((e) => e.type === "process.started").length, 3);
    // A slot comes back once its process has ended.
    assert.equal((await del(client, alice, first)).status, 204);
    await log.waitFor((e) => e.type === "process.ended");
    await openSession(client, alice);
    assert.equal(log.events.filter((e) => e.type === "process.started").length, 4);
  });

  it("caps hold under concurrent initializes: of 12 at once, exactly the cap start, the rest are refused", async () => {
    const { client, log } = newClient({ maxProcesses: 6, maxProcessesPerPrincipal: 3 });
    const outcomes = await Promise.allSettled([
      ...Array.from({ length: 12 }, () => openSession(client, alice)),
      ...Array.from({ length: 12 }, () => openSession(client, bob)),
    ]);
    const started = outcomes.filter((o) => o.status === "fulfilled").length;
    assert.equal(started, 6);
    const per = (n: number) => outcomes.slice(n * 12, n * 12 + 12).filter((o) => o.status === "fulfilled");
    assert.equal(per(0).length, 3);
    assert.equal(per(1).length, 3);
    for (const outcome of outcomes) {
      if (outcome.status === "rejected") {
        const reason = outcome.reason as unknown;
        assert.ok(
          isGateError(reason, "ERR_CONNECTION_LIMIT") || isGateError(reason, "ERR_OVERLOADED"),
          String(reason),
        );
      }
    }
    assert.equal(log.events.filter((e) => e.type === "process.started").length, 6);
  });

  it("a server that never answers initialize is killed after startTimeoutMs: ERR_UPSTREAM_UNAVAILABLE", async () => {
    const { client, log, workRoot } = newClient(
      { startTimeoutMs: 1_500, maxProcessesPerPrincipal: 1 },
      upstreamConfig({ args: ["-e", "setInterval(() => {}, 1000)"] }),
    );
    for (let attempt = 0; attempt < 2; attempt++) {
      const started = Date.now();
      // The second attempt also gets a process: the first one's slot was released.
      await rejectsWith(openSession(client, alice), "ERR_UPSTREAM_UNAVAILABLE");
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 1_400 && elapsed < 1_500 + 8_000, `answered after ${elapsed} ms`);
      const ended = await log.waitFor(
        (e) =>
          e.type === "process.ended" && log.events.filter((x) => x.type === "process.ended").length > attempt,
      );
      assert.equal(ended.type === "process.ended" && ended.reason, "start-timeout");
      const startedEvent = log.events.filter((e) => e.type === "process.started")[attempt];
      assert.ok(
        startedEvent?.type === "process.started" && !alive(startedEvent.pid),
        "the process is killed",
      );
      await eventually(() => readdirSync(workRoot).length === 0, "its directory is removed");
    }
  });

  it("a command that cannot be started is ERR_UPSTREAM_UNAVAILABLE and leaves nothing behind", async () => {
    const { client, log, workRoot } = newClient(
      { maxProcessesPerPrincipal: 1 },
      upstreamConfig({ command: "/nonexistent/mcp-server" }),
    );
    for (let attempt = 0; attempt < 2; attempt++) {
      await rejectsWith(openSession(client, alice), "ERR_UPSTREAM_UNAVAILABLE");
    }
    await eventually(() => readdirSync(workRoot).length === 0, "no directory left");
    assert.ok(log.events.every((e) => e.type !== "process.started"));
  });

  it("stderr lines reach the sink with the injected vault value redacted, and no identity in the context", async () => {
    const vault = createVaultDouble();
    const secret = `s3cret-${randomBytes(16).toString("hex")}`;
    await vault.put(ownerScope(alice), "api_token", secret);
    const lines: { line: string; context: StdioProcessContext }[] = [];
    const { client } = newClient(
      { vault, onStderr: (line, context) => lines.push({ line, context }) },
      upstreamConfig({ env: { API_TOKEN: "vault:api_token" } }),
    );
    const session = await openSession(client, alice);
    await callTool(client, alice, session, "stderr", { variable: "API_TOKEN" });
    await eventually(() => lines.some((l) => l.line.startsWith("probe: API_TOKEN=")), "the stderr line");
    const printed = lines.find((l) => l.line.startsWith("probe: API_TOKEN="));
    assert.equal(printed?.line, "probe: API_TOKEN=[redacted]");
    assert.equal(printed?.context.upstream, "probe");
    assert.match(printed?.context.processRef ?? "", /^[0-9a-f]{12}$/);
    const context = JSON.stringify(printed?.context);
    for (const identity of [alice.subject, alice.tenant, alice.issuer, session]) {
      assert.ok(!context.includes(identity));
    }

    // A line cut by the length bound in the middle of the value loses the half it kept.
    const cut = `${"x".repeat(8192 - 10)}${secret}${"y".repeat(100)}`;
    await callTool(client, alice, session, "stderr", { text: cut });
    await eventually(() => lines.some((l) => l.line.startsWith("xxxx")), "the long line");
    const long = lines.find((l) => l.line.startsWith("xxxx"))?.line ?? "";
    assert.ok(long.length < 8300, `bounded (${long.length})`);
    assert.ok(long.endsWith("[redacted] [truncated]"), long.slice(-40));
    assert.ok(!long.includes(secret.slice(0, 10)));
    assert.ok(lines.every((l) => !l.line.includes(secret)));
  });

  it("stderr redaction covers the value as a server would print it in JSON or a URL, not only raw", async () => {
    const vault = createVaultDouble();
    const secret = `pa"ss\\word with/space-${randomBytes(8).toString("hex")}`;
    await vault.put(ownerScope(alice), "api_token", secret);
    const lines: string[] = [];
    const { client } = newClient(
      { vault, onStderr: (line) => lines.push(line) },
      upstreamConfig({ env: { API_TOKEN: "vault:api_token" } }),
    );
    const session = await openSession(client, alice);
    const json = JSON.stringify({ token: secret });
    const url = `https://api.example/?token=${encodeURIComponent(secret)}`;
    await callTool(client, alice, session, "stderr", { text: `json ${json}` });
    await callTool(client, alice, session, "stderr", { text: `url ${url}` });
    await eventually(() => lines.some((l) => l.startsWith("url ")), "both lines");
    assert.ok(!lines.join("\n").includes(JSON.stringify(secret).slice(1, -1)), lines.join("\n"));
    assert.ok(!lines.join("\n").includes(encodeURIComponent(secret)), lines.join("\n"));
  });

  it("a missing vault entry is ERR_CREDENTIAL_REQUIRED naming it, before any process or directory exists", async () => {
    const vault: VaultDouble = createVaultDouble();
    await vault.put(ownerScope(alice), "api_token", "alice-token-value");
    const { client, log, workRoot } = newClient(
      { vault },
      upstreamConfig({ env: { API_TOKEN: "vault:api_token", OTHER: "vault:other_token" } }),
    );
    const error = await rejectsWith(openSession(client, bob), "ERR_CREDENTIAL_REQUIRED");
    assert.equal((error as { credential?: string }).credential, "api_token");
    const partial = await rejectsWith(openSession(client, alice), "ERR_CREDENTIAL_REQUIRED");
    assert.equal((partial as { credential?: string }).credential, "other_token");
    assert.equal(log.events.length, 0);
    assert.deepEqual(readdirSync(workRoot), []);
  });

  it("the GET stream carries notifications and server requests; the client's answer is written back (202)", async () => {
    const { client } = newClient();
    const session = await openSession(client, alice);
    const abort = new AbortController();
    const get = await openGet(client, alice, session, abort.signal);
    assert.equal(get.status, 200);
    assert.equal(get.headers["content-type"], "text/event-stream");
    const stream = sseReader(get.body);
    assert.equal((await openGet(client, alice, session)).status, 409, "one GET stream per session");

    await callTool(client, alice, session, "notify", { text: "hello from the probe" });
    const note = await stream.next((m) => m["method"] === "notifications/message");
    assert.equal((note["params"] as { data: string }).data, "hello from the probe");

    // A server-to-client request (elicitation): it arrives on the GET stream, the client answers it
    // with a POST (202), and the tool call that asked completes.
    const asking = postJson(client, alice, session, {
      jsonrpc: "2.0",
      id: "ask-1",
      method: "tools/call",
      params: { name: "ask", arguments: {} },
    });
    const question = await stream.next((m) => m["method"] === "elicitation/create");
    const reply = await post(client, alice, session, {
      jsonrpc: "2.0",
      id: question["id"],
      result: { action: "decline" },
    });
    assert.equal(reply.status, 202);
    const asked = await asking;
    assert.equal(asked.status, 200);
    assert.match(JSON.stringify(asked.json), /decline/);

    abort.abort();
    await stream.ended();
    // Messages that arrive with no stream open wait for the next one.
    await callTool(client, alice, session, "notify", { text: "while nobody listens" });
    const again = sseReader((await openGet(client, alice, session)).body);
    const queued = await again.next((m) => m["method"] === "notifications/message");
    assert.equal((queued["params"] as { data: string }).data, "while nobody listens");
  });

  it("the GET buffer is bounded: the oldest undelivered messages are dropped and counted", async () => {
    const { client, log } = newClient({ maxQueuedMessages: 2 });
    const session = await openSession(client, alice);
    for (const text of ["one", "two", "three"]) await callTool(client, alice, session, "notify", { text });
    const dropped = await log.waitFor((e) => e.type === "message.dropped");
    assert.equal(dropped.type === "message.dropped" && dropped.dropped, 1);
    const stream = sseReader((await openGet(client, alice, session)).body);
    assert.equal(((await stream.next(() => true))["params"] as { data: string }).data, "two");
    assert.equal(((await stream.next(() => true))["params"] as { data: string }).data, "three");
  });

  it("a process that writes a line that is not JSON, or longer than maxMessageBytes, is ended", async () => {
    const { client, log } = newClient({ maxMessageBytes: 4096 });
    for (const args of [{ kind: "not-json" }, { kind: "long", bytes: 10_000 }]) {
      const session = await openSession(client, alice);
      await rejectsWith(
        post(client, alice, session, {
          jsonrpc: "2.0",
          id: 9,
          method: "tools/call",
          params: { name: "garbage", arguments: args },
        }),
        "ERR_UPSTREAM_UNAVAILABLE",
      );
      assert.equal(
        (await postJson(client, alice, session, { jsonrpc: "2.0", id: 1, method: "ping" })).status,
        404,
      );
    }
    await eventually(
      () => log.events.filter((e) => e.type === "process.ended" && e.reason === "misbehaved").length === 2,
      "both processes ended as misbehaving",
    );
  });

  it("close() ends every process, removes the work root, and refuses later requests", async () => {
    const { client, log, workRoot } = newClient();
    const first = await openSession(client, alice);
    await openSession(client, bob);
    const pids = log.events.flatMap((e) => (e.type === "process.started" ? [e.pid] : []));
    assert.equal(pids.length, 2);
    await client.close();
    for (const pid of pids) assert.equal(alive(pid), false);
    assert.equal(existsSync(workRoot), false);
    await rejectsWith(
      post(client, alice, first, { jsonrpc: "2.0", id: 1, method: "ping" }),
      "ERR_SHUTTING_DOWN",
    );
  });

  it("refuses at creation: a malformed vault reference, a vault reference without a vault, a work root holding other files", () => {
    const refusals: [StdioUpstreamConfig, StdioUpstreamOptions][] = [
      [upstreamConfig({ env: { TOKEN: "vault:Not-A-Name" } }), { vault: createVaultDouble() }],
      [upstreamConfig({ env: { TOKEN: "vault:token" } }), {}],
    ];
    const occupied = join(base, "occupied");
    mkdirSync(occupied);
    writeFileSync(join(occupied, "notes.txt"), "not the bridge's");
    refusals.push([upstreamConfig(), { workRoot: occupied }]);
    for (const [upstream, options] of refusals) {
      assert.throws(
        () => createStdioUpstreamClient(upstream, { workRoot: join(base, "never"), ...options }),
        (error) => isGateError(error, "ERR_CONFIG_INVALID"),
      );
    }
    assert.equal(readFileSync(join(occupied, "notes.txt"), "utf8"), "not the bridge's");
  });

  it("C4 runAs distinct-uid: a file a process left in /tmp is gone before its uid serves another principal", {
    skip: !isRoot && "needs root",
  }, async () => {
    // One uid in the range: the next process is certain to get the uid the last one had.
    const { client, log } = newClient({ runAs: "distinct-uid", uidRange: [UID_RANGE[0], UID_RANGE[0]] });
    const aliceSession = await openSession(client, alice);
    const aliceWho = await callTool(client, alice, aliceSession, "whoami");
    const stash = join("/tmp", `tenantgate-review-stash-${randomBytes(8).toString("hex")}`);
    const shm = join("/dev/shm", `tenantgate-review-stash-${randomBytes(8).toString("hex")}`);
    try {
      await callTool(client, alice, aliceSession, "writefile", { path: stash, content: "alice's token" });
      await callTool(client, alice, aliceSession, "writefile", { path: shm, content: "alice's token" });
      assert.equal(statSync(stash).uid, aliceWho["uid"]);
      assert.equal((await del(client, alice, aliceSession)).status, 204);
      await log.waitFor((e) => e.type === "process.ended");

      const bobSession = await openSession(client, bob);
      const bobWho = await callTool(client, bob, bobSession, "whoami");
      assert.equal(bobWho["uid"], aliceWho["uid"], "the one uid is handed out again");
      for (const path of [stash, shm]) {
        assert.deepEqual(await callTool(client, bob, bobSession, "readfile", { path }), {
          ok: false,
          code: "ENOENT",
        });
      }
    } finally {
      await rm(stash, { force: true });
      await rm(shm, { force: true });
    }
  });

  it("a server that stops reading its input cannot make the bridge buffer without bound", async () => {
    // Answers initialize, then never reads stdin again (a server blocked in a long synchronous call).
    const deaf = [
      "let buffer = '';",
      "const onData = (chunk) => {",
      "  buffer += chunk;",
      "  const end = buffer.indexOf('\\n');",
      "  if (end < 0) return;",
      "  const message = JSON.parse(buffer.slice(0, end));",
      "  process.stdin.off('data', onData);",
      "  process.stdin.pause();",
      "  process.stdout.write(JSON.stringify({ jsonrpc: '2.0', id: message.id, result: {",
      "    protocolVersion: message.params.protocolVersion, capabilities: {},",
      "    serverInfo: { name: 'deaf', version: '1' } } }) + '\\n');",
      "};",
      "process.stdin.setEncoding('utf8');",
      "process.stdin.on('data', onData);",
      "setInterval(() => {}, 1000);",
    ].join("\n");
    const { client } = newClient({}, upstreamConfig({ args: ["-e", deaf] }));
    const session = await openSession(client, alice);
    const padding = "x".repeat(1024 * 1024);
    let accepted = 0;
    let refused: unknown;
    for (let i = 0; i < 64 && refused === undefined; i++) {
      try {
        const answer = await post(client, alice, session, {
          jsonrpc: "2.0",
          method: "notifications/message",
          params: { level: "info", data: padding },
        });
        await readAll(answer.body);
        if (answer.status === 202) accepted++;
        else refused = answer.status;
      } catch (error) {
        refused = error;
      }
    }
    assert.ok(refused !== undefined, `all 64 MiB were taken into the bridge's memory (${accepted} accepted)`);
    assert.ok(accepted <= 32, `${accepted} MiB accepted before the refusal`);
  });

  it("a server that floods stderr cannot flood the gateway's log: lines beyond a rate are dropped and counted", async () => {
    // Answers initialize, then writes stderr lines as fast as it can.
    const noisy = [
      "process.stdin.setEncoding('utf8');",
      "let buffer = '';",
      "process.stdin.on('data', (chunk) => {",
      "  buffer += chunk;",
      "  const end = buffer.indexOf('\\n');",
      "  if (end < 0 || buffer === null) return;",
      "  const message = JSON.parse(buffer.slice(0, end));",
      "  buffer = '';",
      "  if (message.method !== 'initialize') return;",
      "  process.stdout.write(JSON.stringify({ jsonrpc: '2.0', id: message.id, result: {",
      "    protocolVersion: message.params.protocolVersion, capabilities: {},",
      "    serverInfo: { name: 'noisy', version: '1' } } }) + '\\n');",
      "  const line = 'noise '.repeat(20) + '\\n';",
      "  const flood = () => { while (process.stderr.write(line.repeat(100))) {} process.stderr.once('drain', flood); };",
      "  flood();",
      "});",
    ].join("\n");
    let lines = 0;
    const seen: string[] = [];
    const { client } = newClient(
      {
        onStderr: (line) => {
          lines++;
          if (!line.startsWith("noise")) seen.push(line);
        },
      },
      upstreamConfig({ args: ["-e", noisy] }),
    );
    await openSession(client, alice);
    await delay(2_000);
    assert.ok(lines < 5_000, `${lines} stderr lines reached the log sink in 2 s`);
    assert.ok(
      seen.some((line) => /^\[\d+ stderr lines dropped\]$/.test(line)),
      "the loss is reported",
    );
  });

  it("C4 the default work roots a gone gateway left (its processes' homes) are removed at start; nothing else is", async () => {
    const parent = await mkdtemp(join(base, "tmpdir-"));
    const deadPid = spawnSync(process.execPath, ["-e", ""]).pid as number;
    const otherDeadPid = spawnSync(process.execPath, ["-e", ""]).pid as number;
    const processDir = randomBytes(16).toString("hex");
    const stale = join(parent, `tenantgate-stdio-${deadPid}`);
    mkdirSync(join(stale, processDir, "home"), { recursive: true });
    writeFileSync(join(stale, processDir, "home", "credentials.json"), "a server's cached token");
    // A running gateway's root, and a root holding something the gateway did not make, stay.
    const running = join(parent, `tenantgate-stdio-${process.ppid}`);
    mkdirSync(join(running, processDir), { recursive: true });
    const foreign = join(parent, `tenantgate-stdio-${otherDeadPid}`);
    mkdirSync(foreign);
    writeFileSync(join(foreign, "notes.txt"), "someone's");
    const previous = process.env["TMPDIR"];
    process.env["TMPDIR"] = parent;
    let client: UpstreamClient;
    try {
      client = createStdioUpstreamClient(upstreamConfig(), {});
    } finally {
      if (previous === undefined) delete process.env["TMPDIR"];
      else process.env["TMPDIR"] = previous;
    }
    try {
      assert.equal(existsSync(stale), false, "the gone gateway's root is removed");
      assert.ok(existsSync(join(running, processDir)), "a running gateway's root is left");
      assert.ok(existsSync(join(foreign, "notes.txt")), "a root holding other files is left");
      assert.ok(existsSync(join(parent, `tenantgate-stdio-${process.pid}`)), "this bridge's own root");
    } finally {
      await client.close();
    }
  });

  it("C4 runAs distinct-uid: what a uid owns in /tmp from before this bridge (a gateway that crashed) is gone before the uid is used", {
    skip: !isRoot && "needs root",
  }, async () => {
    const uid = UID_RANGE[0] + 1;
    const left = join("/tmp", `tenantgate-review-left-${randomBytes(8).toString("hex")}`);
    writeFileSync(left, "a token from an earlier gateway's session", { mode: 0o600 });
    chownSync(left, uid, uid);
    try {
      const { client } = newClient({ runAs: "distinct-uid", uidRange: [uid, uid] });
      const session = await openSession(client, alice);
      assert.equal((await callTool(client, alice, session, "whoami"))["uid"], uid);
      assert.deepEqual(await callTool(client, alice, session, "readfile", { path: left }), {
        ok: false,
        code: "ENOENT",
      });
    } finally {
      await rm(left, { force: true });
    }
  });

  /** The pid of a session's process, and the reference its events carry. */
  async function processOf(
    client: UpstreamClient,
    log: EventLog,
    caller: Principal,
    sessionId: string,
  ): Promise<{ pid: number; ref: string }> {
    const pid = (await callTool(client, caller, sessionId, "whoami"))["pid"] as number;
    const started = log.events.find((e) => e.type === "process.started" && e.pid === pid);
    assert.ok(started, `a process.started event for pid ${pid}`);
    return { pid, ref: started.processRef };
  }

  /** The process ended as revoked: its event came, its pid is gone, its session id answers 404. */
  async function endedByRevocation(
    client: UpstreamClient,
    log: EventLog,
    caller: Principal,
    sessionId: string,
    proc: { pid: number; ref: string },
  ): Promise<void> {
    const ended = await log.waitFor((e) => e.type === "process.ended" && e.processRef === proc.ref);
    assert.equal(ended.type === "process.ended" && ended.reason, "revoked");
    await eventually(() => !alive(proc.pid), `pid ${proc.pid} to exit`);
    const ping = await postJson(client, caller, sessionId, { jsonrpc: "2.0", id: nextId++, method: "ping" });
    assert.equal(ping.status, 404);
  }

  async function stillServing(
    client: UpstreamClient,
    caller: Principal,
    sessionId: string,
    proc: { pid: number },
  ): Promise<void> {
    assert.ok(alive(proc.pid), `pid ${proc.pid} still runs`);
    const ping = await postJson(client, caller, sessionId, { jsonrpc: "2.0", id: nextId++, method: "ping" });
    assert.equal(ping.status, 200);
  }

  it("C1 a changed or removed credential ends the sessions whose process holds the old value; 404 afterwards", async () => {
    const vault = createVaultDouble();
    await vault.put(ownerScope(alice), "api_token", "alice-old-token");
    await vault.put(ownerScope(bob), "api_token", "bob-token");
    const { client, log } = newClient({ vault }, upstreamConfig({ env: { API_TOKEN: "vault:api_token" } }));
    const aliceSession = await openSession(client, alice);
    const bobSession = await openSession(client, bob);
    const [aliceProc, bobProc] = [
      await processOf(client, log, alice, aliceSession),
      await processOf(client, log, bob, bobSession),
    ];
    await vault.delete(ownerScope(alice), "api_token");
    client.credentialsChanged?.(ownerScope(alice), "api_token");
    const ended = await log.waitFor((e) => e.type === "process.ended" && e.processRef === aliceProc.ref);
    assert.equal(ended.type === "process.ended" && ended.reason, "credentials-changed");
    await eventually(() => !alive(aliceProc.pid), `pid ${aliceProc.pid} to exit`);
    const ping = await postJson(client, alice, aliceSession, {
      jsonrpc: "2.0",
      id: nextId++,
      method: "ping",
    });
    assert.equal(ping.status, 404);
    await stillServing(client, bob, bobSession, bobProc);
  });

  it("a session's absolute timeout ends its process then, not at the idle timeout", async () => {
    const { client, log } = newClient();
    const expiring = await openSession(client, alice);
    const lasting = await openSession(client, bob);
    const [expiringProc, lastingProc] = [
      await processOf(client, log, alice, expiring),
      await processOf(client, log, bob, lasting),
    ];
    bind(client, expiring, { expiresAt: Date.now() + 300 });
    bind(client, lasting);
    const ended = await log.waitFor((e) => e.type === "process.ended" && e.processRef === expiringProc.ref);
    assert.equal(ended.type === "process.ended" && ended.reason, "expired");
    await eventually(() => !alive(expiringProc.pid), `pid ${expiringProc.pid} to exit`);
    await stillServing(client, bob, lasting, lastingProc);
  });

  it("a tenant's processes together stay under maxProcessesPerTenant; another tenant's are not counted", async () => {
    const { client, log } = newClient({ maxProcessesPerTenant: 2 });
    await openSession(client, alice);
    const bobs = await openSession(client, bob);
    const refused = (await rejectsWith(openSession(client, principal("carol")), "ERR_CONNECTION_LIMIT")) as {
      detail?: string;
    };
    assert.equal(refused.detail, "stdio-max-processes-per-tenant");
    await openSession(client, principal("carol", "globex"));
    // A slot given back (process.ended comes once it is) is free for the tenant again.
    assert.equal((await del(client, bob, bobs)).status, 204);
    await log.waitFor((e) => e.type === "process.ended");
    await openSession(client, principal("carol"));
  });

  it("S13 a session revocation ends the process bound to that session at once, only it, and frees its cap slot", async () => {
    const { client, log } = newClient({ maxProcessesPerPrincipal: 2 });
    const revoked = await openSession(client, alice);
    const kept = await openSession(client, alice);
    const [revokedProc, keptProc] = [
      await processOf(client, log, alice, revoked),
      await processOf(client, log, alice, kept),
    ];
    const digest = bind(client, revoked);
    bind(client, kept);
    await rejectsWith(openSession(client, alice), "ERR_CONNECTION_LIMIT");
    // A notice naming no session of this bridge ends nothing.
    revoke(client, { kind: "session", sessionDigest: randomBytes(32).toString("base64url") });

    revoke(client, { kind: "session", sessionDigest: digest });
    await endedByRevocation(client, log, alice, revoked, revokedProc);
    await stillServing(client, alice, kept, keptProc);
    assert.equal(log.events.filter((e) => e.type === "process.ended").length, 1);
    // The revoked process's slot is free again: alice is at her cap of 2 without it.
    const next = await openSession(client, alice);
    await stillServing(client, alice, next, await processOf(client, log, alice, next));
  });

  it("S13 a principal revocation ends every process of that principal, bound or not, and no other principal's", async () => {
    const { client, log } = newClient({ maxProcessesPerPrincipal: 2 });
    const bound = await openSession(client, alice);
    const unbound = await openSession(client, alice);
    const bobs = await openSession(client, bob);
    const sameSubjectOtherTenant = principal("alice", "globex");
    const other = await openSession(client, sameSubjectOtherTenant);
    const procs = {
      bound: await processOf(client, log, alice, bound),
      unbound: await processOf(client, log, alice, unbound),
      bobs: await processOf(client, log, bob, bobs),
      other: await processOf(client, log, sameSubjectOtherTenant, other),
    };
    bind(client, bound);
    bind(client, bobs);

    revoke(client, { kind: "principal", principalDigest: principalDigest(ownerScope(alice)) });
    await endedByRevocation(client, log, alice, bound, procs.bound);
    await endedByRevocation(client, log, alice, unbound, procs.unbound);
    await stillServing(client, bob, bobs, procs.bobs);
    await stillServing(client, sameSubjectOtherTenant, other, procs.other);
    // Both of alice's slots came back.
    await openSession(client, alice);
    await openSession(client, alice);
  });

  it("S13 a principal revocation ends a process still starting for that principal: its initialize fails", async () => {
    const { client, log } = newClient(
      { startTimeoutMs: 60_000, maxProcessesPerPrincipal: 1 },
      upstreamConfig({ args: ["-e", "setInterval(() => {}, 1000)"] }),
    );
    const started = Date.now();
    const pending = openSession(client, alice);
    const launched = await log.waitFor((e) => e.type === "process.started");
    revoke(client, { kind: "principal", principalDigest: principalDigest(ownerScope(alice)) });
    await rejectsWith(pending, "ERR_UPSTREAM_UNAVAILABLE");
    assert.ok(Date.now() - started < 30_000, "not at the start timeout");
    const ended = await log.waitFor((e) => e.type === "process.ended");
    assert.equal(ended.type === "process.ended" && ended.reason, "revoked");
    assert.ok(launched.type === "process.started");
    await eventually(() => !alive(launched.pid), "the starting process to exit");
  });

  it("S13 the kill switch ends processes of sessions older than its generation, also one bound after the notice, never a newer one", async () => {
    const { client, log } = newClient({ maxProcessesPerPrincipal: 4 });
    const older = await openSession(client, alice);
    const newer = await openSession(client, alice);
    // Recorded by the gateway only after the notice (its initialize was in flight).
    const lateOlder = await openSession(client, alice);
    const lateNewer = await openSession(client, alice);
    const procs = {
      older: await processOf(client, log, alice, older),
      newer: await processOf(client, log, alice, newer),
      lateOlder: await processOf(client, log, alice, lateOlder),
      lateNewer: await processOf(client, log, alice, lateNewer),
    };
    bind(client, older, { killGeneration: 2 });
    bind(client, newer, { killGeneration: 3 });
    await rejectsWith(openSession(client, alice), "ERR_CONNECTION_LIMIT");

    revoke(client, { kind: "all", generation: 3 });
    await endedByRevocation(client, log, alice, older, procs.older);
    await stillServing(client, alice, newer, procs.newer);
    // Not bound yet, so not judged yet: an unbound process may belong to a session newer than the notice.
    await stillServing(client, alice, lateOlder, procs.lateOlder);
    bind(client, lateOlder, { killGeneration: 2 });
    await endedByRevocation(client, log, alice, lateOlder, procs.lateOlder);
    bind(client, lateNewer, { killGeneration: 3 });
    await delay(200);
    await stillServing(client, alice, lateNewer, procs.lateNewer);
    // An older notice arriving late cuts nothing newer; a later kill switch ends the rest.
    revoke(client, { kind: "all", generation: 2 });
    await delay(200);
    await stillServing(client, alice, newer, procs.newer);
    // Two slots came back.
    await openSession(client, alice);
    await openSession(client, alice);
    revoke(client, { kind: "all", generation: 4 });
    await endedByRevocation(client, log, alice, newer, procs.newer);
    await endedByRevocation(client, log, alice, lateNewer, procs.lateNewer);
  });

  it("S13 a kill switch of unknown generation (sent as the largest) ends what exists, not the sessions started after it", async () => {
    const { client, log } = newClient();
    const existing = await openSession(client, alice);
    const existingProc = await processOf(client, log, alice, existing);
    bind(client, existing, { killGeneration: 5 });
    revoke(client, { kind: "all", generation: Number.MAX_SAFE_INTEGER });
    await endedByRevocation(client, log, alice, existing, existingProc);
    // The store recorded whichever generation it did; a session made afterwards is bound with it.
    const later = await openSession(client, alice);
    const laterProc = await processOf(client, log, alice, later);
    bind(client, later, { killGeneration: 6 });
    await delay(200);
    await stillServing(client, alice, later, laterProc);
  });

  it("S13 resync: a process whose session no longer resolves ends, one whose check keeps failing ends (fail closed), others live", async () => {
    const { client, log } = newClient({ maxProcessesPerPrincipal: 8 });
    const gone = await openSession(client, alice);
    const failing = await openSession(client, alice);
    const flaky = await openSession(client, alice);
    const valid = await openSession(client, alice);
    const unbound = await openSession(client, alice);
    const procs = {
      gone: await processOf(client, log, alice, gone),
      failing: await processOf(client, log, alice, failing),
      flaky: await processOf(client, log, alice, flaky),
      valid: await processOf(client, log, alice, valid),
      unbound: await processOf(client, log, alice, unbound),
    };
    let failingChecks = 0;
    let flakyChecks = 0;
    bind(client, gone, { stillValid: async () => false });
    bind(client, failing, {
      stillValid: async () => {
        failingChecks++;
        throw new Error("store unavailable");
      },
    });
    bind(client, flaky, {
      stillValid: async () => {
        flakyChecks++;
        if (flakyChecks === 1) throw new Error("store unavailable");
        return true;
      },
    });
    bind(client, valid);

    revoke(client, { kind: "resync" });
    await endedByRevocation(client, log, alice, gone, procs.gone);
    await endedByRevocation(client, log, alice, failing, procs.failing);
    assert.ok(failingChecks > 1, "a failing check is asked again before the process ends");
    await stillServing(client, alice, flaky, procs.flaky);
    assert.equal(flakyChecks, 2);
    await stillServing(client, alice, valid, procs.valid);
    // No binding: nothing to check it against (the gateway had not recorded it).
    await stillServing(client, alice, unbound, procs.unbound);
  });

  it("S13 resync while an initialize is in flight: the process is checked once the gateway binds it", async () => {
    const { client, log } = newClient();
    const revokedMeanwhile = openSession(client, alice);
    const stillFine = openSession(client, alice);
    revoke(client, { kind: "resync" });
    const [lost, kept] = [await revokedMeanwhile, await stillFine];
    const [lostProc, keptProc] = [
      await processOf(client, log, alice, lost),
      await processOf(client, log, alice, kept),
    ];
    bind(client, lost, { stillValid: async () => false });
    bind(client, kept);
    await endedByRevocation(client, log, alice, lost, lostProc);
    await delay(200);
    await stillServing(client, alice, kept, keptProc);
  });

  it("server-everything in stdio mode: initialize, tools/list and a tool call", async () => {
    const manifest = JSON.parse(
      readFileSync(
        join(REPO_ROOT, "node_modules/@modelcontextprotocol/server-everything/package.json"),
        "utf8",
      ),
    ) as { bin: Record<string, string> };
    const bin = join(
      REPO_ROOT,
      "node_modules/@modelcontextprotocol/server-everything",
      manifest.bin["mcp-server-everything"] ?? "",
    );
    const { client } = newClient(
      { startTimeoutMs: PROCESS_WAIT_MS },
      upstreamConfig({ name: "everything", args: [bin, "stdio"] }),
    );
    const session = await openSession(client, alice);
    const list = await postJson(client, alice, session, { jsonrpc: "2.0", id: 1, method: "tools/list" });
    assert.equal(list.status, 200);
    const names = (list.json as { result: { tools: { name: string }[] } }).result.tools.map((t) => t.name);
    assert.ok(names.includes("echo"), names.join(","));
    const echo = await postJson(client, alice, session, {
      jsonrpc: "2.0",
      id: 2,
      method: "tools/call",
      params: { name: "echo", arguments: { message: "through the stdio bridge" } },
    });
    assert.match(JSON.stringify(echo.json), /through the stdio bridge/);
  });
});

function isZombie(pid: number): boolean {
  try {
    return /^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return false;
  }
}
