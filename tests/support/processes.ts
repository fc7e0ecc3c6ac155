/**
 * Real processes on loopback for end-to-end tests and scripts: the gateway as operators run it
 * (`node src/cli/main.ts serve --config FILE`) and `@modelcontextprotocol/server-everything` over
 * Streamable HTTP. Each helper waits until its process listens, and `close()` stops exactly the
 * process it started (SIGTERM, then SIGKILL after a grace period) and removes its temporary files.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { withTestProfile } from "./test-profile.ts";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLI_PATH = join(REPO_ROOT, "src", "cli", "main.ts");
const SERVER_EVERYTHING_BIN = join(REPO_ROOT, "node_modules", ".bin", "mcp-server-everything");
const LOOPBACK_PRELOAD = fileURLToPath(new URL("./listen-loopback.ts", import.meta.url));

const START_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 5_000;

/** A port that was free a moment ago (listen on 0, read it, close). Callers retry on EADDRINUSE. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * The environment children get: the parent's, minus `TENANTGATE_` variables, which the CLI reads as
 * settings over a config (and refuses when they name none, as `TG_TEST_PROFILE` does).
 */
export function childEnvironment(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith("TENANTGATE_")) env[name] = value;
  }
  return { ...env, ...extra };
}

/**
 * Resolves with the first match of `pattern` on the stream's lines; rejects if the process exits
 * first. A plain `data` listener (not readline, whose close() pauses the stream), so other readers
 * of the stream keep receiving after this one is done.
 */
function waitForLine(
  child: ChildProcess,
  stream: NodeJS.ReadableStream,
  pattern: RegExp,
  describe: () => string,
): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let pending = "";
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out waiting for ${pattern}: ${describe()}`));
    }, START_TIMEOUT_MS);
    const onData = (chunk: Buffer) => {
      const lines = (pending + chunk.toString("utf8")).split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        const match = pattern.exec(line);
        if (match) {
          cleanup();
          resolve(match);
          return;
        }
      }
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      cleanup();
      reject(new Error(`exited (${code ?? signal}) before it listened: ${describe()}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      stream.off("data", onData);
      child.off("exit", onExit);
    };
    stream.on("data", onData);
    child.once("exit", onExit);
  });
}

/** Stops `child` (SIGTERM, then SIGKILL after the grace period) and resolves once it has exited. */
function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/** Keeps everything written to a stream (for tests that scan a process's whole output). */
function everything(stream: NodeJS.ReadableStream): () => string {
  const chunks: Buffer[] = [];
  stream.on("data", (chunk: Buffer) => chunks.push(chunk));
  return () => Buffer.concat(chunks).toString("utf8");
}

/** Keeps the last `limit` characters written to a stream, for error messages. */
function tail(stream: NodeJS.ReadableStream, limit = 4_000): () => string {
  let text = "";
  stream.on("data", (chunk: Buffer) => {
    text = (text + chunk.toString("utf8")).slice(-limit);
  });
  return () => text.trim();
}

export interface GatewayProcess {
  /** `http://127.0.0.1:PORT`, the bound socket (not publicUrl). */
  readonly url: string;
  /** The admin listener's `http://host:port`, unless `admin.enabled` is false. */
  readonly adminUrl: string | undefined;
  readonly pid: number;
  /** Security events the gateway printed on stdout (`audit.stdout: true`), parsed, in order. */
  readonly events: ReadonlyArray<Record<string, unknown>>;
  /** What the gateway wrote on stderr so far (the last few thousand characters). */
  stderr(): string;
  /** Everything the gateway wrote on stdout and stderr so far, byte for byte. */
  output(): { readonly stdout: string; readonly stderr: string };
  close(): Promise<void>;
}

export interface SpawnGatewayOptions {
  /** The config file's content (written as JSON, with `TG_TEST_PROFILE`'s settings for keys it lacks). */
  readonly config: Record<string, unknown>;
  /** Extra environment, e.g. the variable `secrets.masterKey: env:NAME` names. */
  readonly env?: Record<string, string>;
}

/** `node src/cli/main.ts serve --config FILE`, resolved once it prints the address it serves on. */
export async function spawnGateway(options: SpawnGatewayOptions): Promise<GatewayProcess> {
  const dir = await mkdtemp(join(tmpdir(), "tenantgate-e2e-"));
  const configFile = join(dir, "gateway.json");
  const config = withTestProfile(options.config);
  await writeFile(configFile, JSON.stringify(config, null, 2), { mode: 0o600 });
  const child = spawn(process.execPath, [CLI_PATH, "serve", "--config", configFile], {
    cwd: REPO_ROOT,
    env: childEnvironment(options.env ?? {}),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stderr = tail(child.stderr!);
  const allStdout = everything(child.stdout!);
  const allStderr = everything(child.stderr!);
  const output = () => ({ stdout: allStdout(), stderr: allStderr() });
  const events: Array<Record<string, unknown>> = [];
  createInterface({ input: child.stdout! }).on("line", (line) => {
    try {
      events.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // Not an event line; nothing else is expected on stdout.
    }
  });
  const close = async () => {
    await stopChild(child);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    // serve prints the admin listener's address right after its own, when there is one.
    const admin = config["admin"] as { enabled?: unknown } | undefined;
    const adminEnabled = admin?.enabled !== false;
    const [, last = ""] = await waitForLine(
      child,
      child.stderr!,
      adminEnabled ? /^tenantgate: admin API on (http:\/\/\S+)/ : /^tenantgate: serving on (http:\/\/\S+)/,
      () => `gateway stderr: ${stderr()}`,
    );
    const url = /tenantgate: serving on (http:\/\/\S+)/.exec(allStderr())?.[1] ?? "";
    const adminUrl = adminEnabled ? last : undefined;
    return { url, adminUrl, pid: child.pid ?? 0, events, stderr, output, close };
  } catch (error) {
    await close();
    throw error;
  }
}

export interface ServerEverything {
  /** The MCP endpoint, `http://127.0.0.1:PORT/mcp`. */
  readonly url: string;
  readonly pid: number;
  close(): Promise<void>;
}

/**
 * `mcp-server-everything streamableHttp` with PORT set. It listens on every interface by default;
 * the preload narrows its listen() to 127.0.0.1, and it gets a minimal environment (it has a
 * `get-env` tool that returns its environment to any caller).
 */
export async function startServerEverything(attempts = 3): Promise<ServerEverything> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const child = spawn(
      process.execPath,
      ["--import", LOOPBACK_PRELOAD, SERVER_EVERYTHING_BIN, "streamableHttp"],
      {
        cwd: REPO_ROOT,
        env: { PATH: process.env["PATH"] ?? "", PORT: String(port) },
        // stdout carries a line per request: not read, so discarded rather than left to fill a pipe.
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    const stderr = tail(child.stderr!);
    try {
      await waitForLine(
        child,
        child.stderr!,
        /listening on port/i,
        () => `server-everything stderr: ${stderr()}`,
      );
      return { url: `http://127.0.0.1:${port}/mcp`, pid: child.pid ?? 0, close: () => stopChild(child) };
    } catch (error) {
      await stopChild(child);
      // Another process may have taken the port between freePort() and the child's listen().
      if (attempt >= attempts || !/EADDRINUSE|already in use/.test(stderr())) throw error;
    }
  }
}
