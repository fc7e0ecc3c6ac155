/**
 * What a stdio upstream costs per request, in-process through the bridge (src/upstreams/stdio-upstream.ts)
 * to the demo's notes server over stdio (examples/demo-upstream/stdio.ts, the official SDK's stdio
 * server), side by side:
 * - a legacy session's request (its process was started by the session's `initialize`);
 * - a modern request on the principal's process (`stdio.modern: per-principal`), without vault
 *   entries, and with one `vault:NAME` env value, which is read from the vault on every modern
 *   request (memory store, Redis);
 * - starting a process: a legacy `initialize`, and a principal's first modern request.
 *
 *   ./run npm run bench:stdio -- [--calls N] [--starts N]
 */
import { randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { StdioUpstreamConfig } from "../src/config/gateway-config.ts";
import { Keyring } from "../src/crypto/keyring.ts";
import type { UpstreamClient, UpstreamRequest } from "../src/gateway/upstream-client.ts";
import { makePrincipal, ownerScope, type Principal } from "../src/identity/principal.ts";
import { openStore } from "../src/store/open-store.ts";
import { createStdioUpstreamClient } from "../src/upstreams/stdio-upstream.ts";
import { createVault, type Vault } from "../src/vault/vault.ts";
import { quantile } from "./lib/load.ts";

const { values } = parseArgs({
  options: { calls: { type: "string", default: "3000" }, starts: { type: "string", default: "10" } },
});
const CALLS = Number(values.calls);
const STARTS = Number(values.starts);
const redisUrl = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379";
const SERVER = fileURLToPath(new URL("../examples/demo-upstream/stdio.ts", import.meta.url));
const LEGACY = "2025-11-25";
const MODERN = "2026-07-28";

function upstream(env: Record<string, string>): StdioUpstreamConfig {
  return {
    transport: "stdio",
    name: "bench-stdio",
    path: "/bench",
    audience: "http://127.0.0.1/bench",
    scopes: [],
    protocolVersions: undefined,
    inject: {},
    command: process.execPath,
    args: [SERVER],
    env,
    stdio: {},
  };
}

function principal(subject: string): Principal {
  return makePrincipal({
    kind: "jwt",
    issuer: "https://bench-issuer.invalid",
    subject,
    tenant: "bench-tenant",
    scopes: [],
    expiresAt: null,
  });
}

async function drain(body: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks).toString("utf8");
}

async function send(
  client: UpstreamClient,
  caller: Principal,
  version: string,
  message: Record<string, unknown>,
  sessionId?: string,
): Promise<{ headers: Record<string, unknown>; text: string }> {
  const request: UpstreamRequest = {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "mcp-protocol-version": version,
      ...(sessionId !== undefined ? { "mcp-session-id": sessionId } : {}),
    },
    body: Buffer.from(JSON.stringify({ jsonrpc: "2.0", ...message })),
    principal: caller,
  };
  const answer = await client.request(request);
  const text = await drain(answer.body);
  if (answer.status !== 200 && answer.status !== 202)
    throw new Error(`bench request answered ${answer.status}`);
  return { headers: answer.headers as Record<string, unknown>, text };
}

async function openSession(client: UpstreamClient, caller: Principal): Promise<string> {
  const { headers } = await send(client, caller, LEGACY, {
    id: 1,
    method: "initialize",
    params: { protocolVersion: LEGACY, capabilities: {}, clientInfo: { name: "bench", version: "1" } },
  });
  const sessionId = headers["mcp-session-id"] as string;
  await send(client, caller, LEGACY, { method: "notifications/initialized" }, sessionId);
  return sessionId;
}

const listNotes = (id: number): Record<string, unknown> => ({
  id,
  method: "tools/call",
  params: {
    name: "list_notes",
    arguments: {},
    _meta: {
      "io.modelcontextprotocol/protocolVersion": MODERN,
      "io.modelcontextprotocol/clientCapabilities": {},
    },
  },
});

const ROUNDS = 5;

/**
 * p50 and p99 in microseconds per path, of `CALLS` sequential calls each, taken in rounds that
 * alternate between the paths: drift on a shared machine (other work, the GC, the CPU's clock) then
 * falls on every path alike rather than on whichever ran last.
 */
async function latencies(
  paths: ReadonlyArray<readonly [string, (i: number) => Promise<unknown>]>,
): Promise<Map<string, { p50: number; p99: number }>> {
  const samples = new Map(paths.map(([name]) => [name, [] as number[]]));
  for (const [, call] of paths) for (let i = 0; i < 200; i++) await call(i);
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, call] of paths) {
      const into = samples.get(name) as number[];
      for (let i = 0; i < CALLS / ROUNDS; i++) {
        const started = performance.now();
        await call(i);
        into.push((performance.now() - started) * 1000);
      }
    }
  }
  const figures = new Map<string, { p50: number; p99: number }>();
  for (const [name, values] of samples) {
    const sorted = Float64Array.from(values).sort();
    figures.set(name, { p50: Math.round(quantile(sorted, 0.5)), p99: Math.round(quantile(sorted, 0.99)) });
  }
  return figures;
}

async function startsMs(start: (i: number) => Promise<unknown>): Promise<number> {
  const measured = new Float64Array(STARTS);
  for (let i = 0; i < STARTS; i++) {
    const started = performance.now();
    await start(i);
    measured[i] = performance.now() - started;
  }
  measured.sort();
  return Math.round(quantile(measured, 0.5));
}

const stores = await Promise.all([openStore("memory:"), openStore(redisUrl)]);
const [memoryVault, redisVault] = stores.map((store) =>
  createVault({ store, keyring: Keyring.ephemeral() }),
) as [Vault, Vault];
const plain = createStdioUpstreamClient(upstream({}), { modern: "per-principal" });
const withMemory = createStdioUpstreamClient(upstream({ TOKEN: "vault:github_token" }), {
  modern: "per-principal",
  vault: memoryVault,
});
const withRedis = createStdioUpstreamClient(upstream({ TOKEN: "vault:github_token" }), {
  modern: "per-principal",
  vault: redisVault,
});
const alice = principal("bench-alice");
const bob = principal(`bench-bob-${randomBytes(4).toString("hex")}`);
try {
  for (const vault of [memoryVault, redisVault]) {
    await vault.put(ownerScope(bob), "github_token", `ghp_${randomBytes(20).toString("hex")}`);
  }
  const session = await openSession(plain, alice);
  const figures = await latencies([
    ["legacy session request", (i) => send(plain, alice, LEGACY, listNotes(i), session)],
    ["modern, principal's process", (i) => send(plain, alice, MODERN, listNotes(i))],
    ["modern + vault read (memory)", (i) => send(withMemory, bob, MODERN, listNotes(i))],
    ["modern + vault read (redis)", (i) => send(withRedis, bob, MODERN, listNotes(i))],
  ]);
  const rows: Record<string, unknown>[] = [...figures].map(([path, { p50, p99 }]) => ({
    path,
    microsecondsP50: p50,
    microsecondsP99: p99,
  }));
  rows.push({
    path: "start: legacy initialize",
    milliseconds: await startsMs((i) => openSession(plain, principal(`bench-start-${i}`))),
  });
  rows.push({
    path: "start: first modern request",
    milliseconds: await startsMs((i) => send(plain, principal(`bench-first-${i}`), MODERN, listNotes(1))),
  });
  console.table(rows);
  const base = figures.get("modern, principal's process")?.p50 ?? Number.NaN;
  const legacy = figures.get("legacy session request")?.p50 ?? Number.NaN;
  console.log(
    `modern over legacy: +${base - legacy} µs p50 (the bridge's own id, the envelope, re-serializing)`,
  );
  for (const name of ["modern + vault read (memory)", "modern + vault read (redis)"]) {
    console.log(`${name}: +${(figures.get(name)?.p50 ?? Number.NaN) - base} µs p50 over the modern path`);
  }
} finally {
  for (const vault of [memoryVault, redisVault]) await vault.deleteAll(ownerScope(bob));
  await Promise.all([plain.close(), withMemory.close(), withRedis.close()]);
  await Promise.all(stores.map((store) => store.close()));
}
