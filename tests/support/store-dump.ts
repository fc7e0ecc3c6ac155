/**
 * THREATS C3 helpers: everything a store holds under one test's namespace, read with the backend's
 * own client rather than through tenantgate (as someone holding a copy of the storage would), and
 * the encodings in which a secret could hide in such a dump.
 *
 * - SQLite: the bytes of the database file and of its -wal and -shm files.
 * - Redis: every key under the URL's prefix, with its value (strings; sorted sets with scores; sets,
 *   hashes and lists, should anything ever write one).
 * - PostgreSQL: every row of every table in the URL's schema, bytea columns as their raw bytes.
 * - memory: nothing outside the process, so `dumpStore` answers null; `recordingStore` keeps every
 *   string the store was handed instead (keys, values, members), a superset of what it holds.
 */
import { readdir, readFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { Redis } from "ioredis";
import pg from "pg";
import type { Store } from "../../src/store/contract.ts";

function withoutQuery(url: URL): string {
  const copy = new URL(url);
  copy.search = "";
  return copy.toString();
}

async function dumpSqlite(path: string): Promise<Buffer> {
  const dir = dirname(path);
  const files = (await readdir(dir)).filter((name) => name.startsWith(basename(path)));
  return Buffer.concat(await Promise.all(files.map((name) => readFile(join(dir, name)))));
}

async function dumpRedis(url: URL): Promise<Buffer> {
  const prefix = url.searchParams.get("prefix");
  if (!prefix) throw new Error("a Redis store URL for a dump must name its prefix");
  const client = new Redis(withoutQuery(url), { maxRetriesPerRequest: 1, connectTimeout: 5_000 });
  const parts: Buffer[] = [];
  try {
    let cursor = "0";
    do {
      // The test prefixes hold only [A-Za-z0-9:_.-], none of which is special in a MATCH pattern.
      const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1_000);
      for (const key of keys) {
        parts.push(Buffer.from(key));
        const type = await client.type(key);
        if (type === "string") parts.push((await client.getBuffer(key)) ?? Buffer.alloc(0));
        else if (type === "zset")
          parts.push(...((await client.zrangeBuffer(key, "0", "-1", "WITHSCORES")) as Buffer[]));
        else if (type === "set") parts.push(...(await client.smembersBuffer(key)));
        else if (type === "hash") parts.push(...Object.values(await client.hgetallBuffer(key)));
        else if (type === "list") parts.push(...((await client.lrangeBuffer(key, 0, -1)) as Buffer[]));
        else if (type !== "none") throw new Error(`the dump cannot read a Redis ${type}`);
      }
      cursor = next;
    } while (cursor !== "0");
  } finally {
    await client.quit();
  }
  return Buffer.concat(parts.flatMap((part) => [part, Buffer.from("\n")]));
}

async function dumpPostgres(url: URL): Promise<Buffer> {
  const schema = url.searchParams.get("schema");
  if (!schema) throw new Error("a PostgreSQL store URL for a dump must name its schema");
  const client = new pg.Client({ connectionString: withoutQuery(url), connectionTimeoutMillis: 5_000 });
  await client.connect();
  const parts: Buffer[] = [];
  try {
    const tables = await client.query<{ table_name: string }>(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
      [schema],
    );
    for (const { table_name: table } of tables.rows) {
      const quoted = `"${schema.replaceAll('"', '""')}"."${table.replaceAll('"', '""')}"`;
      const { rows } = await client.query<Record<string, unknown>>(`SELECT * FROM ${quoted}`);
      for (const row of rows) {
        for (const value of Object.values(row)) {
          parts.push(Buffer.isBuffer(value) ? value : Buffer.from(String(value)));
        }
      }
    }
  } finally {
    await client.end();
  }
  return Buffer.concat(parts.flatMap((part) => [part, Buffer.from("\n")]));
}

/** The raw content of the store at `url` (as the test's store cases build them); null for memory. */
export async function dumpStore(url: string): Promise<Buffer | null> {
  if (url.startsWith("memory:")) return null;
  if (url.startsWith("sqlite:")) return dumpSqlite(url.slice("sqlite:".length).split("?")[0] ?? "");
  const parsed = new URL(url);
  if (parsed.protocol === "redis:" || parsed.protocol === "rediss:") return dumpRedis(parsed);
  if (parsed.protocol === "postgres:" || parsed.protocol === "postgresql:") return dumpPostgres(parsed);
  throw new Error(`no dump for store URL scheme ${parsed.protocol}`);
}

/**
 * A store that keeps every string it is handed (encoded keys, values, members), for backends with
 * nothing to read from outside the process.
 */
export function recordingStore(inner: Store): { store: Store; recorded(): Buffer } {
  const seen: string[] = [];
  const note = (arg: unknown): void => {
    if (typeof arg === "string") seen.push(arg);
    else if (Array.isArray(arg)) arg.forEach(note);
    else if (typeof arg === "object" && arg !== null && "encoded" in arg) seen.push(String(arg.encoded));
  };
  const store = new Proxy(inner, {
    get(target, property) {
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        args.forEach(note);
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { store, recorded: () => Buffer.from(seen.join("\n")) };
}

/**
 * The forms in which `secret` could appear in a dump: as UTF-8 and UTF-16, hex in both cases, and
 * base64 / base64url at each of the three alignments it could have inside a longer encoded text
 * (only the characters that depend on the secret's bytes alone are kept).
 */
export function secretEncodings(secret: string): { label: string; bytes: Buffer }[] {
  const raw = Buffer.from(secret, "utf8");
  const forms: { label: string; bytes: Buffer }[] = [
    { label: "plain", bytes: raw },
    { label: "plain tail", bytes: Buffer.from(secret.slice(-16)) },
    { label: "utf-16le", bytes: Buffer.from(secret, "utf16le") },
    { label: "hex", bytes: Buffer.from(raw.toString("hex")) },
    { label: "HEX", bytes: Buffer.from(raw.toString("hex").toUpperCase()) },
    { label: "percent-encoded", bytes: Buffer.from(encodeURIComponent(secret)) },
  ];
  for (let offset = 0; offset < 3; offset++) {
    const encoded = Buffer.concat([Buffer.alloc(offset), raw]).toString("base64");
    // Group g (4 characters) encodes input bytes 3g..3g+2: keep the groups made of secret bytes only.
    const first = Math.ceil(offset / 3);
    const last = Math.floor((offset + raw.length) / 3) - 1;
    const stable = encoded.slice(4 * first, 4 * (last + 1));
    forms.push({ label: `base64 (offset ${offset})`, bytes: Buffer.from(stable) });
    forms.push({
      label: `base64url (offset ${offset})`,
      bytes: Buffer.from(stable.replaceAll("+", "-").replaceAll("/", "_")),
    });
  }
  return forms;
}
