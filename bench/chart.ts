/**
 * Draws bench/results/latest.json as an SVG bar chart (bench/results/latest.svg): throughput at
 * saturation per path, one group per era, the bare proxy's figure as a dashed reference line and each
 * bar labelled with its ratio to it. Run by `npm run bench` at the end; on its own:
 *
 *   node bench/chart.ts [results.json] [out.svg]
 */
import { readFile, writeFile } from "node:fs/promises";

interface Row {
  readonly era: string;
  readonly path: string;
  readonly requestsPerSecond: number;
  readonly ratioToBareProxy: number;
}

const WIDTH = 900;
const BAR = 26;
const GAP = 6;
const LEFT = 190;
const RIGHT = 140;
const GROUP_GAP = 40;

function escapeXml(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

export function renderChart(result: {
  when: string;
  rows: readonly Row[];
  machine?: Record<string, unknown>;
}): string {
  const eras = [...new Set(result.rows.map((row) => row.era))];
  const max = Math.max(1, ...result.rows.map((row) => row.requestsPerSecond));
  const scale = (WIDTH - LEFT - RIGHT) / max;
  const parts: string[] = [];
  let y = 60;
  for (const era of eras) {
    const rows = result.rows.filter((row) => row.era === era);
    parts.push(`<text x="10" y="${y - 12}" font-weight="bold">${escapeXml(era)} requests</text>`);
    const top = y;
    for (const row of rows) {
      const width = Math.max(1, row.requestsPerSecond * scale);
      const colour = row.path.startsWith("tenantgate")
        ? "#2f6db5"
        : row.path === "bare-proxy"
          ? "#888"
          : "#bbb";
      parts.push(
        `<text x="${LEFT - 8}" y="${y + BAR * 0.68}" text-anchor="end">${escapeXml(row.path)}</text>`,
      );
      parts.push(`<rect x="${LEFT}" y="${y}" width="${width.toFixed(1)}" height="${BAR}" fill="${colour}"/>`);
      parts.push(
        `<text x="${(LEFT + width + 6).toFixed(1)}" y="${y + BAR * 0.68}">${row.requestsPerSecond.toLocaleString("en-US")} (${row.ratioToBareProxy}×)</text>`,
      );
      y += BAR + GAP;
    }
    const bare = rows.find((row) => row.path === "bare-proxy");
    if (bare) {
      const x = LEFT + bare.requestsPerSecond * scale;
      parts.push(
        `<line x1="${x.toFixed(1)}" y1="${top - 4}" x2="${x.toFixed(1)}" y2="${y - GAP + 4}" stroke="#444" stroke-dasharray="4 3"/>`,
      );
    }
    y += GROUP_GAP;
  }
  const height = y + 20;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="24" font-size="16" font-weight="bold">tenantgate overhead: requests per second at saturation (× the bare Node proxy)</text>
<text x="10" y="${height - 8}" font-size="11" fill="#555">${escapeXml(result.when)} · ${escapeXml(String(result.machine?.["cpus"] ?? "?"))} cores · ${escapeXml(String(result.machine?.["node"] ?? ""))} · npm run bench</text>
${parts.join("\n")}
</svg>
`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const input = process.argv[2] ?? new URL("results/latest.json", import.meta.url).pathname;
  const output = process.argv[3] ?? new URL("results/latest.svg", import.meta.url).pathname;
  const result = JSON.parse(await readFile(input, "utf8")) as Parameters<typeof renderChart>[0];
  await writeFile(output, renderChart(result));
  process.stdout.write(`wrote ${output}\n`);
}
