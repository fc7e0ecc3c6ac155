/**
 * Load for the benchmarks.
 *
 * - Saturation (closed loop): wrk when it is installed (a C generator: it saturates a Node target
 *   without becoming the bottleneck itself), else an in-process closed loop on undici, reported as
 *   such. Every request carries distinct arguments (a per-thread counter), so no cache can answer.
 * - Fixed rate (open loop): requests are sent on a schedule whatever the answers do, and each
 *   latency is measured from its scheduled time, so a stall is charged to every request it delays
 *   (no coordinated omission). The rate actually achieved is reported next to the target rate.
 */
import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Pool } from "undici";

export interface RequestShape {
  /** Absolute URL of the endpoint. */
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
  /** The body for request number `n` (distinct arguments per request). */
  body(n: number): string;
  /** The body's template for wrk's Lua: `%d` where the counter goes (JSON-safe). */
  readonly luaTemplate: string;
}

export interface SaturationResult {
  readonly requestsPerSecond: number;
  readonly errors: number;
  readonly generator: "wrk" | "undici";
}

export function hasWrk(): Promise<boolean> {
  return new Promise((resolve) =>
    execFile("wrk", ["--version"], (error, stdout, stderr) =>
      resolve(/wrk/.test(`${stdout}${stderr}`) || !error),
    ),
  );
}

function luaString(value: string): string {
  return `"${value.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;
}

export async function saturate(
  shape: RequestShape,
  options: {
    readonly seconds: number;
    readonly connections: number;
    readonly threads: number;
    readonly dir: string;
    readonly useWrk: boolean;
  },
): Promise<SaturationResult> {
  if (!options.useWrk) return saturateInProcess(shape, options);
  const script = join(options.dir, `wrk-${Math.random().toString(36).slice(2)}.lua`);
  const headerLines = Object.entries(shape.headers)
    .map(([name, value]) => `wrk.headers[${luaString(name)}] = ${luaString(value)}`)
    .join("\n");
  await writeFile(
    script,
    `wrk.method = "POST"
${headerLines}
local thread_id = 0
local counter = 0
local next_id = 0
function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end
function request()
  counter = counter + 1
  local n = thread_id * 100000000 + counter
  return wrk.format(nil, nil, nil, string.format(${luaString(shape.luaTemplate)}, n, n))
end
`,
  );
  const output = await new Promise<string>((resolve, reject) =>
    execFile(
      "wrk",
      [
        "-t",
        String(options.threads),
        "-c",
        String(options.connections),
        "-d",
        `${options.seconds}s`,
        "-s",
        script,
        shape.url,
      ],
      { maxBuffer: 1 << 20 },
      (error, stdout, stderr) =>
        error ? reject(new Error(`wrk failed: ${stderr || error.message}`)) : resolve(stdout),
    ),
  );
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(output)?.[1] ?? Number.NaN);
  const errors = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(output)?.[1] ?? 0);
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output);
  const socketTotal = socketErrors ? socketErrors.slice(1).reduce((sum, value) => sum + Number(value), 0) : 0;
  return { requestsPerSecond: rps, errors: errors + socketTotal, generator: "wrk" };
}

async function saturateInProcess(
  shape: RequestShape,
  options: { readonly seconds: number; readonly connections: number },
): Promise<SaturationResult> {
  const target = new URL(shape.url);
  const pool = new Pool(target.origin, { connections: options.connections, pipelining: 1 });
  let sent = 0;
  let done = 0;
  let errors = 0;
  const deadline = performance.now() + options.seconds * 1000;
  const worker = async () => {
    while (performance.now() < deadline) {
      const n = ++sent;
      try {
        const answer = await pool.request({
          path: target.pathname,
          method: "POST",
          headers: shape.headers,
          body: shape.body(n),
        });
        await answer.body.dump();
        if (answer.statusCode >= 300) errors++;
        else done++;
      } catch {
        errors++;
      }
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: options.connections }, worker));
  const elapsed = (performance.now() - started) / 1000;
  await pool.close();
  return { requestsPerSecond: done / elapsed, errors, generator: "undici" };
}

export interface FixedRateResult {
  readonly targetRate: number;
  readonly achievedRate: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly errors: number;
}

/** Open loop at `rate` requests per second for `seconds`; latency from each request's scheduled time. */
export async function fixedRate(
  shape: RequestShape,
  options: { readonly rate: number; readonly seconds: number; readonly connections: number },
): Promise<FixedRateResult> {
  const target = new URL(shape.url);
  const pool = new Pool(target.origin, { connections: options.connections, pipelining: 1 });
  const total = Math.max(1, Math.floor(options.rate * options.seconds));
  const interval = 1000 / options.rate;
  const latencies = new Float64Array(total);
  let completed = 0;
  let errors = 0;
  const inFlight: Promise<void>[] = [];
  const start = performance.now() + 20;
  let lastDone = start;
  const send = (i: number) => {
    const scheduled = start + i * interval;
    const n = i + 1;
    inFlight.push(
      pool
        .request({ path: target.pathname, method: "POST", headers: shape.headers, body: shape.body(n) })
        .then(async (answer) => {
          await answer.body.dump();
          if (answer.statusCode >= 300) errors++;
          const now = performance.now();
          latencies[completed++] = now - scheduled;
          if (now > lastDone) lastDone = now;
        })
        .catch(() => {
          errors++;
        }),
    );
  };
  // One timer tick sends every request that has come due since the last: a timer per request would
  // cost the generator more than the requests. A request sent late is charged from its due time.
  let next = 0;
  while (next < total) {
    const due = Math.min(total, Math.floor((performance.now() - start) / interval) + 1);
    while (next < due) send(next++);
    if (next < total) await new Promise((resolve) => setTimeout(resolve, 1));
  }
  await Promise.all(inFlight);
  await pool.close();
  const measured = latencies.subarray(0, completed).sort();
  return {
    targetRate: options.rate,
    achievedRate: completed / ((lastDone - start) / 1000),
    p50Ms: quantile(measured, 0.5),
    p99Ms: quantile(measured, 0.99),
    errors,
  };
}

/** The value at quantile `q` (0..1) of values sorted ascending; NaN when there are none. */
export function quantile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}
