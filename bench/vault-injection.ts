/**
 * What vault injection costs per request, measured where it happens: `vault.reveal` (one getMany
 * round trip and one AES-256-GCM open per entry) and rendering the header, in-process, on the memory
 * store and on Redis. The saturation figures of `npm run bench` (routes with and without `inject`)
 * include it too, but on two shared cores their round-to-round spread is larger than this cost.
 *
 *   ./run npm run bench:vault -- [--calls N]
 */
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { Keyring } from "../src/crypto/keyring.ts";
import { openStore } from "../src/store/open-store.ts";
import { planInjection, renderInjection } from "../src/vault/injection.ts";
import { createVault } from "../src/vault/vault.ts";
import { quantile } from "./lib/load.ts";

const { values } = parseArgs({ options: { calls: { type: "string", default: "20000" } } });
const CALLS = Number(values.calls);
const redisUrl = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379";

const owner = { tenant: "bench-tenant", issuer: "https://bench-issuer.invalid", subject: "bench-user" };
const plan = planInjection({ Authorization: "Bearer {vault:github_token}" });

async function measure(name: string, url: string): Promise<Record<string, unknown>> {
  const store = await openStore(url);
  try {
    const vault = createVault({ store, keyring: Keyring.ephemeral() });
    await vault.put(owner, "github_token", `ghp_${randomBytes(20).toString("hex")}`);
    // Warm-up: JIT, connections.
    for (let i = 0; i < 500; i++) renderInjection(plan, (await vault.reveal(owner, plan.entries)).values);
    const latencies = new Float64Array(CALLS);
    for (let i = 0; i < CALLS; i++) {
      const started = performance.now();
      const { values: revealed, missing } = await vault.reveal(owner, plan.entries);
      if (missing.length > 0) throw new Error("the benchmark entry went missing");
      renderInjection(plan, revealed);
      latencies[i] = (performance.now() - started) * 1000;
    }
    latencies.sort();
    // Many requests at once, as a busy gateway makes them: calls per second, not latency.
    const concurrent = 64;
    const started = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrent }, async () => {
        while (next++ < CALLS) renderInjection(plan, (await vault.reveal(owner, plan.entries)).values);
      }),
    );
    const perSecond = Math.round(CALLS / ((performance.now() - started) / 1000));
    // Nothing of the benchmark stays in a shared store.
    await vault.deleteAll(owner);
    return {
      store: name,
      sequentialMicrosecondsP50: Math.round(quantile(latencies, 0.5)),
      sequentialMicrosecondsP99: Math.round(quantile(latencies, 0.99)),
      concurrentRevealsPerSecond: perSecond,
    };
  } finally {
    await store.close();
  }
}

const results = [await measure("memory", "memory:")];
try {
  const url = new URL(redisUrl);
  url.searchParams.set("prefix", `tgbench-vault:${process.pid}:`);
  results.push(await measure("redis", url.toString()));
} catch (error) {
  results.push({ store: "redis", skipped: `Redis at ${redisUrl} did not answer (${String(error)})` });
}
process.stdout.write(
  `${JSON.stringify({ when: new Date().toISOString(), node: process.version, calls: CALLS, results }, null, 2)}\n`,
);
