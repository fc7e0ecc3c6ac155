import { digest, looksLikeMintedId, mintId } from "../crypto/ids.ts";
import { GateError } from "../errors.ts";
import type { Principal } from "../identity/principal.ts";
import type { Store } from "../store/contract.ts";
import { ownershipKey, type RecordKey } from "../store/keys.ts";
import { checkLifetime, checkPrincipal, ownedBy, ownerFieldsOf, parseObject } from "./owner-fields.ts";

/**
 * Tokens bound to (owner, task): the shared core of poll tokens and download tokens (THREATS T2).
 *
 * A token is 192 CSPRNG bits, handed out once and stored only as its digest (the key
 * `own/<kind>/<digest>`), so a storage dump holds no usable token. Its record names the owner and the
 * task (as a digest) and an expiry checked on top of the store's TTL. A token is accepted only from
 * the principal it was issued to, for the task it was issued for, before it expires: possession
 * alone is never enough (everyrow compared two owner values written from the same input, so a
 * valid token presented by another user still worked). Every refusal is one `ERR_TOKEN_INVALID`.
 */

export interface IssuedTaskToken {
  /** Give this to the owner's client; tenantgate keeps only its digest. */
  readonly token: string;
  readonly expiresAt: number;
}

export interface TaskTokens {
  issue(principal: Principal, taskId: string): Promise<IssuedTaskToken>;
  /** Resolves if `token` was issued to `principal` for `taskId` and is live; else `ERR_TOKEN_INVALID`. */
  check(principal: Principal, taskId: string, token: string | undefined): Promise<void>;
  /** `check`, then removes the token; of concurrent consumers exactly one succeeds. */
  consume(principal: Principal, taskId: string, token: string | undefined): Promise<void>;
  /** Removes a token the principal holds for `taskId`; false if it was not theirs or not live. */
  revoke(principal: Principal, taskId: string, token: string): Promise<boolean>;
}

export interface TaskTokensOptions {
  readonly store: Store;
  /** `poll-token` or `download-token`: the key kind and digest purpose. */
  readonly kind: string;
  readonly ttlMs: number;
  readonly now?: () => number;
}

const RECORD_VERSION = 1;
/** A task id longer than this cannot be one tenantgate handed out or bound a token to. */
const MAX_TASK_ID = 1024;

function refused(detail: string): GateError {
  return new GateError("ERR_TOKEN_INVALID", "not found", { detail });
}

export function createTaskTokens(options: TaskTokensOptions): TaskTokens {
  const { store, kind } = options;
  const ttlMs = checkLifetime("ttlMs", options.ttlMs);
  const now = options.now ?? Date.now;
  const taskDigest = (taskId: string): string => digest(`${kind}-task`, taskId);

  function checkTaskId(taskId: unknown): string {
    if (
      typeof taskId !== "string" ||
      taskId.length === 0 ||
      taskId.length > MAX_TASK_ID ||
      !taskId.isWellFormed()
    ) {
      // A task id the server could not have bound a token to: refused like any other mismatch.
      throw refused("task-id");
    }
    return taskId;
  }

  /**
   * Reads the token's record and decides. A malformed token is read at a key no token has, so every
   * refusal costs the one read an unknown token costs.
   */
  async function lookup(
    principal: Principal,
    taskId: string,
    token: string | undefined,
  ): Promise<{ key: RecordKey; text: string }> {
    checkPrincipal(principal);
    const wellFormed = typeof token === "string" && looksLikeMintedId(token);
    const key = ownershipKey(kind, wellFormed ? token : "\u0000");
    const text = await store.get(key);
    if (!wellFormed) throw refused("malformed");
    const record = parseObject(text);
    if (text === null || record === null || record["v"] !== RECORD_VERSION) throw refused("unknown");
    if (!ownedBy(record, principal)) throw refused("foreign");
    if (typeof taskId !== "string" || record["task"] !== taskDigest(checkTaskId(taskId))) {
      throw refused("other-task");
    }
    const expiresAt = record["expiresAt"];
    if (!Number.isSafeInteger(expiresAt) || (expiresAt as number) <= now()) throw refused("expired");
    return { key, text };
  }

  return {
    async issue(principal, taskId) {
      checkPrincipal(principal);
      checkTaskId(taskId);
      const expiresAt = Math.floor(now()) + ttlMs;
      const owner = ownerFieldsOf(principal);
      const value = JSON.stringify({ v: RECORD_VERSION, ...owner, task: taskDigest(taskId), expiresAt });
      // 192 random bits never collide in practice; a lost claim is retried rather than shared.
      for (let attempt = 0; attempt < 3; attempt++) {
        const token = mintId();
        const outcome = await store.claim(ownershipKey(kind, token), value, { ttlMs });
        if (outcome.won) return Object.freeze({ token, expiresAt });
      }
      throw new GateError("ERR_INTERNAL", "internal error", { detail: `${kind} collision` });
    },

    async check(principal, taskId, token) {
      await lookup(principal, taskId, token);
    },

    async consume(principal, taskId, token) {
      const { key, text } = await lookup(principal, taskId, token);
      // Checked first, consumed second: a token presented by the wrong principal is refused and left
      // intact for its owner (the single-use code rule, THREATS T6).
      if (!(await store.takeIfEquals(key, text))) throw refused("consumed");
    },

    async revoke(principal, taskId, token) {
      try {
        const { key, text } = await lookup(principal, taskId, token);
        return await store.takeIfEquals(key, text);
      } catch (error) {
        if (error instanceof GateError && error.code === "ERR_TOKEN_INVALID") return false;
        throw error;
      }
    },
  };
}
