/**
 * THREATS E3 through the gateway: with the store unreachable (Redis behind a fault proxy that hangs
 * or refuses), a request that needs an ownership decision gets 503 within the store's timeout and
 * nothing reaches the upstream; when the store returns, the same session works again by itself.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import { redisBackend } from "../support/backends.ts";
import { FaultProxy } from "../support/fault-proxy.ts";
import { type Harness, initializeSession, mcpHeaders, startHarness } from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";

const backend = await redisBackend();
const TIMEOUT_MS = 500;
/** Generous: the bound is the store timeout; this only says "not stuck". */
const LIVENESS_MS = TIMEOUT_MS + 4_000;

describe("E3 the store unreachable through the gateway", { skip: backend.skip }, () => {
  const prefix = `tgtest:${process.pid}:${randomBytes(8).toString("hex")}:`;
  let proxy: FaultProxy;
  let upstream: RecordingUpstream;
  let harness: Harness;
  let token: string;
  let sessionId: string;

  before(async () => {
    proxy = await FaultProxy.start(backend.host, backend.port);
    upstream = await startRecordingUpstream();
    harness = await startHarness({
      store: `redis://127.0.0.1:${proxy.port}?prefix=${encodeURIComponent(prefix)}&timeoutMs=${TIMEOUT_MS}`,
      upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
    });
    token = await harness.token("alice");
    sessionId = await initializeSession(`${harness.url}/mcp`, token);
  });

  after(async () => {
    await proxy.setMode("pass");
    await harness.close();
    await upstream.close();
    await proxy.close();
    const admin = new Redis(backend.url, { maxRetriesPerRequest: 1 });
    const keys = await admin.keys(`${prefix}*`);
    if (keys.length > 0) await admin.unlink(...keys);
    await admin.quit();
  });

  const toolsList = () =>
    fetch(`${harness.url}/mcp`, {
      method: "POST",
      headers: mcpHeaders({
        authorization: `Bearer ${token}`,
        "mcp-session-id": sessionId,
        "mcp-protocol-version": "2025-11-25",
      }),
      body: JSON.stringify({ jsonrpc: "2.0", id: 3, method: "tools/list" }),
    });

  for (const mode of ["hang", "refuse"] as const) {
    it(`E3 a session request gets 503 within the store timeout when the store ${mode}s, and nothing is forwarded`, async () => {
      const forwarded = upstream.requests.length;
      await proxy.setMode(mode);
      const started = Date.now();
      const response = await toolsList();
      const elapsed = Date.now() - started;
      const body = (await response.json()) as { error: { data: { code: string } } };
      assert.equal(response.status, 503);
      assert.equal(body.error.data.code, "ERR_STORE_UNAVAILABLE");
      assert.ok(elapsed < LIVENESS_MS, `answered after ${elapsed} ms`);
      assert.equal(upstream.requests.length, forwarded, "nothing reached the upstream");
      assert.ok(harness.events.some((event) => event.type === "store.unavailable"));

      await proxy.setMode("pass");
      // Recovery is the store client's own: retried until it answers, within a generous bound.
      const deadline = Date.now() + 10_000;
      let status = 0;
      while (Date.now() < deadline) {
        const again = await toolsList();
        await again.arrayBuffer();
        status = again.status;
        if (status === 200) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.equal(status, 200, "the session works again once the store is back");
    });
  }
});
