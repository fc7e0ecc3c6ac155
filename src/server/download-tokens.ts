import type { Principal } from "../identity/principal.ts";
import type { Store } from "../store/contract.ts";
import { checkLifetime } from "./owner-fields.ts";
import { createTaskTokens, type IssuedTaskToken } from "./task-tokens.ts";

/**
 * Download tokens: short-lived permission to fetch one task's result (THREATS T2). Redeeming checks
 * the principal and the task, so a token that leaks (a shared link, a log line, a Referer) is
 * useless to anyone else; the result itself is read with `OwnedTasks.getResult`, which checks the
 * owner again, so no result is ever reachable by task id or token alone.
 */
export interface DownloadTokens {
  issue(principal: Principal, taskId: string): Promise<IssuedTaskToken>;
  /**
   * Resolves if the token was issued to `principal` for `taskId` and is live, consuming it when
   * tokens are single-use (of concurrent redeemers exactly one succeeds); else `ERR_TOKEN_INVALID`.
   * A token presented by the wrong principal is not consumed: it still works for its owner.
   */
  redeem(principal: Principal, taskId: string, token: string | undefined): Promise<void>;
  revoke(principal: Principal, taskId: string, token: string): Promise<boolean>;
}

export interface DownloadTokensOptions {
  readonly store: Store;
  /** Lifetime in ms. Default 5 minutes; at most one hour. */
  readonly ttlMs?: number;
  /** Default true: a token downloads once. False: any number of times until it expires. */
  readonly singleUse?: boolean;
  readonly now?: () => number;
}

export const DEFAULT_DOWNLOAD_TOKEN_TTL_MS = 5 * 60 * 1000;
const MAX_DOWNLOAD_TOKEN_TTL_MS = 60 * 60 * 1000;

export function createDownloadTokens(options: DownloadTokensOptions): DownloadTokens {
  const ttlMs = checkLifetime(
    "ttlMs",
    options.ttlMs ?? DEFAULT_DOWNLOAD_TOKEN_TTL_MS,
    MAX_DOWNLOAD_TOKEN_TTL_MS,
  );
  const singleUse = options.singleUse ?? true;
  const tokens = createTaskTokens({
    store: options.store,
    kind: "download-token",
    ttlMs,
    ...(options.now === undefined ? {} : { now: options.now }),
  });
  return {
    issue: (principal, taskId) => tokens.issue(principal, taskId),
    redeem: (principal, taskId, token) =>
      singleUse ? tokens.consume(principal, taskId, token) : tokens.check(principal, taskId, token),
    revoke: (principal, taskId, token) => tokens.revoke(principal, taskId, token),
  };
}
