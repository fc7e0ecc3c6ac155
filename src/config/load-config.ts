import { dirname, resolve } from "node:path";
import { applyEnvironment, environmentSourceOf } from "./environment.ts";
import type { GatewayConfig } from "./gateway-config.ts";
import { type ConfigIssue, type ConfigPath, configError, describePath, fromZodIssue } from "./issues.ts";
import { readConfigFile } from "./read-config-file.ts";
import { resolveConfig } from "./resolve-config.ts";
import { gatewayConfigSchema } from "./schema.ts";
import { referencedEnvironmentVariable } from "./value-checks.ts";

/**
 * Loading: file (or an object), then the environment on top, then the schema, then the defaults
 * and rules that span sections. Every problem found on the way is reported in one
 * ERR_CONFIG_INVALID error, one sorted line each.
 */

export interface LoadConfigOptions {
  /** JSON or YAML, by extension; relative to `cwd`. Without it, settings come from env and defaults. */
  readonly file?: string;
  /** Default: process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Default: process.cwd(). */
  readonly cwd?: string;
}

export interface ParseConfigOptions {
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly cwd?: string;
  /** Folder that relative paths in `input` are resolved against. Default: `cwd`. */
  readonly configDir?: string;
}

export async function loadConfig(options: LoadConfigOptions = {}): Promise<GatewayConfig> {
  const cwd = options.cwd ?? process.cwd();
  if (options.file === undefined) return parseConfig({}, { env: options.env ?? process.env, cwd });
  const file = resolve(cwd, options.file);
  const input = await readConfigFile(file);
  return parseConfig(input, { env: options.env ?? process.env, cwd, configDir: dirname(file) });
}

/** The same as loadConfig for settings already in memory (the demo's embedded config, tests). */
export function parseConfig(input: unknown, options: ParseConfigOptions = {}): GatewayConfig {
  const cwd = options.cwd ?? process.cwd();
  const env = options.env ?? process.env;
  const issues: ConfigIssue[] = [];

  const overlay = applyEnvironment(input, env, gatewayConfigSchema);
  issues.push(...overlay.issues);
  const subjectFor = (path: ConfigPath): string => {
    const variable = environmentSourceOf(overlay.sources, path);
    return describePath(path) + (variable ? ` (from environment variable ${variable})` : "");
  };
  // After the overlay, so that JSON from a variable is checked as well as the file.
  const prototypeKeys: ConfigPath[] = [];
  const merged = withoutPrototypeKeys(overlay.merged, [], prototypeKeys);
  for (const path of prototypeKeys)
    issues.push({ subject: subjectFor(path), problem: "is not an allowed key name" });

  const referenced = new Set(secretReferences(merged).map(referencedEnvironmentVariable));
  for (const variable of overlay.unmatched) {
    if (!referenced.has(variable)) {
      issues.push({
        subject: `environment variable ${variable}`,
        problem: "names no setting (levels are joined by __)",
      });
    }
  }

  const parsed = gatewayConfigSchema.safeParse(merged, { reportInput: true });
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      for (const { path, problem } of fromZodIssue(issue))
        issues.push({ subject: subjectFor(path), problem });
    }
  }
  if (issues.length > 0 || !parsed.success) throw configError(issues);

  const resolved = resolveConfig(parsed.data, {
    configDir: options.configDir ?? cwd,
    cwd,
    sources: overlay.sources,
  });
  if ("issues" in resolved) throw configError(resolved.issues);
  return resolved.config;
}

/** The `env:` and `file:` references under `secrets`, read from unvalidated input. */
function secretReferences(input: unknown): string[] {
  const secrets = (input as { secrets?: unknown } | null)?.secrets;
  if (typeof secrets !== "object" || secrets === null) return [];
  const { masterKey, masterKeys, tagKey } = secrets as Record<string, unknown>;
  const keys = Array.isArray(masterKeys)
    ? masterKeys.map((entry) => (entry as { key?: unknown } | null)?.key)
    : [];
  return [masterKey, tagKey, ...keys].filter((value): value is string => typeof value === "string");
}

/**
 * A copy of parsed data without `__proto__` keys. JSON.parse and the YAML parser keep such a key
 * as an ordinary property, but copying it with plain assignment would replace the copy's prototype,
 * and zod's record parsing drops it silently: it is refused so that nothing is ignored unseen.
 */
function withoutPrototypeKeys(value: unknown, path: ConfigPath, found: ConfigPath[]): unknown {
  if (Array.isArray(value))
    return value.map((item, index) => withoutPrototypeKeys(item, [...path, index], found));
  if (typeof value !== "object" || value === null) return value;
  const copy: Record<string, unknown> = {};
  for (const key of Object.keys(value)) {
    if (key === "__proto__") {
      found.push([...path, key]);
      continue;
    }
    Object.defineProperty(copy, key, {
      value: withoutPrototypeKeys((value as Record<string, unknown>)[key], [...path, key], found),
      writable: true,
      enumerable: true,
      configurable: true,
    });
  }
  return copy;
}
