/**
 * Child processes for the benchmarks: each target runs in its own process (so the load generator
 * never shares an event loop with what it measures), announces its address on a line, and is
 * stopped with SIGTERM (then SIGKILL) at the end.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import { createInterface } from "node:readline";

export interface Child {
  readonly process: ChildProcess;
  /** The first capture group of the line that announced readiness. */
  readonly announced: string;
  /** Every line the child printed so far (stdout and stderr), for error reports. */
  output(): string;
  stop(): Promise<void>;
}

/** Every child still running: an interrupted benchmark (Ctrl-C, SIGTERM) stops them before it exits. */
const running = new Set<ChildProcess>();
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    for (const child of running) child.kill("SIGTERM");
    process.exit(130);
  });
}

export async function startChild(
  command: string,
  args: readonly string[],
  options: {
    readonly ready: RegExp;
    readonly env?: NodeJS.ProcessEnv;
    readonly timeoutMs?: number;
    readonly cwd?: string;
  },
): Promise<Child> {
  const child = spawn(command, [...args], {
    env: { ...process.env, ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
    ...(options.cwd ? { cwd: options.cwd } : {}),
  });
  running.add(child);
  child.once("exit", () => running.delete(child));
  const lines: string[] = [];
  const announced = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${command} ${args.join(" ")} did not start:\n${lines.slice(-20).join("\n")}`)),
      options.timeoutMs ?? 30_000,
    );
    const onLine = (line: string) => {
      if (lines.length < 2_000) lines.push(line);
      const match = options.ready.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(match[1] ?? "");
      }
    };
    createInterface({ input: child.stdout! }).on("line", onLine);
    createInterface({ input: child.stderr! }).on("line", onLine);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${command} exited with ${code}:\n${lines.slice(-20).join("\n")}`));
    });
  });
  return {
    process: child,
    announced,
    output: () => lines.join("\n"),
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        const kill = setTimeout(() => child.kill("SIGKILL"), 5_000);
        child.once("exit", () => {
          clearTimeout(kill);
          resolve();
        });
        child.kill("SIGTERM");
      }),
  };
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
