/**
 * Memory figures (`npm run bench:memory`):
 *
 * - **sessions**: the session registry on the in-process memory store at 1,000,000 sessions:
 *   create, resolve, let them expire (the store's clock is moved past the absolute timeout and its
 *   sweep runs), and RSS before, at the peak and after (with a forced GC), against the baseline.
 * - **streams**: `tenantgate serve` (memory store) with N concurrent legacy SSE streams open through
 *   it (default 4,000) to an upstream that holds every GET stream open: the gateway's RSS per open
 *   stream, read from /proc before and after.
 *
 * - **sessions over HTTP**: N sessions (default 50,000) initialized through the gateway: creates per
 *   second and the gateway's RSS per session.
 *
 *   ./run npm run bench:memory -- [--sessions N] [--http-sessions N] [--streams N] [--only sessions|http|streams]
 *
 * Run with `node --expose-gc` (the npm script does) so "after" is measured after a full collection.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { Agent, request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { Keyring } from "../src/crypto/keyring.ts";
import { makePrincipal } from "../src/identity/principal.ts";
import { createSessionRegistry } from "../src/sessions/session-registry.ts";
import { MemoryStore } from "../src/store/memory-store.ts";
import { freePort, startChild } from "./lib/children.ts";

const { values } = parseArgs({
  options: {
    sessions: { type: "string", default: "1000000" },
    streams: { type: "string", default: "4000" },
    "http-sessions": { type: "string", default: "50000" },
    only: { type: "string" },
  },
});
const SESSIONS = Number(values.sessions);
const STREAMS = Number(values.streams);
const HTTP_SESSIONS = Number(values["http-sessions"]);
const SESSIONS_PER_PRINCIPAL = 100;
const HERE = new URL(".", import.meta.url).pathname;
const CLI = new URL("../src/cli/main.ts", import.meta.url).pathname;

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
type GcOptions = { type: "major"; execution: "sync"; flavor: "regular" | "last-resort" };
const v8gc = (globalThis as { gc?: (options?: GcOptions) => void }).gc;
const gc = () => v8gc?.();
/**
 * A full collection that also gives freed pages back to the system: what V8's memory reducer runs on a
 * process whose allocation has slowed down. Forced here so the figure does not wait on its timers.
 */
const memoryReducingGc = () => v8gc?.({ type: "major", execution: "sync", flavor: "last-resort" });

async function sessions(): Promise<Record<string, unknown>> {
  memoryReducingGc();
  const baseline = process.memoryUsage.rss();
  const heapBaseline = process.memoryUsage().heapUsed;
  let clock = Date.now();
  const now = () => clock;
  const store = new MemoryStore({
    maxEntries: SESSIONS * 4 + 1000,
    maxBytes: 8 * 2 ** 30,
    now,
    sweepIntervalMs: 3_600_000,
  });
  const registry = createSessionRegistry({
    store,
    keyring: Keyring.ephemeral(),
    absoluteTimeoutMs: 3_600_000,
    idleTimeoutMs: 1_800_000,
    now,
  });
  // Many principals (a realistic spread), a few sessions each.
  const principals = Array.from({ length: Math.max(1, Math.floor(SESSIONS / 4)) }, (_, i) =>
    makePrincipal({
      kind: "jwt",
      issuer: "https://issuer.invalid",
      subject: `user-${i}`,
      tenant: `tenant-${i % 1000}`,
      scopes: [],
      expiresAt: null,
    }),
  );
  const ids: string[] = new Array(SESSIONS);
  const created = performance.now();
  const batch = 1000;
  for (let i = 0; i < SESSIONS; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, SESSIONS - i) }, async (_, j) => {
        const principal = principals[(i + j) % principals.length] as (typeof principals)[number];
        const { sessionId } = await registry.create({
          principal,
          upstream: "notes",
          protocolVersion: "2025-11-25",
        });
        ids[i + j] = sessionId;
      }),
    );
  }
  const createSeconds = (performance.now() - created) / 1000;
  gc();
  const peak = process.memoryUsage.rss();
  const resolved = performance.now();
  let found = 0;
  for (let i = 0; i < SESSIONS; i += batch) {
    const results = await Promise.all(
      ids
        .slice(i, i + batch)
        .map((id, j) =>
          registry.resolve(
            id,
            principals[(i + j) % principals.length] as (typeof principals)[number],
            "notes",
          ),
        ),
    );
    found += results.filter((r) => r !== null).length;
  }
  const resolveSeconds = (performance.now() - resolved) / 1000;
  // Past the absolute timeout: every record has expired; the sweep frees them.
  clock += 3_600_000 + 60_000;
  // Reading the size sweeps every expired entry.
  const entriesAfterExpiry = store.size;
  ids.length = 0;
  // The next request after the expiry (a server keeps serving): its activity write lets the registry
  // forget the throttling entries of sessions used more than a throttle interval ago.
  const next = await registry.create({
    principal: principals[0] as (typeof principals)[number],
    upstream: "notes",
    protocolVersion: "2025-11-25",
  });
  const nextResolves =
    (await registry.resolve(next.sessionId, principals[0] as (typeof principals)[number], "notes")) !== null;
  await new Promise((resolve) => setTimeout(resolve, 100));
  gc();
  const stillThere = await registry.resolve(
    "x".repeat(32),
    principals[0] as (typeof principals)[number],
    "notes",
  );
  await store.close();
  principals.length = 0;
  // V8 gives pages back to the system some time after a collection frees them: a few idle seconds
  // with full collections, as a server between bursts would have.
  for (let i = 0; i < 10; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  const afterRegularGc = process.memoryUsage.rss();
  const heapTotalAfterRegularGc = process.memoryUsage().heapTotal;
  memoryReducingGc();
  const after = process.memoryUsage.rss();
  const heapAfter = process.memoryUsage().heapUsed;
  const { heapTotal, external, arrayBuffers } = process.memoryUsage();
  return {
    sessions: SESSIONS,
    createPerSecond: Math.round(SESSIONS / createSeconds),
    resolvePerSecond: Math.round(SESSIONS / resolveSeconds),
    resolvedFound: found,
    rssBaseline: mib(baseline),
    rssPeak: mib(peak),
    bytesPerSession: Math.round((peak - baseline) / SESSIONS),
    // Full collections and idle time: V8 keeps the freed heap pages committed.
    rssAfterExpiryRegularGc: mib(afterRegularGc),
    heapTotalAfterExpiryRegularGc: mib(heapTotalAfterRegularGc),
    // After a memory-reducing collection: what is still held once V8 gives pages back.
    rssAfterExpiry: mib(after),
    heapUsedBaseline: mib(heapBaseline),
    heapUsedAfterExpiry: mib(heapAfter),
    // Where RSS above the heap in use sits: V8's committed heap, and memory outside it.
    heapTotalAfterExpiry: mib(heapTotal),
    externalAfterExpiry: mib(external),
    arrayBuffersAfterExpiry: mib(arrayBuffers),
    afterVsBaseline: `${(((after - baseline) / baseline) * 100).toFixed(1)}%`,
    afterVsBaselineRatio: (after - baseline) / baseline,
    expiredResolvesNull: stillThere === null,
    sessionAfterExpiryResolves: nextResolves,
    storeEntriesAfterExpiry: entriesAfterExpiry,
  };
}

/**
 * Through a `tenantgate serve` process (memory store): `sessionCount` sessions created over HTTP
 * (timed, and the gateway's RSS per session), then GET streams opened on the first `streamCount`.
 */
async function throughGateway(sessionCount: number, streamCount: number): Promise<Record<string, unknown>> {
  const dir = await mkdtemp(join(tmpdir(), "tenantgate-bench-mem-"));
  const children = [];
  try {
    const responder = await startChild(process.execPath, [join(HERE, "targets/responder.ts")], {
      ready: /^listening on (\d+)/,
    });
    children.push(responder);
    const { publicKey, privateKey } = await generateKeyPair("EdDSA", { extractable: true });
    const jwksFile = join(dir, "jwks.json");
    await writeFile(
      jwksFile,
      JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: "b", alg: "EdDSA" }] }),
    );
    const port = await freePort();
    const publicUrl = `http://127.0.0.1:${port}`;
    const big = Math.max(sessionCount, streamCount) * 4 + 1000;
    await writeFile(
      join(dir, "gw.json"),
      JSON.stringify({
        listen: { host: "127.0.0.1", port },
        store: `memory:?maxEntries=${big * 8}`,
        secrets: { masterKey: "env:K" },
        auth: {
          issuers: [{ issuer: "https://i.invalid", jwksFile, algorithms: ["EdDSA"], tenantClaim: "tenant" }],
        },
        upstreams: [
          {
            name: "r",
            path: "/mcp",
            url: `http://127.0.0.1:${responder.announced}/mcp`,
            protocolVersions: ["2025-11-25"],
          },
        ],
        // A realistic spread: many principals, each under the default per-principal cap (100).
        sessions: { maxPerPrincipal: SESSIONS_PER_PRINCIPAL },
        limits: {
          streams: { global: big, perIp: big, perPrincipal: big, perSession: 8 },
          inflight: { global: big, perIp: big, perPrincipal: big, perSession: 32 },
          rate: { perSecond: 1_000_000, burst: 1_000_000_000 },
        },
        audit: { stdout: true },
        log: { level: "warn" },
        admin: { listen: { port: 0 } },
      }),
    );
    const gateway = await startChild(process.execPath, [CLI, "serve", "--config", join(dir, "gw.json")], {
      ready: /^tenantgate: admin API on (\S+)/,
      env: { K: randomBytes(32).toString("base64url") },
    });
    children.push(gateway);
    const pid = gateway.process.pid as number;
    const tokens = await Promise.all(
      Array.from({ length: Math.max(1, Math.ceil(sessionCount / SESSIONS_PER_PRINCIPAL)) }, (_, k) =>
        new SignJWT({ tenant: `t-${k % 50}` })
          .setProtectedHeader({ alg: "EdDSA", kid: "b" })
          .setIssuer("https://i.invalid")
          .setSubject(`user-${k}`)
          .setAudience(`${publicUrl}/mcp`)
          .setIssuedAt()
          .setExpirationTime("1h")
          .sign(privateKey),
      ),
    );
    const agent = new Agent({ keepAlive: true, maxSockets: 256 });
    const post = (headers: Record<string, string>, body: string, token: string) =>
      new Promise<{ status: number; sessionId: string | undefined }>((resolve, reject) => {
        const req = request(
          `${publicUrl}/mcp`,
          {
            method: "POST",
            agent,
            headers: {
              ...headers,
              "content-type": "application/json",
              accept: "application/json, text/event-stream",
              authorization: `Bearer ${token}`,
            },
          },
          (res) => {
            res.resume();
            res.on("end", () =>
              resolve({
                status: res.statusCode ?? 0,
                sessionId: res.headers["mcp-session-id"] as string | undefined,
              }),
            );
          },
        );
        req.on("error", reject);
        req.end(body);
      });
    const initialize = JSON.stringify({
      jsonrpc: "2.0",
      id: 0,
      method: "initialize",
      params: {
        protocolVersion: "2025-11-25",
        capabilities: {},
        clientInfo: { name: "bench", version: "0" },
      },
    });
    const sessionIds: Array<{ id: string; token: string }> = [];
    const initializeStatuses = new Map<number, number>();
    // One request first: the token is verified and cached before the bursts, as a client's first
    // call would; a burst of never-verified tokens from one address is what the failed-auth limiter
    // is there to slow down.
    const rssOf = async () =>
      Number(/VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) * 1024;
    // Each principal's first request alone: its token is verified and cached before the bursts.
    for (const token of tokens) {
      const first = await post({ "mcp-protocol-version": "2025-11-25" }, initialize, token);
      if (first.sessionId) sessionIds.push({ id: first.sessionId, token });
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
    const beforeSessions = await rssOf();
    const creating = performance.now();
    for (let i = sessionIds.length; i < sessionCount; i += 200) {
      const created = await Promise.all(
        Array.from({ length: Math.min(200, sessionCount - i) }, (_, j) => {
          const token = tokens[(i + j) % tokens.length] as string;
          return post({ "mcp-protocol-version": "2025-11-25" }, initialize, token).then((c) => ({
            ...c,
            token,
          }));
        }),
      );
      for (const c of created) {
        if (c.sessionId) sessionIds.push({ id: c.sessionId, token: c.token });
        else initializeStatuses.set(c.status, (initializeStatuses.get(c.status) ?? 0) + 1);
      }
    }
    const createSeconds = (performance.now() - creating) / 1000;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const before = await rssOf();
    const streamed = sessionIds.slice(0, streamCount);
    const open: Array<() => void> = [];
    let opened = 0;
    const statuses = new Map<number, number>();
    let lastError = "";
    for (let i = 0; i < streamed.length; i += 200) {
      await Promise.all(
        streamed.slice(i, i + 200).map(
          ({ id: sessionId, token }) =>
            new Promise<void>((resolve) => {
              const req = request(`${publicUrl}/mcp`, {
                method: "GET",
                agent: false,
                headers: {
                  authorization: `Bearer ${token}`,
                  "mcp-session-id": sessionId,
                  "mcp-protocol-version": "2025-11-25",
                  accept: "text/event-stream",
                },
              });
              req.on("response", (res) => {
                statuses.set(res.statusCode ?? 0, (statuses.get(res.statusCode ?? 0) ?? 0) + 1);
                if (res.statusCode === 200) opened++;
                res.once("data", () => resolve());
                res.once("end", () => resolve());
                setTimeout(resolve, 2000);
              });
              req.on("error", (error) => {
                statuses.set(-1, (statuses.get(-1) ?? 0) + 1);
                lastError = (error as NodeJS.ErrnoException).code ?? "error";
                resolve();
              });
              req.end();
              open.push(() => req.destroy());
            }),
        ),
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const during = await rssOf();
    for (const close of open) close();
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const afterClose = await rssOf();
    agent.destroy();
    return {
      sessionsCreated: sessionIds.length,
      sessionCreatesPerSecond: Math.round(sessionIds.length / createSeconds),
      gatewayRssBeforeSessions: mib(beforeSessions),
      gatewayRssWithSessions: mib(before),
      gatewayBytesPerSession: Math.round((before - beforeSessions) / Math.max(1, sessionIds.length)),
      streamsRequested: streamCount,
      streamsOpen: opened,
      failedInitializes: Object.fromEntries(initializeStatuses),
      answers: Object.fromEntries(statuses),
      lastError,
      gatewayRssBeforeStreams: mib(before),
      gatewayRssWithStreams: mib(during),
      bytesPerStream: opened > 0 ? Math.round((during - before) / opened) : null,
      gatewayRssAfterClose: mib(afterClose),
    };
  } finally {
    for (const child of children.reverse()) await child.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

const results: Record<string, unknown> = { when: new Date().toISOString(), node: process.version };
if (values.only === undefined || values.only === "sessions") results["sessions"] = await sessions();
if (values.only === undefined || values.only === "http") {
  results["sessionsOverHttp"] = await throughGateway(HTTP_SESSIONS, 0);
}
if (values.only === undefined || values.only === "streams")
  results["streams"] = await throughGateway(STREAMS, STREAMS);
// The targets, each with its measured value.
const targets: Array<{ target: string; measured: string; met: boolean }> = [];
const sessionFigures = results["sessions"] as
  | { afterVsBaselineRatio: number; afterVsBaseline: string }
  | undefined;
if (sessionFigures) {
  targets.push({
    target: "RSS after every session expired within 10% of the baseline (after a memory-reducing GC)",
    measured: sessionFigures.afterVsBaseline,
    met: sessionFigures.afterVsBaselineRatio <= 0.1,
  });
}
const streamFigures = results["streams"] as { bytesPerStream: number | null } | undefined;
if (streamFigures?.bytesPerStream != null) {
  targets.push({
    target: "gateway RSS per concurrent SSE stream <= 35 KB",
    measured: `${(streamFigures.bytesPerStream / 1024).toFixed(1)} KB`,
    met: streamFigures.bytesPerStream <= 35 * 1024,
  });
}
results["targets"] = targets;
process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
