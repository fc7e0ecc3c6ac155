import type { Principal } from "../identity/principal.ts";
import type { Store } from "../store/contract.ts";
import { createTaskTokens, type IssuedTaskToken } from "./task-tokens.ts";

/**
 * Poll tokens: what a widget or REST client presents, beside its own credential, to poll one task's
 * progress (THREATS T2, T4). Bound to the owner and the task, expiring, stored as digests; read them
 * from a request with `readRequestToken` (headers only). Reusable until they expire: polling repeats.
 */
export interface PollTokens {
  issue(principal: Principal, taskId: string): Promise<IssuedTaskToken>;
  /**
   * Resolves only for the principal the token was issued to, for its task, before it expires;
   * otherwise `ERR_TOKEN_INVALID` (also for an absent token).
   */
  check(principal: Principal, taskId: string, token: string | undefined): Promise<void>;
  /** Ends a token early; false if it was not the principal's for that task, or not live. */
  revoke(principal: Principal, taskId: string, token: string): Promise<boolean>;
}

export interface PollTokensOptions {
  readonly store: Store;
  /** Lifetime in ms. Default one hour; at most 30 days. */
  readonly ttlMs?: number;
  readonly now?: () => number;
}

export const DEFAULT_POLL_TOKEN_TTL_MS = 60 * 60 * 1000;

export function createPollTokens(options: PollTokensOptions): PollTokens {
  const tokens = createTaskTokens({
    store: options.store,
    kind: "poll-token",
    ttlMs: options.ttlMs ?? DEFAULT_POLL_TOKEN_TTL_MS,
    ...(options.now === undefined ? {} : { now: options.now }),
  });
  return {
    issue: (principal, taskId) => tokens.issue(principal, taskId),
    check: (principal, taskId, token) => tokens.check(principal, taskId, token),
    revoke: (principal, taskId, token) => tokens.revoke(principal, taskId, token),
  };
}
