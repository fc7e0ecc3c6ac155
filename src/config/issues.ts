import type { z } from "zod";
import { GateError } from "../errors.ts";

/**
 * Config problems, collected and reported together: one line each, sorted, in one
 * ERR_CONFIG_INVALID error. A line names the setting (`upstreams[1].path`) and what it must be,
 * and never quotes the value: values may be tokens, header templates or URLs with passwords.
 */

export type ConfigPath = readonly (string | number)[];

export interface ConfigIssue {
  /** What the line is about: a setting's path, or an environment variable. */
  readonly subject: string;
  readonly problem: string;
}

const MAX_LINES = 100;

/** `upstreams[1].inject["X-Api-Key"]`. Key names are shown (they are names, not values), bounded. */
export function describePath(path: ConfigPath): string {
  let text = "";
  for (const segment of path) {
    if (typeof segment === "number") text += `[${segment}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]{0,63}$/.test(segment)) text += text === "" ? segment : `.${segment}`;
    else text += `[${JSON.stringify(segment.length > 64 ? `${segment.slice(0, 64)}…` : segment)}]`;
  }
  return text === "" ? "the configuration" : text;
}

export function issueAt(path: ConfigPath, problem: string): ConfigIssue {
  return { subject: describePath(path), problem };
}

const TYPE_NAMES: Readonly<Record<string, string>> = {
  string: "must be a string",
  number: "must be a number",
  boolean: "must be true or false",
  array: "must be a list",
  object: "must be an object",
  record: "must be an object",
};

/**
 * Our wording for a zod issue. zod's own messages are not used: they are not written for operators,
 * and wording built from the issue's code and the schema's parameters cannot contain a value.
 */
export function fromZodIssue(issue: z.core.$ZodIssue): Array<{ path: ConfigPath; problem: string }> {
  const path = issue.path.filter((segment) => typeof segment !== "symbol") as (string | number)[];
  switch (issue.code) {
    case "unrecognized_keys":
      return issue.keys.map((key) => ({ path: [...path, key], problem: "is not a known setting" }));
    case "invalid_type":
      return [
        {
          path,
          problem:
            issue.input === undefined
              ? "is required"
              : (TYPE_NAMES[issue.expected] ?? `must be of type ${issue.expected}`),
        },
      ];
    case "invalid_value":
      return [{ path, problem: `must be one of ${issue.values.map((value) => String(value)).join(", ")}` }];
    case "too_small":
      return [{ path, problem: sizeProblem(issue.origin, "at least", issue.minimum) }];
    case "too_big":
      return [{ path, problem: sizeProblem(issue.origin, "at most", issue.maximum) }];
    case "custom":
      return [{ path, problem: issue.message }];
    default:
      return [{ path, problem: "is not valid" }];
  }
}

function sizeProblem(origin: string, bound: string, limit: number | bigint): string {
  if (origin === "array" || origin === "set") return `must have ${bound} ${limit} entries`;
  if (origin === "string") return `must be ${bound} ${limit} characters`;
  return `must be ${bound} ${limit}`;
}

/** The one error for a refused config: every problem, one sorted line each. */
export function configError(issues: readonly ConfigIssue[]): GateError {
  const lines = [...new Set(issues.map((issue) => `config: ${issue.subject} ${issue.problem}`))].sort();
  const shown =
    lines.length > MAX_LINES
      ? [...lines.slice(0, MAX_LINES), `config: …and ${lines.length - MAX_LINES} more`]
      : lines;
  return new GateError("ERR_CONFIG_INVALID", shown.join("\n"));
}
