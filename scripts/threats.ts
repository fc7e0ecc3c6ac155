/**
 * `npm run threats`: lists each THREATS.md case that docs/threat-model.md marks in scope with the
 * tests that prove it (test names start with the case id), and fails when an in-scope case has no
 * passing test or any test of a case failed. Reads the JSON written by test-results-reporter.ts.
 */
import { readFile } from "node:fs/promises";
import { relative } from "node:path";

interface Result {
  name: string;
  suites?: string[];
  file: string;
  outcome: "pass" | "fail" | "skip";
}

const resultsPath = process.argv[2] ?? ".test-results.json";
const modelPath = new URL("../docs/threat-model.md", import.meta.url);

const { results } = JSON.parse(await readFile(resultsPath, "utf8")) as { results: Result[] };
const model = await readFile(modelPath, "utf8");

// Table rows: | A1 | threat | in scope | … |  or  | A1 | threat | planned (issue 3) | … |
const cases: { id: string; status: string }[] = [];
for (const line of model.split("\n")) {
  const cells = line.split("|").map((cell) => cell.trim());
  const id = cells[1] ?? "";
  if (/^[A-Z]\d{1,2}$/.test(id)) cases.push({ id, status: cells[3] ?? "" });
}
if (cases.length === 0) {
  console.error("threats: docs/threat-model.md lists no cases");
  process.exit(1);
}

let missing = 0;
for (const { id, status } of cases) {
  const tests = results.filter((r) => r.name === id || r.name.startsWith(`${id} `));
  const passed = tests.filter((r) => r.outcome === "pass");
  const failed = tests.filter((r) => r.outcome === "fail");
  const inScope = status.toLowerCase().startsWith("in scope");
  const mark = !inScope ? "-" : passed.length > 0 && failed.length === 0 ? "✔" : "✖";
  if (inScope && mark === "✖") missing++;
  console.log(`${mark} ${id}  ${inScope ? `${passed.length} passing, ${failed.length} failing` : status}`);
  if (inScope) {
    for (const test of tests) {
      const path = [...(test.suites ?? []), test.name].join(" › ");
      console.log(`    ${test.outcome.padEnd(4)} ${relative(process.cwd(), test.file)}: ${path}`);
    }
  }
}
const inScopeCount = cases.filter((c) => c.status.toLowerCase().startsWith("in scope")).length;
console.log(
  `threats: ${inScopeCount - missing} of ${inScopeCount} in-scope cases proven; ${cases.length - inScopeCount} planned`,
);
process.exit(missing > 0 ? 1 : 0);
