/**
 * Removes test state left behind by test processes that died before cleaning up: PostgreSQL schemas
 * named `tgtest_<pid>_<hex>` and Redis keys under `tgtest:<pid>:<hex>:`, when that pid is no longer
 * alive on this machine. State of live processes (a parallel checkout's run) is left alone.
 */
import { Redis } from "ioredis";
import pg from "pg";

const databaseUrl = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/test";
const redisUrl = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function sweepPostgres(): Promise<number> {
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    const { rows } = await client.query<{ nspname: string }>(
      "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tgtest\\_%'",
    );
    let dropped = 0;
    for (const { nspname } of rows) {
      const pid = Number(/^tgtest_(\d+)_[0-9a-f]+$/.exec(nspname)?.[1]);
      if (!pid || alive(pid)) continue;
      await client.query(`DROP SCHEMA IF EXISTS "${nspname}" CASCADE`);
      dropped++;
    }
    return dropped;
  } finally {
    await client.end();
  }
}

async function sweepRedis(): Promise<number> {
  const redis = new Redis(redisUrl, { lazyConnect: true, connectTimeout: 5_000, maxRetriesPerRequest: 1 });
  await redis.connect();
  try {
    let removed = 0;
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", "tgtest:*", "COUNT", 1000);
      cursor = next;
      const dead = keys.filter((key) => {
        const pid = Number(/^tgtest:(\d+):/.exec(key)?.[1]);
        return pid > 0 && !alive(pid);
      });
      if (dead.length > 0) removed += await redis.unlink(...dead);
    } while (cursor !== "0");
    return removed;
  } finally {
    redis.disconnect();
  }
}

for (const [name, sweep] of [
  ["postgres schemas", sweepPostgres],
  ["redis keys", sweepRedis],
] as const) {
  try {
    console.log(`swept ${await sweep()} stale ${name}`);
  } catch (error) {
    // The test phase reports an absent backend; the sweep only tidies.
    console.log(`could not sweep ${name}: ${(error as Error).message}`);
  }
}
