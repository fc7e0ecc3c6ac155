import { z } from "zod";
import { type ConfigIssue, type ConfigPath, describePath } from "./issues.ts";

/**
 * Environment overrides: `TENANTGATE_` + the key path with `__` per level
 * (`TENANTGATE_LISTEN__PORT=9000`, `TENANTGATE_UPSTREAMS__0__URL=…`). Names are matched against the
 * schema's keys ignoring case, numeric segments index lists, and values are read by the type the
 * schema expects there: numbers, `true`/`false`, JSON for a whole list or object, text otherwise.
 * Environment beats file beats default. A whole list or object given as JSON replaces the file's
 * value at that key (it is not merged); longer names are applied after shorter ones, so
 * `TENANTGATE_UPSTREAMS` followed by `TENANTGATE_UPSTREAMS__0__URL` edits the list just set.
 */

export const ENVIRONMENT_PREFIX = "TENANTGATE_";

/** Read by the CLI's admin commands, not settings of `serve`: left alone here. */
const CLI_VARIABLES = new Set(["TENANTGATE_ADMIN_URL", "TENANTGATE_ADMIN_TOKEN"]);

type ValueKind = "string" | "number" | "boolean" | "json";

type SchemaNode =
  | { readonly kind: "object"; readonly keys: ReadonlyMap<string, { key: string; schema: z.ZodType }> }
  | { readonly kind: "array"; readonly element: z.ZodType }
  | { readonly kind: "record"; readonly value: z.ZodType }
  | { readonly kind: "leaf"; readonly value: Exclude<ValueKind, "json"> }
  | { readonly kind: "unknown" };

/** What the schema expects at a node, looking through optional, default and transform wrappers. */
function describeSchema(schema: z.ZodType): SchemaNode {
  let current: z.ZodType = schema;
  for (;;) {
    if (
      current instanceof z.ZodOptional ||
      current instanceof z.ZodDefault ||
      current instanceof z.ZodPrefault ||
      current instanceof z.ZodNullable ||
      current instanceof z.ZodReadonly
    ) {
      current = current.unwrap() as z.ZodType;
    } else if (current instanceof z.ZodPipe) {
      current = current.in as z.ZodType;
    } else {
      break;
    }
  }
  if (current instanceof z.ZodObject) {
    const keys = new Map<string, { key: string; schema: z.ZodType }>();
    for (const [key, child] of Object.entries(current.shape as Record<string, z.ZodType>)) {
      keys.set(key.toLowerCase(), { key, schema: child });
    }
    return { kind: "object", keys };
  }
  if (current instanceof z.ZodArray) return { kind: "array", element: current.element as z.ZodType };
  if (current instanceof z.ZodRecord) return { kind: "record", value: current.valueType as z.ZodType };
  if (current instanceof z.ZodNumber) return { kind: "leaf", value: "number" };
  if (current instanceof z.ZodBoolean) return { kind: "leaf", value: "boolean" };
  if (current instanceof z.ZodString || current instanceof z.ZodEnum)
    return { kind: "leaf", value: "string" };
  return { kind: "unknown" };
}

interface Target {
  readonly variable: string;
  readonly path: ConfigPath;
  readonly kind: ValueKind;
  readonly text: string;
}

/** Where a variable's name points in the schema, or undefined when it names no setting. */
function locate(schema: z.ZodType, variable: string, text: string): Target | undefined {
  const segments = variable.slice(ENVIRONMENT_PREFIX.length).split("__");
  const path: (string | number)[] = [];
  let node = describeSchema(schema);
  for (const segment of segments) {
    if (node.kind === "object") {
      const entry = node.keys.get(segment.toLowerCase());
      if (!entry) return undefined;
      path.push(entry.key);
      node = describeSchema(entry.schema);
    } else if (node.kind === "array") {
      if (!/^(?:0|[1-9]\d{0,3})$/.test(segment)) return undefined;
      path.push(Number(segment));
      node = describeSchema(node.element);
    } else if (node.kind === "record") {
      // Record keys (an upstream's environment variables, injected header names) keep their case.
      if (segment === "") return undefined;
      path.push(segment);
      node = describeSchema(node.value);
    } else {
      return undefined;
    }
  }
  if (node.kind === "unknown") return undefined;
  return { variable, path, kind: node.kind === "leaf" ? node.value : "json", text };
}

function coerce(target: Target): { value: unknown } | { problem: string } {
  switch (target.kind) {
    case "string":
      return { value: target.text };
    case "number":
      return /^-?\d{1,15}(?:\.\d{1,15})?$/.test(target.text)
        ? { value: Number(target.text) }
        : { problem: "must be a number" };
    case "boolean": {
      const lower = target.text.toLowerCase();
      return lower === "true" || lower === "false"
        ? { value: lower === "true" }
        : { problem: "must be true or false" };
    }
    case "json":
      try {
        return { value: JSON.parse(target.text) };
      } catch {
        // The parser's message quotes the text, which may be a secret: only say it is not JSON.
        return { problem: "must be JSON (a whole list or object)" };
      }
  }
}

function isContainer(value: unknown): value is Record<string | number, unknown> {
  return typeof value === "object" && value !== null;
}

function define(container: Record<string | number, unknown>, key: string | number, value: unknown): void {
  Object.defineProperty(container, key, { value, writable: true, enumerable: true, configurable: true });
}

/**
 * A copy of lists and objects, so the caller's input is never changed. Other values are kept as they
 * are and left to the schema to refuse (structuredClone would throw a non-GateError on a function).
 */
function copyData(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(copyData);
  if (!isContainer(value)) return value;
  const copy: Record<string, unknown> = {};
  for (const key of Object.keys(value)) define(copy, key, copyData(value[key]));
  return copy;
}

/** Writes `value` at `path` inside `root`, creating objects and lists on the way. */
function setAt(root: Record<string, unknown>, path: ConfigPath, value: unknown): string | undefined {
  let container: Record<string | number, unknown> = root;
  for (const [index, segment] of path.entries()) {
    const last = index === path.length - 1;
    if (typeof segment === "number") {
      if (!Array.isArray(container))
        return `cannot apply: ${describePath(path.slice(0, index))} is not a list`;
      if (segment > container.length) {
        return `cannot apply: index ${segment} leaves a gap in ${describePath(path.slice(0, index))}`;
      }
    } else if (Array.isArray(container)) {
      return `cannot apply: ${describePath(path.slice(0, index))} is a list`;
    }
    if (last) {
      define(container, segment, value);
      return undefined;
    }
    let next = Object.hasOwn(container, segment) ? container[segment] : undefined;
    if (next === undefined) {
      next = typeof path[index + 1] === "number" ? [] : {};
      define(container, segment, next);
    }
    if (!isContainer(next)) {
      return `cannot apply: ${describePath(path.slice(0, index + 1))} is not an object or list`;
    }
    container = next;
  }
  return undefined;
}

/** Segment by segment, a parent before its children, list entries in index order. */
function comparePaths(a: ConfigPath, b: ConfigPath): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const [x, y] = [a[i], b[i]];
    if (x === y) continue;
    if (typeof x === "number" && typeof y === "number") return x - y;
    return String(x) < String(y) ? -1 : 1;
  }
  return a.length - b.length;
}

export interface EnvironmentSource {
  readonly path: ConfigPath;
  readonly variable: string;
}

export interface EnvironmentOverlay {
  /** The file's settings with the environment's applied (the input is not modified). */
  readonly merged: unknown;
  readonly issues: readonly ConfigIssue[];
  /** Which settings came from which variable. */
  readonly sources: readonly EnvironmentSource[];
  /**
   * `TENANTGATE_*` variables that name no setting. Refused by the caller, except those a secret
   * reference reads (`env:TENANTGATE_MASTER_KEY`), which only the merged config can tell.
   */
  readonly unmatched: readonly string[];
}

export function applyEnvironment(
  raw: unknown,
  env: Readonly<Record<string, string | undefined>>,
  schema: z.ZodType,
): EnvironmentOverlay {
  const issues: ConfigIssue[] = [];
  const unmatched: string[] = [];
  const targets: Target[] = [];
  for (const [variable, text] of Object.entries(env)) {
    if (text === undefined || !variable.toUpperCase().startsWith(ENVIRONMENT_PREFIX)) continue;
    if (CLI_VARIABLES.has(variable.toUpperCase())) continue;
    const target = locate(schema, variable, text);
    if (target) targets.push(target);
    else unmatched.push(variable);
  }
  targets.sort((a, b) => comparePaths(a.path, b.path) || (a.variable < b.variable ? -1 : 1));

  const merged: unknown = raw === undefined ? {} : copyData(raw);
  const sources: EnvironmentSource[] = [];
  for (const [index, target] of targets.entries()) {
    const previous = targets[index - 1];
    if (previous && comparePaths(previous.path, target.path) === 0) {
      issues.push({
        subject: `environment variable ${target.variable}`,
        problem: `sets the same setting as ${previous.variable}`,
      });
      continue;
    }
    const subject = `${describePath(target.path)} (from environment variable ${target.variable})`;
    const coerced = coerce(target);
    if ("problem" in coerced) {
      issues.push({ subject, problem: coerced.problem });
      continue;
    }
    if (!isContainer(merged) || Array.isArray(merged)) continue;
    const problem = setAt(merged as Record<string, unknown>, target.path, coerced.value);
    if (problem) issues.push({ subject: `environment variable ${target.variable}`, problem });
    else sources.push({ path: target.path, variable: target.variable });
  }
  return { merged, issues, sources, unmatched };
}

/** The variable that set `path` or one of its parents, if any. */
export function environmentSourceOf(
  sources: readonly EnvironmentSource[],
  path: ConfigPath,
): string | undefined {
  let best: EnvironmentSource | undefined;
  for (const source of sources) {
    const isPrefix =
      source.path.length <= path.length && source.path.every((segment, i) => segment === path[i]);
    if (isPrefix && (!best || source.path.length > best.path.length)) best = source;
  }
  return best?.variable;
}
