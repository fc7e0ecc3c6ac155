/**
 * One store URL of its own per backend (memory, SQLite in a temp folder, Redis under a random prefix,
 * PostgreSQL in a random schema), with the cleanup that removes exactly what a test wrote there.
 * Redis and PostgreSQL skip locally when absent and fail under CI=true (see backends.ts).
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import pg from "pg";
import { type Backend, postgresBackend, redisBackend } from "./backends.ts";

export interface StoreCase {
  readonly name: string;
  readonly skip: string | false;
  /** A store URL of the test's own, and how to remove what the gateway wrote there. */
  open(): Promise<{ url: string; cleanup(): Promise<void> }>;
}

function remoteUrl(backend: Backend, parameter: string, value: string): string {
  const url = new URL(backend.url);
  url.search = "";
  url.searchParams.set(parameter, value);
  return url.toString();
}

export async function storeBackendCases(label: string): Promise<StoreCase[]> {
  const redis = await redisBackend();
  const postgres = await postgresBackend();
  return [
    { name: "memory", skip: false, open: async () => ({ url: "memory:", cleanup: async () => undefined }) },
    {
      name: "sqlite",
      skip: false,
      async open() {
        const dir = await mkdtemp(join(tmpdir(), `tenantgate-${label}-`));
        return {
          url: `sqlite:${join(dir, "store.db")}`,
          cleanup: () => rm(dir, { recursive: true, force: true }),
        };
      },
    },
    {
      name: "redis",
      skip: redis.skip,
      async open() {
        const prefix = `tgtest:${process.pid}:${randomBytes(8).toString("hex")}:`;
        return {
          url: remoteUrl(redis, "prefix", prefix),
          async cleanup() {
            const client = new Redis(redis.url, { maxRetriesPerRequest: 1, connectTimeout: 5_000 });
            try {
              let cursor = "0";
              do {
                const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1_000);
                if (keys.length > 0) await client.unlink(...keys);
                cursor = next;
              } while (cursor !== "0");
            } finally {
              await client.quit();
            }
          },
        };
      },
    },
    {
      name: "postgres",
      skip: postgres.skip,
      async open() {
        const schema = `tgtest_${process.pid}_${randomBytes(6).toString("hex")}`;
        return {
          url: remoteUrl(postgres, "schema", schema),
          async cleanup() {
            const client = new pg.Client({ connectionString: postgres.url, connectionTimeoutMillis: 5_000 });
            await client.connect();
            try {
              await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
            } finally {
              await client.end();
            }
          },
        };
      },
    },
  ];
}
