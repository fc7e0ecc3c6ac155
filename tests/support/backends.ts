import { connect } from "node:net";

/**
 * Where the real Redis and PostgreSQL are, and whether tests of them run.
 *
 * REDIS_URL / DATABASE_URL pick the servers (defaults: the machine's own on loopback). A server that
 * does not answer makes its tests skip with the reason printed, except under CI=true, where an
 * absent backend is a failure: CI must prove every backend, never skip one.
 */
export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379";
export const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test";

export interface Backend {
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** A reason to skip, or false when the backend answered. */
  readonly skip: string | false;
}

function reachable(host: string, port: number, timeoutMs = 1_500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

async function locate(variable: string, fallback: string, defaultPort: number): Promise<Backend> {
  const url = process.env[variable] || fallback;
  const parsed = new URL(url);
  const host = parsed.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1";
  const port = Number(parsed.port || defaultPort);
  if (await reachable(host, port)) return { url, host, port, skip: false };
  const reason = `${variable} backend at ${host}:${port} did not answer`;
  if (process.env["CI"] === "true") {
    throw new Error(`${reason}; under CI=true every backend must run`);
  }
  console.log(`# skipping: ${reason} (set ${variable} or start the service)`);
  return { url, host, port, skip: reason };
}

export function redisBackend(): Promise<Backend> {
  return locate("REDIS_URL", DEFAULT_REDIS_URL, 6379);
}

export function postgresBackend(): Promise<Backend> {
  return locate("DATABASE_URL", DEFAULT_DATABASE_URL, 5432);
}
