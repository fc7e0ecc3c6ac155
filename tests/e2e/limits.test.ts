/**
 * Connection caps and rate limits through the real gateway (THREATS L1, L2): the per-principal token
 * bucket on every store backend (429 with Retry-After, one principal never spending another's),
 * stream caps per session and per principal under concurrent connects, caps held across two gateways
 * sharing a store in cluster scope, and cap occupancy back at zero in /metrics once streams are gone.
 * The recording upstream keeps GET streams open until the gateway or the client ends them.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  type Harness,
  initializeSession,
  startHarness,
  sessionToolsList as toolsList,
} from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Opens a GET stream; answers its status, and how to drop it (the client leaving). */
async function openStream(
  url: string,
  token: string,
  sessionId: string,
): Promise<{ status: number; code: string | undefined; abort(): void }> {
  const controller = new AbortController();
  const response = await fetch(url, {
    method: "GET",
    headers: {
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-11-25",
      accept: "text/event-stream",
    },
    signal: controller.signal,
  });
  let code: string | undefined;
  if (response.status !== 200) {
    code = ((await response.json()) as { error?: { data?: { code?: string } } }).error?.data?.code;
  } else {
    // The first bytes: the stream is established end to end.
    await response.body?.getReader().read();
  }
  return { status: response.status, code, abort: () => controller.abort() };
}

async function capLines(adminUrl: string): Promise<string[]> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  return text.split("\n").filter((line) => line.startsWith("tenantgate_cap_occupancy{"));
}

async function occupancyDrains(adminUrl: string): Promise<string[]> {
  const deadline = Date.now() + 10_000;
  let lines = await capLines(adminUrl);
  while (lines.length > 0 && Date.now() < deadline) {
    await sleep(50);
    lines = await capLines(adminUrl);
  }
  return lines;
}

describe("rate limits", async () => {
  for (const backend of await storeBackendCases("limits-rate")) {
    describe(backend.name, { skip: backend.skip }, () => {
      let upstream: RecordingUpstream;
      let harness: Harness;
      let cleanup: () => Promise<void>;
      before(async () => {
        const store = await backend.open();
        cleanup = store.cleanup;
        upstream = await startRecordingUpstream();
        harness = await startHarness({
          store: store.url,
          upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
          extra: { limits: { rate: { perSecond: 1, burst: 3 } } },
        });
      });
      after(async () => {
        await harness?.close();
        await upstream?.close();
        await cleanup?.();
      });

      it(`L2 a principal past its burst gets 429 with Retry-After, nothing is forwarded, and another principal is untouched (${backend.name})`, async () => {
        const url = `${harness.url}/mcp`;
        const alice = await harness.token("alice");
        const bob = await harness.token("bob");
        const aliceSession = await initializeSession(url, alice); // token 1 of 3
        assert.equal((await toolsList(url, alice, aliceSession)).status, 200); // 2
        assert.equal((await toolsList(url, alice, aliceSession)).status, 200); // 3
        const forwarded = upstream.requests.length;
        const limited = await toolsList(url, alice, aliceSession);
        assert.equal(limited.status, 429);
        const body = (await limited.json()) as { error: { data: { code: string } } };
        assert.equal(body.error.data.code, "ERR_RATE_LIMITED");
        const retryAfter = Number(limited.headers.get("retry-after"));
        assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1, `Retry-After ${retryAfter}`);
        assert.equal(upstream.requests.length, forwarded, "a limited request is never forwarded");

        // Bob's bucket is his own.
        const bobSession = await initializeSession(url, bob);
        assert.equal((await toolsList(url, bob, bobSession)).status, 200);

        // Honouring Retry-After is enough.
        await sleep(retryAfter * 1000 + 100);
        assert.equal((await toolsList(url, alice, aliceSession)).status, 200);
        assert.ok(harness.events.some((e) => e.type === "request.refused" && e.reason === "rate-limited"));
        const metrics = await (await fetch(`${harness.gateway.adminUrl}/metrics`)).text();
        assert.match(metrics, /^tenantgate_rate_limited_total [1-9]/m);
      });
    });
  }
});

describe("connection caps", () => {
  let upstream: RecordingUpstream;
  let harness: Harness;
  let url: string;
  before(async () => {
    upstream = await startRecordingUpstream();
    harness = await startHarness({
      upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
      extra: {
        limits: { rate: { enabled: false }, streams: { perSession: 1, perPrincipal: 3 } },
        sessions: { maxPerPrincipal: 1000 },
      },
    });
    url = `${harness.url}/mcp`;
  });
  after(async () => {
    await harness?.close();
    await upstream?.close();
  });

  it("L1 a session's second stream is refused 429 while its first is open, and admitted once it closes", async () => {
    const token = await harness.token("carol");
    const sessionId = await initializeSession(url, token);
    const first = await openStream(url, token, sessionId);
    assert.equal(first.status, 200);
    const second = await openStream(url, token, sessionId);
    assert.equal(second.status, 429);
    assert.equal(second.code, "ERR_CONNECTION_LIMIT");
    first.abort();
    const deadline = Date.now() + 5_000;
    let third = await openStream(url, token, sessionId);
    while (third.status !== 200 && Date.now() < deadline) {
      await sleep(50);
      third = await openStream(url, token, sessionId);
    }
    assert.equal(third.status, 200);
    third.abort();
    assert.ok(harness.events.some((e) => e.type === "request.refused" && e.reason === "cap-session"));
  });

  it("L1 concurrent connects never pass the per-principal cap, and every slot comes back after aborted streams", async () => {
    const token = await harness.token("dave");
    const sessions = await Promise.all(Array.from({ length: 8 }, () => initializeSession(url, token)));
    const other = await harness.token("erin");
    const erinSession = await initializeSession(url, other);
    for (let round = 0; round < 3; round++) {
      const streams = await Promise.all(sessions.map((sessionId) => openStream(url, token, sessionId)));
      const admitted = streams.filter((stream) => stream.status === 200);
      const refused = streams.filter((stream) => stream.status === 429);
      assert.equal(admitted.length, 3, `round ${round}: exactly the cap is admitted`);
      assert.equal(refused.length, 5);
      assert.ok(refused.every((stream) => stream.code === "ERR_CONNECTION_LIMIT"));
      // Another principal is not held back by dave's full cap.
      const erin = await openStream(url, other, erinSession);
      assert.equal(erin.status, 200);
      erin.abort();
      for (const stream of streams) stream.abort();
      assert.deepEqual(await occupancyDrains(harness.gateway.adminUrl ?? ""), [], "occupancy back at zero");
    }
  });
});

describe("connection caps in cluster scope across two gateways on one store", async () => {
  for (const backend of await storeBackendCases("limits-cluster")) {
    if (backend.name === "memory" || backend.name === "sqlite") continue;
    describe(backend.name, { skip: backend.skip }, () => {
      let upstream: RecordingUpstream;
      let one: Harness;
      let two: Harness;
      let cleanup: () => Promise<void>;
      before(async () => {
        const store = await backend.open();
        cleanup = store.cleanup;
        upstream = await startRecordingUpstream();
        const options = {
          store: store.url,
          upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
          extra: {
            limits: { scope: "cluster", rate: { enabled: false }, streams: { perPrincipal: 3 } },
            sessions: { maxPerPrincipal: 1000 },
          },
        };
        one = await startHarness(options);
        two = await startHarness(options);
      });
      after(async () => {
        await one?.close();
        await two?.close();
        await upstream?.close();
        await cleanup?.();
      });

      it(`L1 the per-principal stream cap holds across both gateways under concurrent connects (${backend.name})`, async () => {
        // The same principal (issuer, tenant, subject) at both gateways.
        const tokenOne = await one.token("frank");
        const tokenTwo = await two.token("frank");
        const atOne = await Promise.all(
          Array.from({ length: 4 }, () => initializeSession(`${one.url}/mcp`, tokenOne)),
        );
        const atTwo = await Promise.all(
          Array.from({ length: 4 }, () => initializeSession(`${two.url}/mcp`, tokenTwo)),
        );
        const streams = await Promise.all([
          ...atOne.map((sessionId) => openStream(`${one.url}/mcp`, tokenOne, sessionId)),
          ...atTwo.map((sessionId) => openStream(`${two.url}/mcp`, tokenTwo, sessionId)),
        ]);
        assert.equal(streams.filter((stream) => stream.status === 200).length, 3);
        assert.equal(streams.filter((stream) => stream.status === 429).length, 5);
        for (const stream of streams) stream.abort();
        assert.deepEqual(await occupancyDrains(one.gateway.adminUrl ?? ""), []);
        assert.deepEqual(await occupancyDrains(two.gateway.adminUrl ?? ""), []);
        // Released cluster-wide: the cap is free again.
        const again = await Promise.all(
          atTwo.slice(0, 3).map((sessionId) => openStream(`${two.url}/mcp`, tokenTwo, sessionId)),
        );
        assert.deepEqual(
          again.map((stream) => stream.status),
          [200, 200, 200],
        );
        for (const stream of again) stream.abort();
      });
    });
  }
});
