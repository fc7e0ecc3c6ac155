import { invalidArgument } from "../errors.ts";

/**
 * A small Prometheus registry (text exposition format 0.0.4): counters, gauges and histograms with
 * labels, rendered on scrape. Label values must come from bounded sets the gateway controls
 * (upstream names from the config, status codes, reasons from closed lists): an identifier, a path
 * or anything a client chose is never a label, so neither cardinality nor privacy depends on input.
 */

export type Labels = Readonly<Record<string, string>>;

export interface Counter {
  inc(labels?: Labels, by?: number): void;
}

export interface Histogram {
  /** Records one observation, in seconds. */
  observe(labels: Labels, seconds: number): void;
}

export interface MetricsRegistry {
  counter(name: string, help: string, labelNames?: readonly string[]): Counter;
  /** A value read at scrape time, one sample per label set `collect` returns. */
  gauge(name: string, help: string, collect: () => Iterable<readonly [Labels, number]>): void;
  /** Counts kept elsewhere (monotonic), read at scrape time. */
  counterFrom(name: string, help: string, collect: () => Iterable<readonly [Labels, number]>): void;
  histogram(name: string, help: string, labelNames: readonly string[], buckets: readonly number[]): Histogram;
  /** The exposition text. A collector that throws is skipped; the rest still render. */
  render(): string;
}

/** Seconds; from a loopback call well under a millisecond to a slow upstream. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

interface Family {
  readonly name: string;
  readonly help: string;
  readonly type: "counter" | "gauge" | "histogram";
  samples(): string[];
}

export function createMetricsRegistry(): MetricsRegistry {
  const families = new Map<string, Family>();

  function register(family: Family): void {
    if (!METRIC_NAME.test(family.name)) {
      throw invalidArgument("name", "must be a Prometheus metric name");
    }
    if (families.has(family.name)) {
      throw invalidArgument("name", "must not be registered twice");
    }
    families.set(family.name, family);
  }

  function checkLabels(labelNames: readonly string[]): void {
    for (const label of labelNames) {
      if (!LABEL_NAME.test(label) || label === "le") {
        throw invalidArgument("labelNames", "must be Prometheus label names other than le");
      }
    }
  }

  function collected(name: string, collect: () => Iterable<readonly [Labels, number]>): () => string[] {
    return () => {
      const lines: string[] = [];
      for (const [labels, value] of collect()) lines.push(`${name}${labelText(labels)} ${numberText(value)}`);
      return lines;
    };
  }

  return {
    counter(name, help, labelNames = []) {
      checkLabels(labelNames);
      const values = new Map<string, number>();
      register({
        name,
        help,
        type: "counter",
        samples: () => [...values].map(([labels, value]) => `${name}${labels} ${numberText(value)}`),
      });
      return {
        inc(labels = {}, by = 1) {
          if (!(by >= 0)) return; // a counter never goes down
          const key = labelText(pick(labels, labelNames));
          values.set(key, (values.get(key) ?? 0) + by);
        },
      };
    },

    gauge(name, help, collect) {
      register({ name, help, type: "gauge", samples: collected(name, collect) });
    },

    counterFrom(name, help, collect) {
      register({ name, help, type: "counter", samples: collected(name, collect) });
    },

    histogram(name, help, labelNames, buckets) {
      checkLabels(labelNames);
      const bounds = [...buckets].sort((a, b) => a - b);
      const series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
      register({
        name,
        help,
        type: "histogram",
        samples: () => {
          const lines: string[] = [];
          for (const { labels, counts, sum, count } of series.values()) {
            let cumulative = 0;
            for (const [index, bound] of bounds.entries()) {
              cumulative += counts[index] ?? 0;
              lines.push(`${name}_bucket${labelText({ ...labels, le: numberText(bound) })} ${cumulative}`);
            }
            lines.push(`${name}_bucket${labelText({ ...labels, le: "+Inf" })} ${count}`);
            lines.push(`${name}_sum${labelText(labels)} ${numberText(sum)}`);
            lines.push(`${name}_count${labelText(labels)} ${count}`);
          }
          return lines;
        },
      });
      return {
        observe(labels, seconds) {
          if (!Number.isFinite(seconds) || seconds < 0) return;
          const picked = pick(labels, labelNames);
          const key = labelText(picked);
          let entry = series.get(key);
          if (entry === undefined) {
            entry = { labels: picked, counts: new Array<number>(bounds.length).fill(0), sum: 0, count: 0 };
            series.set(key, entry);
          }
          const index = bounds.findIndex((bound) => seconds <= bound);
          if (index >= 0) entry.counts[index] = (entry.counts[index] ?? 0) + 1;
          entry.sum += seconds;
          entry.count += 1;
        },
      };
    },

    render() {
      const out: string[] = [];
      for (const family of families.values()) {
        let samples: string[];
        try {
          samples = family.samples();
        } catch {
          continue;
        }
        out.push(`# HELP ${family.name} ${escapeHelp(family.help)}`);
        out.push(`# TYPE ${family.name} ${family.type}`);
        out.push(...samples);
      }
      return `${out.join("\n")}\n`;
    },
  };
}

/** Only the declared labels, each present (an absent one is the empty string). */
function pick(labels: Labels, names: readonly string[]): Labels {
  const picked: Record<string, string> = {};
  for (const name of names) picked[name] = labels[name] ?? "";
  return picked;
}

function labelText(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return "";
  return `{${entries.map(([name, value]) => `${name}="${escapeLabelValue(value)}"`).join(",")}}`;
}

// Exposition format: in label values, backslash, double quote and line feed are escaped.
function escapeLabelValue(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

function escapeHelp(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll("\n", "\\n");
}

function numberText(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Number.POSITIVE_INFINITY) return "+Inf";
  if (value === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(value);
}
