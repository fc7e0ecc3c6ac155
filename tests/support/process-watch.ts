/**
 * Watching child processes from a test: whether a pid still runs, and waiting for a condition with a
 * bound (generous: these wait on process starts and exits on a loaded two-core machine).
 */
import assert from "node:assert/strict";
import { setTimeout as delay } from "node:timers/promises";

/** The bound a test waits for a process to start, answer or exit. */
export const PROCESS_WAIT_MS = 20_000;

/** Whether a pid names a process (one that exited and was reaped is ESRCH). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/** Resolves once `check()` holds; fails naming `what` after `withinMs`. */
export async function eventually(
  check: () => boolean,
  what: string,
  withinMs = PROCESS_WAIT_MS,
): Promise<void> {
  const until = Date.now() + withinMs;
  while (!check()) {
    if (Date.now() > until) assert.fail(`timed out waiting for: ${what}`);
    await delay(50);
  }
}
