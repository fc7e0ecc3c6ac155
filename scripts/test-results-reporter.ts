/**
 * A node:test reporter that writes one JSON document listing every test that ran (name, file,
 * outcome), for `npm run threats` to map THREATS.md cases to passing tests.
 */
interface TestEventData {
  name: string;
  nesting: number;
  file?: string;
  skip?: boolean | string;
  todo?: boolean | string;
  details?: { type?: string };
}

interface Result {
  name: string;
  /** Enclosing suites, outermost first (e.g. "store conformance: redis"). */
  suites: string[];
  file: string;
  outcome: "pass" | "fail" | "skip";
}

export default async function* testResultsReporter(
  source: AsyncIterable<{ type: string; data: TestEventData }>,
): AsyncGenerator<string> {
  const results: Result[] = [];
  // Names of the tests and suites currently open, by nesting level, per file: events of one file
  // arrive in order, but files running in parallel may interleave.
  const openByFile = new Map<string, string[]>();
  for await (const event of source) {
    const file = event.data?.file ?? "";
    const open = openByFile.get(file) ?? [];
    openByFile.set(file, open);
    if (event.type === "test:start") {
      open[event.data.nesting] = event.data.name;
      open.length = event.data.nesting + 1;
      continue;
    }
    if (event.type !== "test:pass" && event.type !== "test:fail") continue;
    const { data } = event;
    // Suites report too; only leaf tests are cases.
    if (data.details?.type === "suite") continue;
    const skipped = data.skip !== undefined && data.skip !== false;
    results.push({
      name: data.name,
      suites: open.slice(0, data.nesting),
      file: data.file ?? "",
      outcome: skipped || data.todo ? "skip" : event.type === "test:pass" ? "pass" : "fail",
    });
  }
  yield `${JSON.stringify({ results }, null, 2)}\n`;
}
