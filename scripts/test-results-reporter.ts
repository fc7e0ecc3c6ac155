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
  file: string;
  outcome: "pass" | "fail" | "skip";
}

export default async function* testResultsReporter(
  source: AsyncIterable<{ type: string; data: TestEventData }>,
): AsyncGenerator<string> {
  const results: Result[] = [];
  for await (const event of source) {
    if (event.type !== "test:pass" && event.type !== "test:fail") continue;
    const { data } = event;
    // Suites report too; only leaf tests are cases.
    if (data.details?.type === "suite") continue;
    const skipped = data.skip !== undefined && data.skip !== false;
    results.push({
      name: data.name,
      file: data.file ?? "",
      outcome: skipped || data.todo ? "skip" : event.type === "test:pass" ? "pass" : "fail",
    });
  }
  yield `${JSON.stringify({ results }, null, 2)}\n`;
}
