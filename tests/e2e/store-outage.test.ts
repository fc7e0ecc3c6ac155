/**
 * THREATS E3 through the gateway: with the store unreachable (Redis, and separately PostgreSQL,
 * behind a fault proxy that hangs, refuses or resets), a request that needs an ownership decision
 * gets 503 within the store's timeout and nothing reaches the upstream, `/readyz` says not ready, and
 * when the store returns the same session works again by itself, without a restart. Requests keep
 * flowing while the faults switch, as they would in production.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import pg from "pg";
import { type Backend, postgresBackend, redisBackend } from "../support/backends.ts";
import { type FaultMode, FaultProxy } from "../support/fault-proxy.ts";
import { type Harness, initializeSession, mcpHeaders, startHarness } from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";

const TIMEOUT_MS = 500;
/** Generous: the bound is the store timeout; this only says "not stuck". */
const LIVENESS_MS = TIMEOUT_MS + 4_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface OutageBackend {
  readonly name: string;
  readonly backend: Backend;
  /** The store URL through the proxy, and how to remove what the test wrote. */
  store(proxyPort: number): { url: string; cleanup(): Promise<void> };
}

const cases: OutageBackend[] = [
  {
    name: "redis",
    backend: await redisBackend(),
    store(proxyPort) {
      const prefix = `tgtest:${process.pid}:${randomBytes(8).toString("hex")}:`;
      return {
        url: `redis://127.0.0.1:${proxyPort}?prefix=${encodeURIComponent(prefix)}&timeoutMs=${TIMEOUT_MS}`,
        cleanup: async () => {
          const admin = new Redis(this.backend.url, { maxRetriesPerRequest: 1 });
          const keys = await admin.keys(`${prefix}*`);
          if (keys.length > 0) await admin.unlink(...keys);
          await admin.quit();
        },
      };
    },
  },
  {
    name: "postgres",
    backend: await postgresBackend(),
    store(proxyPort) {
      const schema = `tgtest_outage_${process.pid}_${randomBytes(4).toString("hex")}`;
      const direct = new URL(this.backend.url);
      const proxied = new URL(this.backend.url);
      proxied.hostname = "127.0.0.1";
      proxied.port = String(proxyPort);
      proxied.search = "";
      proxied.searchParams.set("schema", schema);
      proxied.searchParams.set("timeoutMs", String(TIMEOUT_MS));
      return {
        url: proxied.toString(),
        cleanup: async () => {
          const client = new pg.Client({ connectionString: direct.toString() });
          await client.connect();
          await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
          await client.end();
        },
      };
    },
  },
];

for (const outage of cases) {
  describe(`E3 the ${outage.name} store unreachable through the gateway`, {
    skip: outage.backend.skip,
  }, () => {
    let proxy: FaultProxy;
    let upstream: RecordingUpstream;
    let harness: Harness;
    let cleanup: () => Promise<void>;
    let token: string;
    let sessionId: string;

    before(async () => {
      proxy = await FaultProxy.start(outage.backend.host, outage.backend.port);
      const store = outage.store(proxy.port);
      cleanup = store.cleanup;
      upstream = await startRecordingUpstream();
      harness = await startHarness({
        store: store.url,
        upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
      });
      token = await harness.token("alice");
      sessionId = await initializeSession(`${harness.url}/mcp`, token);
    });

    after(async () => {
      await proxy?.setMode("pass");
      await harness?.close();
      await upstream?.close();
      await proxy?.close();
      await cleanup?.();
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
    const readiness = async () => (await fetch(`${harness.gateway.adminUrl}/readyz`)).status;

    for (const mode of ["hang", "refuse", "reset"] as const satisfies readonly FaultMode[]) {
      it(`E3 ${outage.name} ${mode}: session requests in flight get 503 within the store timeout, nothing is forwarded, readyz is 503, and it recovers by itself`, async () => {
        assert.equal((await toolsList()).status, 200);
        assert.equal(await readiness(), 200);

        // Traffic keeps flowing while the store fails: a steady stream of requests by the owner.
        let flowing = true;
        const outcomes: Array<{ status: number; ms: number; during: boolean }> = [];
        let faulted = false;
        const traffic = (async () => {
          while (flowing) {
            const started = Date.now();
            const during = faulted;
            const response = await toolsList();
            await response.arrayBuffer();
            outcomes.push({ status: response.status, ms: Date.now() - started, during });
            await sleep(20);
          }
        })();
        await sleep(150);
        const forwarded = upstream.requests.length;
        faulted = true;
        await proxy.setMode(mode);
        // Requests already in flight when the fault began may still have been forwarded; give them
        // the store timeout to settle, then count.
        await sleep(TIMEOUT_MS + 300);
        const settled = upstream.requests.length;
        const started = Date.now();
        const response = await toolsList();
        const elapsed = Date.now() - started;
        const body = (await response.json()) as { error: { data: { code: string } } };
        assert.equal(response.status, 503);
        assert.equal(body.error.data.code, "ERR_STORE_UNAVAILABLE");
        assert.ok(elapsed < LIVENESS_MS, `answered after ${elapsed} ms`);
        assert.equal(await readiness(), 503);
        await sleep(500);
        assert.equal(upstream.requests.length, settled, "nothing reached the upstream during the outage");
        assert.ok(settled - forwarded <= 2, "at most the requests already in flight were forwarded");
        assert.ok(harness.events.some((event) => event.type === "store.unavailable"));

        await proxy.setMode("pass");
        faulted = false;
        // Recovery is the store client's own: retried until it answers, within a generous bound.
        const deadline = Date.now() + 15_000;
        let status = 0;
        while (Date.now() < deadline) {
          const again = await toolsList();
          await again.arrayBuffer();
          status = again.status;
          if (status === 200) break;
          await sleep(100);
        }
        assert.equal(status, 200, "the session works again once the store is back");
        assert.equal(await readiness(), 200);
        flowing = false;
        await traffic;
        const duringOutage = outcomes.filter((o) => o.during);
        assert.ok(duringOutage.length > 0);
        // Every answer during the outage was either a 503 or a success that began before the fault
        // reached its connection; none was stuck, and none was another error.
        for (const outcome of duringOutage) {
          assert.ok([200, 503].includes(outcome.status), `status ${outcome.status}`);
          assert.ok(outcome.ms < LIVENESS_MS, `a request took ${outcome.ms} ms`);
        }
      });
    }
  });
}
