/**
 * Claim and get throughput per store backend, side by side.
 *
 * Each round runs every backend in turn (A B C D, A B C D, …) so drift on a shared machine hits
 * them alike; the figure is the median over rounds. Each operation uses a fresh id, so nothing is
 * answered from a cache. Concurrency is the number of operations in flight from one process.
 *
 *   ./run npm run bench:store -- [--ops N] [--rounds N] [--concurrency N]
 *
 * Redis and PostgreSQL come from REDIS_URL / DATABASE_URL (defaults: the machine's own); a backend
 * that does not answer is reported as skipped. Each run uses its own prefix / schema / temp file
 * and removes it afterwards.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import pg from "pg";
import type { Store } from "../src/store/contract.ts";
import { ownershipKey } from "../src/store/keys.ts";
import { openStore } from "../src/store/open-store.ts";

const { values } = parseArgs({
  options: {
    ops: { type: "string", default: "20000" },
    rounds: { type: "string", default: "5" },
    concurrency: { type: "string", default: "64" },
  },
});
const OPS = Number(values.ops);
const ROUNDS = Number(values.rounds);
const CONCURRENCY = Number(values.concurrency);
const redisUrl = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379";
const databaseUrl = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/test";
const tag = `${process.pid}_${randomBytes(4).toString("hex")}`;

interface Backend {
  name: string;
  store: Store;
  cleanup(): Promise<void>;
}

async function openBackends(): Promise<Backend[]> {
  const backends: Backend[] = [];
  backends.push({
    name: "memory",
    store: await openStore("memory:?maxEntries=100000000"),
    cleanup: async () => {},
  });
  const dir = await mkdtemp(join(tmpdir(), "tenantgate-bench-"));
  backends.push({
    name: "sqlite",
    store: await openStore(`sqlite:${join(dir, "bench.db")}`),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  });
  const prefix = `tgtest:${process.pid}:${randomBytes(4).toString("hex")}:`;
  try {
    backends.push({
      name: "redis",
      store: await openStore(`${redisUrl}?prefix=${prefix}`),
      async cleanup() {
        const redis = new Redis(redisUrl);
        let cursor = "0";
        do {
          const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 5000);
          cursor = next;
          if (keys.length > 0) await redis.unlink(...keys);
        } while (cursor !== "0");
        redis.disconnect();
      },
    });
  } catch {
    console.log("redis: skipped (did not answer)");
  }
  const schema = `tgtest_${tag}`;
  try {
    backends.push({
      name: "postgres",
      store: await openStore(`${databaseUrl}?schema=${schema}&poolSize=8`),
      async cleanup() {
        const client = new pg.Client({ connectionString: databaseUrl });
        await client.connect();
        await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
        await client.end();
      },
    });
  } catch {
    console.log("postgres: skipped (did not answer)");
  }
  return backends;
}

/** Runs `operation(i)` for i in [0, OPS) with CONCURRENCY in flight; returns ops per second. */
async function measure(operation: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < OPS) await operation(next++);
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return OPS / seconds;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

const backends = await openBackends();
const claims = new Map<string, number[]>();
const gets = new Map<string, number[]>();
try {
  for (let round = 0; round < ROUNDS; round++) {
    for (const { name, store } of backends) {
      const ids = Array.from(
        { length: OPS },
        (_, i) => `${tag}-${round}-${i}-${randomBytes(8).toString("hex")}`,
      );
      const claimRate = await measure((i) =>
        store.claim(ownershipKey("bench", ids[i]!), "owner", { ttlMs: 600_000 }),
      );
      const getRate = await measure((i) => store.get(ownershipKey("bench", ids[i]!)));
      claims.set(name, [...(claims.get(name) ?? []), claimRate]);
      gets.set(name, [...(gets.get(name) ?? []), getRate]);
    }
  }
} finally {
  for (const backend of backends) {
    await backend.store.close();
    await backend.cleanup();
  }
}

const memoryClaim = median(claims.get("memory") ?? [1]);
console.log(
  `\nstore throughput: ${OPS} ops per measurement, ${CONCURRENCY} in flight, median of ${ROUNDS} interleaved rounds, node ${process.version}\n`,
);
console.log("| backend | claim ops/s | get ops/s | claim vs memory |");
console.log("| --- | ---: | ---: | ---: |");
for (const { name } of backends) {
  const claim = median(claims.get(name)!);
  const get = median(gets.get(name)!);
  console.log(
    `| ${name} | ${Math.round(claim).toLocaleString("en")} | ${Math.round(get).toLocaleString("en")} | ${(claim / memoryClaim).toFixed(3)}x |`,
  );
}
