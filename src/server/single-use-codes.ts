import { timingSafeEqual } from "node:crypto";
import { digest, looksLikeMintedId, mintId } from "../crypto/ids.ts";
import type { Keyring } from "../crypto/keyring.ts";
import { openToString, type SealContext, seal } from "../crypto/seal.ts";
import { GateError, invalidArgument } from "../errors.ts";
import type { Store } from "../store/contract.ts";
import { ownershipKey, type RecordKey } from "../store/keys.ts";

/**
 * Store-backed one-time values (THREATS T6): OAuth authorization codes bound to the client they were
 * issued for, and OAuth `state` bound to the session that started the flow.
 *
 * A code or state is a minted id (192 CSPRNG bits), stored only as the digest inside its key
 * (`own/code/<d>`, `own/oauth-state/<d>`), with the binding (a digest of the client id or session key)
 * and the value beside it. Redemption reads the record, compares the binding, and only then consumes
 * it with `takeIfEquals` on the exact text it read:
 * - a wrong client or session is refused and the record stays, so it cannot burn the rightful
 *   party's code (everyrow took the code with GETDEL and put it back, leaving a window in which the
 *   rightful client found nothing);
 * - of concurrent redeemers, on any connection or process, exactly one deletes it: a record is never
 *   rewritten, so every one of them compares against the same text and only one delete can succeed;
 * - the check is not a check-then-consume window: what is consumed is exactly what was checked.
 */

export interface SingleUseCodesOptions {
  readonly store: Store;
  /** How long a code or state lives unredeemed, in ms (1 ms to 1 day). */
  readonly ttlMs: number;
  /**
   * When given, records are sealed (purpose `single-use-code`, bound to the kind and the digest), so a
   * storage dump shows neither the values nor which client a code is for. Without it they are stored
   * as JSON; the code itself is never stored either way.
   */
  readonly keyring?: Keyring;
}

export interface SingleUseCodes {
  /** A new code carrying `value`, redeemable once, by `clientId` only. */
  issue(value: string, options: { readonly clientId: string }): Promise<string>;
  /**
   * The value of `code` if it was issued to `clientId` and not yet redeemed (or expired); null
   * otherwise. A code presented by another client is refused and still works for its own.
   */
  redeem(code: string, clientId: string): Promise<string | null>;
  /** A new OAuth `state` for the session `sessionKey` (e.g. the login cookie), with an optional value. */
  issueState(sessionKey: string, value?: string): Promise<string>;
  /**
   * The value given to `issueState` ("" if none) if `state` was issued to `sessionKey` and not yet
   * consumed; null otherwise. Another session's attempt leaves the state usable by its own.
   */
  consumeState(state: string, sessionKey: string): Promise<string | null>;
}

type Kind = "code" | "oauth-state";

/** Most UTF-16 code units a value may hold: a code carries a grant, not a payload. */
export const MAX_CODE_VALUE_LENGTH = 64 * 1024;
const MAX_BINDING_LENGTH = 1024;
/** OAuth codes are short-lived (RFC 6749 section 4.1.2 recommends at most 10 minutes). */
export const MAX_CODE_TTL_MS = 24 * 60 * 60 * 1000;
const SEAL_PURPOSE = "single-use-code";

interface CodeRecord {
  readonly binding: string;
  readonly value: string;
}

export function createSingleUseCodes(options: SingleUseCodesOptions): SingleUseCodes {
  const { store, keyring } = options;
  const ttlMs = options.ttlMs;
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 1 || ttlMs > MAX_CODE_TTL_MS) {
    throw invalidArgument("ttlMs", `must be an integer from 1 to ${MAX_CODE_TTL_MS}`);
  }

  const sealContext = (kind: Kind, key: RecordKey): SealContext => ({
    purpose: SEAL_PURPOSE,
    owner: [kind, key.segments[1] ?? ""],
  });
  const encode = (kind: Kind, key: RecordKey, record: CodeRecord): string => {
    const text = JSON.stringify({ v: 1, binding: record.binding, value: record.value });
    return keyring === undefined ? text : seal(keyring, text, sealContext(kind, key));
  };
  const decode = (kind: Kind, key: RecordKey, stored: string): CodeRecord | null => {
    try {
      const text = keyring === undefined ? stored : openToString(keyring, stored, sealContext(kind, key));
      const parsed = JSON.parse(text) as { v?: unknown; binding?: unknown; value?: unknown };
      if (parsed.v !== 1 || typeof parsed.binding !== "string" || typeof parsed.value !== "string") {
        return null;
      }
      return { binding: parsed.binding, value: parsed.value };
    } catch {
      return null; // sealed under a key no longer loaded, or not a record of ours: unknown
    }
  };

  const mint = async (kind: Kind, binding: string, value: string): Promise<string> => {
    for (let attempt = 0; attempt < 3; attempt++) {
      const token = mintId();
      const key = ownershipKey(kind, token);
      const outcome = await store.claim(key, encode(kind, key, { binding, value }), { ttlMs });
      if (outcome.won) return token;
    }
    throw new GateError("ERR_INTERNAL", "unexpected failure", { detail: `could not claim a fresh ${kind}` });
  };

  const redeemOnce = async (kind: Kind, token: unknown, binding: string): Promise<string | null> => {
    // Only a minted id can be a code: anything else is unknown without a store lookup.
    if (typeof token !== "string" || !looksLikeMintedId(token)) return null;
    const key = ownershipKey(kind, token);
    const stored = await store.get(key);
    if (stored === null) return null;
    const record = decode(kind, key, stored);
    if (record === null || !sameDigest(record.binding, binding)) return null;
    // Deletes only the exact record checked above: of concurrent redeemers exactly one succeeds.
    return (await store.takeIfEquals(key, stored)) ? record.value : null;
  };

  return {
    async issue(value, issueOptions) {
      checkValue(value);
      return mint("code", clientBinding(issueOptions?.clientId), value);
    },
    async redeem(code, clientId) {
      // A client id that could never have been issued a code is refused like a wrong one.
      if (!isBinding(clientId)) return null;
      return redeemOnce("code", code, clientBinding(clientId));
    },
    async issueState(sessionKey, value = "") {
      checkValue(value);
      return mint("oauth-state", sessionBinding(sessionKey), value);
    },
    async consumeState(state, sessionKey) {
      if (!isBinding(sessionKey)) return null;
      return redeemOnce("oauth-state", state, sessionBinding(sessionKey));
    },
  };
}

/**
 * Bindings are stored as digests: a session key is a credential and must never be stored, and a
 * client id is kept out of a dump for the same price. Each kind has its own digest purpose, so a
 * client id can never stand in for a session key.
 */
function clientBinding(clientId: unknown): string {
  return digest("code-client", checkBinding("clientId", clientId));
}

function sessionBinding(sessionKey: unknown): string {
  return digest("oauth-state-session", checkBinding("sessionKey", sessionKey));
}

function isBinding(value: unknown): value is string {
  return (
    typeof value === "string" &&
    value.length > 0 &&
    value.length <= MAX_BINDING_LENGTH &&
    value.isWellFormed()
  );
}

function checkBinding(name: string, value: unknown): string {
  if (!isBinding(value)) {
    throw invalidArgument(name, `must be a well-formed string of 1 to ${MAX_BINDING_LENGTH} characters`);
  }
  return value;
}

function checkValue(value: unknown): void {
  if (typeof value !== "string" || value.length > MAX_CODE_VALUE_LENGTH) {
    throw invalidArgument("value", `must be a string of at most ${MAX_CODE_VALUE_LENGTH} characters`);
  }
  if (!value.isWellFormed()) throw invalidArgument("value", "must be well-formed Unicode");
}

/** Constant-time comparison of two digests (equal lengths are the normal case). */
function sameDigest(a: string, b: string): boolean {
  const left = Buffer.from(a, "utf8");
  const right = Buffer.from(b, "utf8");
  return left.length === right.length && timingSafeEqual(left, right);
}
