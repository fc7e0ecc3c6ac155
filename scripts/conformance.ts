/**
 * `node scripts/conformance.ts`: runs the MCP conformance suite (`@modelcontextprotocol/conformance`,
 * `conformance server --suite all`) against `@modelcontextprotocol/server-everything` directly and
 * through a tenantgate `serve` process in anonymous mode in front of it, prints a table of both, and
 * writes docs/conformance.md. tests/e2e/conformance.test.ts runs the same comparison and asserts on
 * it (it writes nothing).
 *
 * A scenario passes when it has at least one SUCCESS check and no FAILURE or WARNING (the suite's
 * own baseline rule counts a WARNING as a failure); "warn" is no FAILURE but a WARNING or no SUCCESS.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnGateway, startServerEverything } from "../tests/support/processes.ts";

const REPO_ROOT = fileURLToPath(new URL("../", import.meta.url));
const CONFORMANCE_BIN = join(REPO_ROOT, "node_modules", ".bin", "conformance");
const RUN_TIMEOUT_MS = 120_000;

export type Verdict = "pass" | "warn" | "fail" | "missing";

export interface ScenarioOutcome {
  readonly verdict: Verdict;
  readonly successes: number;
  readonly failures: number;
  readonly warnings: number;
  /** `check-id: message` of every FAILURE and WARNING check. */
  readonly problems: readonly string[];
}

export interface ConformanceRow {
  readonly scenario: string;
  readonly direct: ScenarioOutcome;
  readonly gateway: ScenarioOutcome;
}

export interface ConformanceComparison {
  readonly rows: readonly ConformanceRow[];
  readonly versions: { readonly conformance: string; readonly serverEverything: string };
  readonly durationMs: number;
  /** Security events the gateway printed during the run (its audit stdout). */
  readonly gatewayEvents: ReadonlyArray<Record<string, unknown>>;
}

/**
 * Scenarios that pass direct and not through the gateway because of a deliberate gateway rule, with
 * the rule. tests/e2e/conformance.test.ts checks each still fails for exactly this reason (and fails
 * when one starts passing, so the list cannot go stale).
 */
export const KNOWN_DIVERGENCES: Readonly<Record<string, string>> = {
  "server-sse-multiple-streams":
    "The scenario initializes with 2025-11-25, then sends its three concurrent POSTs with " +
    "`MCP-Protocol-Version: 2025-03-26`. DESIGN (Legacy sessions) locks a session to the version it " +
    "negotiated and answers any other version header with 400 (`protocol-version-mismatch`), so the " +
    "upstream only ever sees the version it negotiated (2025-03-26 would change the rules the gateway " +
    "polices, e.g. batches). server-everything accepts any supported version header mid-session.",
};

/** Why other verdicts differ (none of these is a scenario that passes direct and not through the gateway). */
export const DIFFERENCE_NOTES: Readonly<Record<string, string>> = {
  "server-sse-polling":
    "Fails direct because server-everything has no `test_reconnection` tool. Through the gateway the " +
    "same mid-session `MCP-Protocol-Version: 2025-03-26` POST as in `server-sse-multiple-streams` is " +
    "refused with 400 first, which the suite reports as a WARNING (tool not implemented).",
  "dns-rebinding-protection":
    "server-everything runs without the SDK's DNS-rebinding protection and answers `Host: " +
    "evil.example.com` with 200; the gateway's Host and Origin allowlists (DESIGN invariant 8) answer " +
    "403 and accept the loopback Host and Origin it is bound to.",
};

const MISSING: ScenarioOutcome = { verdict: "missing", successes: 0, failures: 0, warnings: 0, problems: [] };

interface Check {
  readonly id?: string;
  readonly status?: string;
  readonly errorMessage?: string;
}

function outcomeOf(checks: readonly Check[]): ScenarioOutcome {
  const count = (status: string) => checks.filter((check) => check.status === status).length;
  const successes = count("SUCCESS");
  const failures = count("FAILURE");
  const warnings = count("WARNING");
  const verdict: Verdict = failures > 0 ? "fail" : warnings > 0 || successes === 0 ? "warn" : "pass";
  const problems = checks
    .filter((check) => check.status === "FAILURE" || check.status === "WARNING")
    .map((check) => `${check.id ?? "?"}: ${check.errorMessage ?? check.status}`);
  return { verdict, successes, failures, warnings, problems };
}

/** `server-<scenario>-<ISO timestamp with - for :>` -> `<scenario>` */
function scenarioOfDirectory(name: string): string {
  return name.replace(/^server-/, "").replace(/-\d{4}-\d{2}-\d{2}T[\d-]+Z$/, "");
}

/** The scenario names the suite ran, from its SUMMARY lines (`✓ name: 1 passed, 0 failed`). */
function summaryScenarios(stdout: string): string[] {
  const summary = stdout.slice(stdout.lastIndexOf("=== SUMMARY ==="));
  return [...summary.matchAll(/^[✓✗] (\S+): \d+ passed, \d+ failed$/gmu)].map((match) => match[1] ?? "");
}

/** Runs `conformance server --suite all` against `url`; outcome per scenario. */
export async function runConformance(url: string): Promise<Map<string, ScenarioOutcome>> {
  const outputDir = await mkdtemp(join(tmpdir(), "tenantgate-conformance-"));
  try {
    const stdout = await new Promise<string>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        [CONFORMANCE_BIN, "server", "--url", url, "--suite", "all", "-o", outputDir],
        { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] },
      );
      let out = "";
      let err = "";
      child.stdout.on("data", (chunk: Buffer) => {
        out += chunk.toString("utf8");
      });
      child.stderr.on("data", (chunk: Buffer) => {
        err = (err + chunk.toString("utf8")).slice(-4_000);
      });
      const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
      child.once("error", reject);
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        // Exit 1 only says some scenario failed; no SUMMARY means the run itself broke.
        if (out.includes("=== SUMMARY ===")) resolve(out);
        else reject(new Error(`conformance exited (${code ?? signal}) without a summary: ${err.trim()}`));
      });
    });
    const outcomes = new Map<string, ScenarioOutcome>();
    for (const scenario of summaryScenarios(stdout)) {
      // A scenario that threw before saving checks is a failure in the suite's summary too.
      outcomes.set(scenario, { ...MISSING, verdict: "fail", failures: 1, problems: ["no checks saved"] });
    }
    for (const entry of await readdir(outputDir, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      const checks = JSON.parse(
        await readFile(join(outputDir, entry.name, "checks.json"), "utf8"),
      ) as Check[];
      outcomes.set(scenarioOfDirectory(entry.name), outcomeOf(checks));
    }
    return outcomes;
  } finally {
    await rm(outputDir, { recursive: true, force: true });
  }
}

async function packageVersion(name: string): Promise<string> {
  const file = join(REPO_ROOT, "node_modules", ...name.split("/"), "package.json");
  return ((JSON.parse(await readFile(file, "utf8")) as { version?: string }).version ?? "?").trim();
}

/** Starts server-everything and an anonymous gateway in front of it, runs the suite against both. */
export async function compareConformance(): Promise<ConformanceComparison> {
  const started = Date.now();
  const everything = await startServerEverything();
  try {
    const gateway = await spawnGateway({
      config: {
        listen: { host: "127.0.0.1", port: 0 },
        store: "memory:",
        secrets: { masterKey: "env:TG_CONFORMANCE_MASTER_KEY" },
        auth: { anonymous: true },
        upstreams: [{ name: "everything", path: "/mcp", url: everything.url }],
        audit: { stdout: true },
        admin: { listen: { port: 0 } },
        // The suite runs every scenario from one address as fast as it can; what it measures is the
        // protocol, not the per-principal rate limit (tested in tests/e2e/limits.test.ts).
        limits: { rate: { enabled: false } },
      },
      env: { TG_CONFORMANCE_MASTER_KEY: randomBytes(32).toString("base64url") },
    });
    try {
      const direct = await runConformance(everything.url);
      const throughGateway = await runConformance(`${gateway.url}/mcp`);
      const scenarios = [...new Set([...direct.keys(), ...throughGateway.keys()])];
      return {
        rows: scenarios.map((scenario) => ({
          scenario,
          direct: direct.get(scenario) ?? MISSING,
          gateway: throughGateway.get(scenario) ?? MISSING,
        })),
        versions: {
          conformance: await packageVersion("@modelcontextprotocol/conformance"),
          serverEverything: await packageVersion("@modelcontextprotocol/server-everything"),
        },
        durationMs: Date.now() - started,
        gatewayEvents: [...gateway.events],
      };
    } finally {
      await gateway.close();
    }
  } finally {
    await everything.close();
  }
}

function cell(outcome: ScenarioOutcome): string {
  if (outcome.verdict === "missing") return "not run";
  return `${outcome.verdict} (${outcome.successes}/${outcome.failures}/${outcome.warnings})`;
}

export function renderTable(comparison: ConformanceComparison): string {
  const header = ["scenario", "direct", "through gateway"];
  const body = comparison.rows.map((row) => [row.scenario, cell(row.direct), cell(row.gateway)]);
  const widths = header.map((title, column) =>
    Math.max(title.length, ...body.map((cells) => (cells[column] ?? "").length)),
  );
  const line = (cells: readonly string[]) =>
    cells.map((text, column) => text.padEnd(widths[column] ?? 0)).join("  ");
  return [line(header), line(widths.map((width) => "-".repeat(width))), ...body.map(line)].join("\n");
}

export function renderMarkdown(comparison: ConformanceComparison): string {
  const { rows, versions } = comparison;
  const count = (side: "direct" | "gateway") => rows.filter((row) => row[side].verdict === "pass").length;
  const lines = [
    "# MCP conformance: server-everything direct and through tenantgate",
    "",
    "Generated by `node scripts/conformance.ts` (do not edit by hand); `tests/e2e/conformance.test.ts`",
    "runs the same comparison and asserts that every scenario passing direct passes through the",
    "gateway (apart from the known divergences below) and that `dns-rebinding-protection` passes",
    "through the gateway.",
    "",
    `- Suite: \`@modelcontextprotocol/conformance\` ${versions.conformance}, \`conformance server --suite all\``,
    `- Server: \`@modelcontextprotocol/server-everything\` ${versions.serverEverything}, \`streamableHttp\`, endpoint \`/mcp\``,
    "- Gateway: `tenantgate serve`, `auth.anonymous: true` on 127.0.0.1, `memory:` store, one upstream at `/mcp`",
    "",
    "server-everything is not the suite's reference server: it has none of the `test_*` tools,",
    "prompts and resources many scenarios call, so those fail direct and through the gateway alike.",
    "A cell reads `verdict (SUCCESS/FAILURE/WARNING checks)`; a scenario passes with at least one",
    "SUCCESS and no FAILURE or WARNING.",
    "",
    `Passing: ${count("direct")} of ${rows.length} direct, ${count("gateway")} of ${rows.length} through the gateway.`,
    "",
    "| Scenario | Direct | Through gateway |",
    "| --- | --- | --- |",
    ...rows.map((row) => `| \`${row.scenario}\` | ${cell(row.direct)} | ${cell(row.gateway)} |`),
    "",
    "## Differences",
    "",
  ];
  const differing = rows.filter((row) => row.direct.verdict !== row.gateway.verdict);
  if (differing.length === 0) lines.push("None: every scenario has the same verdict both ways.");
  for (const row of differing) {
    lines.push(
      `### \`${row.scenario}\`: ${row.direct.verdict} direct, ${row.gateway.verdict} through the gateway`,
      "",
    );
    const reason = KNOWN_DIVERGENCES[row.scenario] ?? DIFFERENCE_NOTES[row.scenario];
    if (reason) lines.push(reason, "");
    for (const [side, outcome] of [
      ["direct", row.direct],
      ["through the gateway", row.gateway],
    ] as const) {
      for (const problem of outcome.problems) lines.push(`- ${side}: ${problem.replaceAll("|", "\\|")}`);
    }
    lines.push("");
  }
  return `${lines.join("\n").trimEnd()}\n`;
}

if (import.meta.main) {
  const comparison = await compareConformance();
  console.log(renderTable(comparison));
  const docPath = join(REPO_ROOT, "docs", "conformance.md");
  await writeFile(docPath, renderMarkdown(comparison));
  console.log(`\nwrote docs/conformance.md (${(comparison.durationMs / 1000).toFixed(1)} s)`);
}
