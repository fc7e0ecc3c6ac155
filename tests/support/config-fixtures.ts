import assert from "node:assert/strict";
import { isGateError } from "../../src/errors.ts";

/** The smallest config `serve` accepts: one key reference, one way to authenticate, one upstream. */
export function minimalConfig(): Record<string, unknown> {
  return {
    secrets: { masterKey: "env:TEST_MASTER_KEY" },
    auth: { anonymous: true },
    upstreams: [{ name: "demo", path: "/mcp", url: "http://127.0.0.1:9000/mcp" }],
  };
}

/** A deep copy of `base` with `value` set at the dotted `path` (numeric parts index lists). */
export function withSetting(
  base: Record<string, unknown>,
  path: string,
  value: unknown,
): Record<string, unknown> {
  const copy = structuredClone(base);
  const parts = path.split(".");
  let container: Record<string, unknown> = copy;
  for (const [index, part] of parts.slice(0, -1).entries()) {
    container[part] ??= /^\d+$/.test(parts[index + 1] ?? "") ? [] : {};
    container = container[part] as Record<string, unknown>;
  }
  const last = parts.at(-1) ?? "";
  if (value === undefined) delete container[last];
  else container[last] = value;
  return copy;
}

/** Asserts `run` throws ERR_CONFIG_INVALID and returns the message's lines. */
export function refusalLines(run: () => unknown): string[] {
  let lines: string[] = [];
  assert.throws(run, (error: unknown) => {
    assert.ok(isGateError(error, "ERR_CONFIG_INVALID"), String(error));
    lines = error.message.split("\n");
    return true;
  });
  return lines;
}

/** The same for a promise. */
export async function refusalLinesAsync(promise: Promise<unknown>): Promise<string[]> {
  let lines: string[] = [];
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isGateError(error, "ERR_CONFIG_INVALID"), String(error));
    lines = error.message.split("\n");
    return true;
  });
  return lines;
}
