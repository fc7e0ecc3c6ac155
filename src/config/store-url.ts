import { isAbsolute, resolve } from "node:path";

/**
 * Checks a `store` URL against the forms `openStore` accepts (src/store/open-store.ts), without
 * opening anything: a config check must not connect to a database or create a file.
 * tests/config/store-url.test.ts runs both on the same table, so the two cannot drift apart
 * silently. Problems name the parameter, never the URL (it may carry a password).
 */

const POSITIVE_INTEGER = /^[1-9][0-9]{0,8}$/;
const REDIS_PREFIX = /^[A-Za-z0-9:_.-]{1,64}$/;
const PG_SCHEMA = /^[a-z_][a-z0-9_]{0,62}$/;
const SSLMODES = ["disable", "require", "verify-ca", "verify-full"];

function parameterProblem(
  params: URLSearchParams,
  allowed: readonly string[],
  integers: readonly string[],
): string | undefined {
  for (const name of params.keys()) {
    if (!allowed.includes(name)) return "has an unknown parameter";
  }
  for (const name of integers) {
    const value = params.get(name);
    if (value !== null && !POSITIVE_INTEGER.test(value))
      return `parameter ${name} must be a positive integer`;
  }
  return undefined;
}

/** Why `url` is not a store URL openStore accepts, or undefined when it is. */
export function storeUrlProblem(url: string): string | undefined {
  if (url === "memory:" || url.startsWith("memory:?")) {
    return parameterProblem(new URLSearchParams(url.slice("memory:".length)), ["maxEntries"], ["maxEntries"]);
  }
  if (url.startsWith("sqlite:")) {
    const rest = url.slice("sqlite:".length);
    const queryAt = rest.indexOf("?");
    const path = queryAt === -1 ? rest : rest.slice(0, queryAt);
    if (path === "" || path.includes("\u0000")) return "must name a file after sqlite:";
    // Everything after the first "?" is parameters: a second "?" is an unknown parameter here.
    const params = new URLSearchParams(queryAt === -1 ? "" : rest.slice(queryAt + 1));
    return parameterProblem(params, ["busyTimeoutMs"], ["busyTimeoutMs"]);
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return "must be memory:, sqlite:PATH, redis://… or postgres://…";
  }
  const params = parsed.searchParams;
  if (parsed.protocol === "redis:" || parsed.protocol === "rediss:") {
    const problem = parameterProblem(params, ["prefix", "timeoutMs"], ["timeoutMs"]);
    if (problem) return problem;
    const prefix = params.get("prefix");
    if (prefix !== null && !REDIS_PREFIX.test(prefix)) {
      return "parameter prefix must be 1-64 characters of [A-Za-z0-9:_.-]";
    }
    return undefined;
  }
  if (parsed.protocol === "postgres:" || parsed.protocol === "postgresql:") {
    const problem = parameterProblem(
      params,
      ["schema", "timeoutMs", "poolSize", "sslmode"],
      ["timeoutMs", "poolSize"],
    );
    if (problem) return problem;
    const sslmode = params.get("sslmode");
    if (sslmode !== null && !SSLMODES.includes(sslmode)) {
      return "parameter sslmode must be disable, require, verify-ca or verify-full";
    }
    const schema = params.get("schema");
    if (schema !== null && !PG_SCHEMA.test(schema))
      return "parameter schema must match [a-z_][a-z0-9_]{0,62}";
    return undefined;
  }
  return "must start with memory:, sqlite:, redis://, rediss://, postgres:// or postgresql://";
}

/** The same store URL with a relative SQLite path made absolute against `baseDir`. */
export function resolveStoreUrl(url: string, baseDir: string): string {
  if (!url.startsWith("sqlite:")) return url;
  const rest = url.slice("sqlite:".length);
  const queryAt = rest.indexOf("?");
  const path = queryAt === -1 ? rest : rest.slice(0, queryAt);
  const query = queryAt === -1 ? "" : rest.slice(queryAt);
  return `sqlite:${isAbsolute(path) ? path : resolve(baseDir, path)}${query}`;
}

/** `memory:` keeps nothing beyond one process. */
export function isProcessLocalStore(url: string): boolean {
  return url === "memory:" || url.startsWith("memory:?");
}
