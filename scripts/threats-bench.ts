/**
 * `npm run threats:bench`: the THREATS tests against the configuration `npm run bench` measures.
 * Runs the test files `test:node` runs, only the tests whose names start with a THREATS case id (a
 * suite runs as far as it encloses one), with `TG_TEST_PROFILE=bench`, so every gateway the
 * tests start gets the benchmark's settings for each top-level key the test does not set itself
 * (tests/support/test-profile.ts, bench/bench-profile.ts). Results go to .test-results-bench.json,
 * then `scripts/threats.ts` checks every in-scope case is proven. Fails if either step fails.
 */
import { spawnSync } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const RESULTS = ".test-results-bench.json";
const RESULTS_PATH = join(ROOT, RESULTS);
// The names scripts/threats.ts maps to cases: a case id (letter, one or two digits), then a space or
// nothing. node matches a test's own name (and a suite's), so tests inside other suites are found.
const CASE_NAME = "^[A-Z][0-9]{1,2}( |$)";

// A results file from an earlier run must not stand in for this one's.
await rm(RESULTS_PATH, { force: true });

const tests = spawnSync(
  process.execPath,
  [
    "--test",
    "--test-timeout=180000",
    `--test-name-pattern=${CASE_NAME}`,
    "--test-reporter=spec",
    "--test-reporter-destination=stdout",
    "--test-reporter=./scripts/test-results-reporter.ts",
    `--test-reporter-destination=${RESULTS}`,
    "tests/**/*.test.ts",
  ],
  { cwd: ROOT, stdio: "inherit", env: { ...process.env, TG_TEST_PROFILE: "bench" } },
);
if (tests.error) throw tests.error;
const testsFailed = tests.status !== 0;

let named = 0;
let others = 0;
let filesWithout = 0;
try {
  const { results } = JSON.parse(await readFile(RESULTS_PATH, "utf8")) as {
    results: Array<{ name: string; suites?: string[]; file: string; outcome: string }>;
  };
  for (const result of results) {
    if (result.outcome === "skip") continue;
    if (new RegExp(CASE_NAME).test(result.name)) named++;
    // node reports a test file in which no test matched as one passing entry named by its path.
    else if ((result.suites ?? []).length === 0 && result.file.endsWith(result.name)) filesWithout++;
    else others++;
  }
} catch (error) {
  console.error(`threats:bench: no readable ${RESULTS} (${(error as Error).message})`);
  process.exit(1);
}
console.log(
  `threats:bench: ${named} THREATS tests ran with TG_TEST_PROFILE=bench` +
    `${others > 0 ? `, and ${others} other tests inside suites named by a case` : ""}` +
    `; ${filesWithout} test files have none`,
);

const threats = spawnSync(process.execPath, ["scripts/threats.ts", RESULTS], { cwd: ROOT, stdio: "inherit" });
if (threats.error) throw threats.error;
if (testsFailed) console.error(`threats:bench: the test run failed (exit ${tests.status ?? tests.signal})`);
process.exit(testsFailed || threats.status !== 0 ? 1 : 0);
