/**
 * The admin listener end to end: health and readiness, Prometheus metrics, the session API (list,
 * revoke one, revoke a principal) on every store backend, its token, its Host/Origin guard, and the
 * `tenantgate sessions` CLI against it. Real gateway, real stores, the recording upstream (whose GET
 * streams stay open until the client or the gateway ends them).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { request as httpRequest } from "node:http";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { digest } from "../../src/crypto/ids.ts";
import { ADMIN_TOKEN_PURPOSE, KILL_SWITCH_CONFIRMATION } from "../../src/gateway/admin-server.ts";
import {
  type Harness,
  INITIALIZE,
  initializeSession,
  mcpHeaders,
  startHarness,
  TEST_ISSUER,
  sessionToolsList as toolsList,
} from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const CLI_PATH = fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A raw request, so Host and Origin are exactly what the test says (fetch sets Host itself). */
function adminRequest(
  base: string,
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: unknown } = {},
): Promise<{ status: number; body: string; headers: Record<string, string | string[] | undefined> }> {
  const url = new URL(path, base);
  const body = options.body === undefined ? undefined : JSON.stringify(options.body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      url,
      {
        method: options.method ?? (body === undefined ? "GET" : "POST"),
        headers: {
          ...(body === undefined ? {} : { "content-type": "application/json" }),
          ...options.headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            body: Buffer.concat(chunks).toString("utf8"),
            headers: res.headers,
          }),
        );
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

const alice = { issuer: TEST_ISSUER, subject: "alice", tenant: "t-alice" };
const bob = { issuer: TEST_ISSUER, subject: "bob", tenant: "t-bob" };

/** Opens the session's GET stream; `ended` resolves when the gateway ends it. */
async function openStream(url: string, token: string, sessionId: string): Promise<{ ended: Promise<void> }> {
  const response = await fetch(url, {
    method: "GET",
    headers: {
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-11-25",
      accept: "text/event-stream",
    },
  });
  assert.equal(response.status, 200);
  const reader = response.body?.getReader();
  assert.ok(reader);
  const ended = (async () => {
    try {
      while (!(await reader.read()).done) {
        // keep reading until the gateway ends the stream
      }
    } catch {
      // a reset is an end too
    }
  })();
  return { ended };
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    promise,
    sleep(ms).then(() => {
      throw new Error(`${what} did not happen within ${ms} ms`);
    }),
  ]);
}

describe("admin API", async () => {
  for (const backend of await storeBackendCases("admin-api")) {
    describe(backend.name, { skip: backend.skip }, () => {
      let upstream: RecordingUpstream;
      let harness: Harness;
      let cleanup: () => Promise<void>;
      let url: string;
      let admin: string;
      before(async () => {
        const store = await backend.open();
        cleanup = store.cleanup;
        upstream = await startRecordingUpstream();
        harness = await startHarness({
          store: store.url,
          upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
        });
        url = `${harness.url}/mcp`;
        assert.ok(harness.gateway.adminUrl);
        admin = harness.gateway.adminUrl;
      });
      after(async () => {
        await harness?.close();
        await upstream?.close();
        await cleanup?.();
      });

      it(`S4 admin revoke of one session by its digest: 404 for its owner, its open stream ends (${backend.name})`, async () => {
        const daveToken = await harness.token("dave");
        const dave = { issuer: TEST_ISSUER, subject: "dave", tenant: "t-dave" };
        const sessionId = await initializeSession(url, daveToken);
        const listed = await adminRequest(admin, "/admin/sessions/list", { body: { principal: dave } });
        assert.equal(listed.status, 200);
        const { sessions } = JSON.parse(listed.body) as {
          sessions: Array<{ session: string; upstream: string; protocolVersion: string }>;
        };
        assert.equal(sessions.length, 1);
        const [only] = sessions;
        assert.ok(only && only.upstream === "recording" && only.protocolVersion === "2025-11-25");
        assert.match(only.session, /^[A-Za-z0-9_-]{43}$/);
        // The list names the digest only, never the raw id.
        assert.ok(!listed.body.includes(sessionId));

        const stream = await openStream(url, daveToken, sessionId);
        const answer = await adminRequest(admin, "/admin/sessions/revoke", {
          body: { session: only.session },
        });
        assert.deepEqual(JSON.parse(answer.body), { sessions: 1, tasks: 0 });
        await within(stream.ended, 5_000, "the revoked session's stream ending");
        assert.equal((await toolsList(url, daveToken, sessionId)).status, 404);
        const again = await adminRequest(admin, "/admin/sessions/revoke", {
          body: { session: only.session },
        });
        assert.deepEqual(JSON.parse(again.body), { sessions: 0, tasks: 0 });
        assert.ok(harness.events.some((e) => e.type === "admin.action" && e.reason === "session-revoke"));
      });

      it(`S4 admin revoke of a principal ends all its sessions, leaves another principal's alone (${backend.name})`, async () => {
        const aliceToken = await harness.token("alice");
        const bobToken = await harness.token("bob");
        const a1 = await initializeSession(url, aliceToken);
        const a2 = await initializeSession(url, aliceToken);
        const b1 = await initializeSession(url, bobToken);
        const stream = await openStream(url, aliceToken, a2);
        const answer = await adminRequest(admin, "/admin/sessions/revoke", { body: { principal: alice } });
        assert.equal(answer.status, 200);
        assert.ok((JSON.parse(answer.body) as { sessions: number }).sessions >= 2);
        assert.equal((await toolsList(url, aliceToken, a1)).status, 404);
        assert.equal((await toolsList(url, aliceToken, a2)).status, 404);
        assert.equal((await toolsList(url, bobToken, b1)).status, 200);
        await within(stream.ended, 5_000, "the revoked principal's stream ending");
        const listed = await adminRequest(admin, "/admin/sessions/list", { body: { principal: alice } });
        assert.deepEqual(JSON.parse(listed.body), { sessions: [] });
        const bobs = await adminRequest(admin, "/admin/sessions/list", { body: { principal: bob } });
        assert.equal((JSON.parse(bobs.body) as { sessions: unknown[] }).sessions.length, 1);
      });
    });
  }

  describe("listener", () => {
    let upstream: RecordingUpstream;
    let harness: Harness;
    let admin: string;
    before(async () => {
      upstream = await startRecordingUpstream();
      harness = await startHarness({ upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }] });
      assert.ok(harness.gateway.adminUrl);
      admin = harness.gateway.adminUrl;
    });
    after(async () => {
      await harness?.close();
      await upstream?.close();
    });

    it("answers /healthz and /readyz", async () => {
      assert.deepEqual(JSON.parse((await adminRequest(admin, "/healthz")).body), { status: "ok" });
      const ready = await adminRequest(admin, "/readyz");
      assert.equal(ready.status, 200);
      assert.deepEqual(JSON.parse(ready.body), { status: "ready" });
    });

    it("serves Prometheus metrics: requests by upstream and status, store latency, denials, sessions", async () => {
      const token = await harness.token("alice");
      await initializeSession(`${harness.url}/mcp`, token);
      const refused = await fetch(`${harness.url}/mcp`, {
        method: "POST",
        headers: mcpHeaders({ authorization: "Bearer not-a-token" }),
        body: JSON.stringify(INITIALIZE),
      });
      assert.equal(refused.status, 401);
      await refused.arrayBuffer();
      await sleep(50);
      const metrics = await adminRequest(admin, "/metrics");
      assert.equal(metrics.status, 200);
      assert.match(String(metrics.headers["content-type"]), /^text\/plain; version=0\.0\.4/);
      const text = metrics.body;
      assert.match(text, /^tenantgate_requests_total\{upstream="recording",status="200"\} [1-9]/m);
      assert.match(text, /^tenantgate_requests_total\{upstream="recording",status="401"\} [1-9]/m);
      assert.match(text, /^tenantgate_denials_total\{type="auth\.denied",reason="unknown-api-key"\} [1-9]/m);
      assert.match(text, /^tenantgate_store_duration_seconds_count\{operation="claim"\} [1-9]/m);
      assert.match(text, /^tenantgate_upstream_duration_seconds_count\{upstream="recording"\} [1-9]/m);
      assert.match(text, /^tenantgate_sessions_active [1-9]/m);
      assert.match(text, /^tenantgate_streams_open 0$/m);
      assert.match(text, /^tenantgate_security_events_total\{type="gateway\.started",reason=""\} 1$/m);
      // Labels come from closed sets only: no token, session id or subject is ever in the text.
      assert.ok(!text.includes("alice") && !text.includes(token));
    });

    it("refuses a Host naming anything but itself (DNS rebinding) and any request with an Origin", async () => {
      const rebound = await adminRequest(admin, "/admin/sessions/list", {
        headers: { host: "attacker.example:8788" },
        body: { principal: alice },
      });
      assert.equal(rebound.status, 403);
      const browser = await adminRequest(admin, "/admin/kill-switch", {
        headers: { origin: "http://attacker.example" },
        body: { confirm: KILL_SWITCH_CONFIRMATION },
      });
      assert.equal(browser.status, 403);
      const metrics = await adminRequest(admin, "/metrics", { headers: { host: "attacker.example" } });
      assert.equal(metrics.status, 403);
      assert.ok(harness.events.some((e) => e.type === "admin.denied" && e.reason === "host-forbidden"));
      assert.ok(harness.events.some((e) => e.type === "admin.denied" && e.reason === "origin-forbidden"));
    });

    it("refuses malformed admin requests generically, and query strings", async () => {
      for (const body of [
        {},
        { principal: { issuer: TEST_ISSUER } },
        { principal: alice, extra: 1 },
        { session: "x" },
      ]) {
        const answer = await adminRequest(admin, "/admin/sessions/revoke", { body });
        assert.equal(answer.status, 400, JSON.stringify(body));
        assert.deepEqual(JSON.parse(answer.body), {
          error: { code: "ERR_REQUEST_INVALID", message: "invalid request" },
        });
      }
      assert.equal(
        (await adminRequest(admin, "/admin/kill-switch", { body: { confirm: "yes" } })).status,
        400,
      );
      assert.equal((await adminRequest(admin, "/metrics?x=1")).status, 400);
      assert.equal((await adminRequest(admin, "/admin/sessions/list")).status, 405);
      assert.equal((await adminRequest(admin, "/nothing")).status, 404);
    });

    it("S4 the kill switch through the admin API: every session is 404 for its owner, a new initialize works", async () => {
      const mcp = `${harness.url}/mcp`;
      const aliceToken = await harness.token("alice");
      const bobToken = await harness.token("bob");
      const a = await initializeSession(mcp, aliceToken);
      const b = await initializeSession(mcp, bobToken);
      const stream = await openStream(mcp, bobToken, b);
      const refused = await adminRequest(admin, "/admin/kill-switch", { body: {} });
      assert.equal(refused.status, 400, "no confirmation, no kill switch");
      assert.equal((await toolsList(mcp, aliceToken, a)).status, 200);
      const answer = await adminRequest(admin, "/admin/kill-switch", {
        body: { confirm: KILL_SWITCH_CONFIRMATION },
      });
      assert.equal(answer.status, 200);
      assert.equal((await toolsList(mcp, aliceToken, a)).status, 404);
      assert.equal((await toolsList(mcp, bobToken, b)).status, 404);
      await within(stream.ended, 5_000, "an open stream ending at the kill switch");
      const fresh = await initializeSession(mcp, aliceToken);
      assert.equal((await toolsList(mcp, aliceToken, fresh)).status, 200);
      assert.ok(harness.events.some((e) => e.type === "admin.action" && e.reason === "kill-switch"));
    });

    it("tenantgate sessions list and revoke through the CLI, with TENANTGATE_ADMIN_URL", async () => {
      const token = await harness.token("carol");
      const sessionId = await initializeSession(`${harness.url}/mcp`, token);
      const run = (args: string[]) =>
        new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
          const child = spawn(process.execPath, [CLI_PATH, "sessions", ...args], {
            env: { ...process.env, TENANTGATE_ADMIN_URL: admin },
          });
          let stdout = "";
          let stderr = "";
          child.stdout.on("data", (chunk: Buffer) => {
            stdout += chunk.toString();
          });
          child.stderr.on("data", (chunk: Buffer) => {
            stderr += chunk.toString();
          });
          child.on("close", (code) => resolve({ code, stdout, stderr }));
        });
      const listed = await run([
        "list",
        "--issuer",
        TEST_ISSUER,
        "--subject",
        "carol",
        "--tenant",
        "t-carol",
      ]);
      assert.equal(listed.code, 0, listed.stderr);
      const line = listed.stdout.trim();
      assert.match(line, /^[A-Za-z0-9_-]{43} {2}recording {2}2025-11-25 {2}created \S+ {2}expires \S+$/);
      assert.ok(!listed.stdout.includes(sessionId));
      const revoked = await run(["revoke", "--session", line.split(" ")[0] ?? ""]);
      assert.equal(revoked.code, 0, revoked.stderr);
      assert.equal(revoked.stdout, "session revoked\n");
      assert.equal((await toolsList(`${harness.url}/mcp`, token, sessionId)).status, 404);
      const unsure = await run(["revoke", "--all"]);
      assert.equal(unsure.code, 1);
      assert.match(unsure.stderr, /confirm with --yes/);
    });
  });

  describe("with admin.tokenDigest", () => {
    const adminToken = `tga_${"x".repeat(43)}`;
    let harness: Harness;
    let admin: string;
    before(async () => {
      harness = await startHarness({
        extra: { admin: { listen: { port: 0 }, tokenDigest: digest(ADMIN_TOKEN_PURPOSE, adminToken) } },
      });
      assert.ok(harness.gateway.adminUrl);
      admin = harness.gateway.adminUrl;
    });
    after(async () => {
      await harness?.close();
    });

    it("needs the bearer token for metrics and the session API, not for health", async () => {
      assert.equal((await adminRequest(admin, "/healthz")).status, 200);
      const missing = await adminRequest(admin, "/metrics");
      assert.equal(missing.status, 401);
      assert.match(String(missing.headers["www-authenticate"]), /^Bearer /);
      const wrong = await adminRequest(admin, "/admin/sessions/list", {
        headers: { authorization: `Bearer tga_${"y".repeat(43)}` },
        body: { principal: alice },
      });
      assert.equal(wrong.status, 401);
      const right = await adminRequest(admin, "/admin/sessions/list", {
        headers: { authorization: `Bearer ${adminToken}` },
        body: { principal: alice },
      });
      assert.equal(right.status, 200);
      assert.ok(harness.events.some((e) => e.type === "admin.denied" && e.reason === "token-missing"));
      assert.ok(harness.events.some((e) => e.type === "admin.denied" && e.reason === "token-invalid"));
    });
  });
});
