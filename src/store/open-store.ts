import { isAbsolute, resolve } from "node:path";
import { GateError } from "../errors.ts";
import type { Store } from "./contract.ts";
import { MemoryStore } from "./memory-store.ts";

/**
 * Picks a backend from a store URL (the `store` config key):
 *
 *   memory:[?maxEntries=N]
 *   sqlite:PATH[?busyTimeoutMs=N]          PATH relative to `baseDir` (the config file's folder)
 *   redis://[user:pass@]host:port[/db]?prefix=P[&timeoutMs=N]   (also rediss://)
 *   postgres://user@host:port/db?schema=S[&timeoutMs=N][&poolSize=N][&sslmode=M]   (also postgresql://)
 *
 * Drivers are loaded only for the backend asked for, so importing tenantgate loads none of them.
 * Errors name the setting, never the URL: it may carry a password.
 */

export interface OpenStoreOptions {
  /** Folder a relative SQLite path is resolved against. Default: the working directory. */
  readonly baseDir?: string;
}

const REDIS_PREFIX = /^[A-Za-z0-9:_.-]{1,64}$/;
const PG_SCHEMA = /^[a-z_][a-z0-9_]{0,62}$/;

function invalidUrl(why: string): GateError {
  return new GateError("ERR_STORE_URL_INVALID", `store: ${why}`);
}

function positiveInteger(params: URLSearchParams, name: string): number | undefined {
  const raw = params.get(name);
  if (raw === null) return undefined;
  if (!/^[1-9][0-9]{0,8}$/.test(raw)) throw invalidUrl(`parameter ${name} must be a positive integer`);
  return Number(raw);
}

function rejectUnknownParams(params: URLSearchParams, allowed: readonly string[]): void {
  for (const name of params.keys()) {
    if (!allowed.includes(name)) throw invalidUrl(`unknown parameter "${name.slice(0, 40)}"`);
  }
}

function parseUrl(url: string): URL {
  try {
    return new URL(url);
  } catch {
    throw invalidUrl("is not a valid URL (memory:, sqlite:PATH, redis://…, postgres://…)");
  }
}

/** What a store URL names, once checked: the backend and the settings its adapter is opened with. */
export type StoreLocation =
  | { readonly backend: "memory"; readonly maxEntries?: number }
  | { readonly backend: "sqlite"; readonly path: string; readonly busyTimeoutMs?: number }
  | {
      readonly backend: "redis";
      /** Without tenantgate's own parameters; may carry a password: never log it. */
      readonly url: string;
      readonly prefix: string;
      readonly timeoutMs?: number;
    }
  | {
      readonly backend: "postgres";
      /** Only `sslmode` is left as a parameter; may carry a password: never log it. */
      readonly url: string;
      readonly schema: string;
      readonly timeoutMs?: number;
      readonly poolSize?: number;
    };

/**
 * Parses a store URL into what it names, refusing what `openStore` refuses, without opening
 * anything. Whatever else connects to the same store (the revocation bus) reads the URL here, so it
 * reaches exactly the store `openStore` opened.
 */
export function parseStoreLocation(url: string, options: OpenStoreOptions = {}): StoreLocation {
  if (url === "memory:" || url.startsWith("memory:?")) {
    const params = new URLSearchParams(url.slice("memory:".length));
    rejectUnknownParams(params, ["maxEntries"]);
    const maxEntries = positiveInteger(params, "maxEntries");
    return maxEntries === undefined ? { backend: "memory" } : { backend: "memory", maxEntries };
  }
  if (url.startsWith("sqlite:")) {
    // Split at the first "?" only: anything after it is the query, refused if malformed.
    const rest = url.slice("sqlite:".length);
    const mark = rest.indexOf("?");
    const rawPath = mark === -1 ? rest : rest.slice(0, mark);
    const query = mark === -1 ? "" : rest.slice(mark + 1);
    if (!rawPath) throw invalidUrl("sqlite: needs a file path");
    const params = new URLSearchParams(query);
    rejectUnknownParams(params, ["busyTimeoutMs"]);
    const path = isAbsolute(rawPath) ? rawPath : resolve(options.baseDir ?? process.cwd(), rawPath);
    const busyTimeoutMs = positiveInteger(params, "busyTimeoutMs");
    return busyTimeoutMs === undefined
      ? { backend: "sqlite", path }
      : { backend: "sqlite", path, busyTimeoutMs };
  }
  const parsed = parseUrl(url);
  if (parsed.protocol === "redis:" || parsed.protocol === "rediss:") {
    rejectUnknownParams(parsed.searchParams, ["prefix", "timeoutMs"]);
    const prefix = parsed.searchParams.get("prefix") ?? "tenantgate:";
    if (!REDIS_PREFIX.test(prefix))
      throw invalidUrl("parameter prefix must be 1-64 characters of [A-Za-z0-9:_.-]");
    const timeoutMs = positiveInteger(parsed.searchParams, "timeoutMs");
    parsed.search = "";
    return {
      backend: "redis",
      url: parsed.toString(),
      prefix,
      ...(timeoutMs === undefined ? {} : { timeoutMs }),
    };
  }
  if (parsed.protocol === "postgres:" || parsed.protocol === "postgresql:") {
    rejectUnknownParams(parsed.searchParams, ["schema", "timeoutMs", "poolSize", "sslmode"]);
    const sslmode = parsed.searchParams.get("sslmode");
    if (sslmode !== null && !/^(disable|require|verify-ca|verify-full)$/.test(sslmode)) {
      throw invalidUrl("parameter sslmode must be disable, require, verify-ca or verify-full");
    }
    const schema = parsed.searchParams.get("schema") ?? "tenantgate";
    if (!PG_SCHEMA.test(schema)) throw invalidUrl("parameter schema must match [a-z_][a-z0-9_]{0,62}");
    const timeoutMs = positiveInteger(parsed.searchParams, "timeoutMs");
    const poolSize = positiveInteger(parsed.searchParams, "poolSize");
    // Only sslmode goes on to the driver; tenantgate's own parameters are removed.
    parsed.search = sslmode === null ? "" : `?sslmode=${sslmode}`;
    return {
      backend: "postgres",
      url: parsed.toString(),
      schema,
      ...(timeoutMs === undefined ? {} : { timeoutMs }),
      ...(poolSize === undefined ? {} : { poolSize }),
    };
  }
  throw invalidUrl("must start with memory:, sqlite:, redis://, rediss://, postgres:// or postgresql://");
}

export async function openStore(url: string, options: OpenStoreOptions = {}): Promise<Store> {
  const location = parseStoreLocation(url, options);
  switch (location.backend) {
    case "memory":
      return new MemoryStore(location.maxEntries === undefined ? {} : { maxEntries: location.maxEntries });
    case "sqlite": {
      const { openSqliteStore } = await import("./sqlite-store.ts");
      const { path, busyTimeoutMs } = location;
      return openSqliteStore(busyTimeoutMs === undefined ? { path } : { path, busyTimeoutMs });
    }
    case "redis": {
      const { openRedisStore } = await import("./redis-store.ts");
      const { url: redisUrl, prefix, timeoutMs } = location;
      return openRedisStore({ url: redisUrl, prefix, ...(timeoutMs === undefined ? {} : { timeoutMs }) });
    }
    case "postgres": {
      const { openPostgresStore } = await import("./postgres-store.ts");
      const { url: pgUrl, schema, timeoutMs, poolSize } = location;
      return openPostgresStore({
        url: pgUrl,
        schema,
        ...(timeoutMs === undefined ? {} : { timeoutMs }),
        ...(poolSize === undefined ? {} : { poolSize }),
      });
    }
  }
}
