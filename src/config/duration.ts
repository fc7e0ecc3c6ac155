import { GateError } from "../errors.ts";

/**
 * Durations in the config are written `^\d+(ms|s|m|h)$` (operator contract): one unit, no days (a
 * day is not always 24 h to an operator reading logs across a DST change), no fractions and no
 * signs, so there is exactly one way to read each value.
 */

export const DURATION_PATTERN = /^(\d+)(ms|s|m|h)$/;

const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 } as const;

/** Milliseconds, or undefined when `text` is not a duration (or too large to be exact). */
export function durationToMs(text: string): number | undefined {
  const match = DURATION_PATTERN.exec(text);
  if (!match) return undefined;
  const amount = Number(match[1]);
  const ms = amount * UNIT_MS[match[2] as keyof typeof UNIT_MS];
  return Number.isSafeInteger(ms) ? ms : undefined;
}

/** `parseDuration("30m") === 1_800_000`. The error names `name`, never the text given. */
export function parseDuration(text: string, name = "duration"): number {
  const ms = typeof text === "string" ? durationToMs(text) : undefined;
  if (ms === undefined) {
    throw new GateError("ERR_CONFIG_INVALID", `${name} must be a whole number followed by ms, s, m or h`);
  }
  return ms;
}
