import { digest } from "../crypto/ids.ts";
import { invalidArgument } from "../errors.ts";
import type { Principal } from "./principal.ts";

/**
 * Principals of recently verified tokens, so a client sending the same token on every request costs
 * one signature check, not one per request.
 *
 * - Keyed by the token's digest (never the token: a heap dump shows no usable credential) together
 *   with the audience it was verified for, so a token verified for upstream X is never answered
 *   from the cache at upstream Y (THREATS A1).
 * - An entry lives until the token's `exp` or `maxAgeMs` after verification, whichever is first.
 *   The age bound means a key the issuer has withdrawn stops being honoured within `maxAgeMs`.
 * - Bounded by `maxEntries` with least-recently-used eviction. Unlike the store, evicting here
 *   harms nobody: a miss only costs a new verification.
 */
export interface VerifiedTokenCache {
  get(token: string, audience: string): Principal | undefined;
  /** Remembers a principal verified for `audience`; `expiresAt` is the token's exp in epoch ms. */
  set(token: string, audience: string, principal: Principal, expiresAt: number): void;
  readonly size: number;
}

export interface VerifiedTokenCacheOptions {
  readonly maxEntries: number;
  readonly maxAgeMs: number;
  readonly now: () => number;
}

interface Entry {
  readonly principal: Principal;
  readonly until: number;
}

export function createVerifiedTokenCache(options: VerifiedTokenCacheOptions): VerifiedTokenCache {
  const { maxEntries, maxAgeMs, now } = options;
  if (!Number.isSafeInteger(maxEntries) || maxEntries < 0) {
    throw invalidArgument("cache.maxEntries", "must be a non-negative integer");
  }
  if (!Number.isSafeInteger(maxAgeMs) || maxAgeMs < 0) {
    throw invalidArgument("cache.maxAgeMs", "must be a non-negative integer");
  }
  // Map iteration follows insertion order; re-inserting on every hit makes the first key the least
  // recently used one.
  const entries = new Map<string, Entry>();
  // A digest has a fixed length and no NUL, so (digest, audience) pairs never share a key.
  const keyOf = (token: string, audience: string): string => `${digest("bearer", token)}\0${audience}`;

  return {
    get(token, audience) {
      const key = keyOf(token, audience);
      const entry = entries.get(key);
      if (entry === undefined) return undefined;
      entries.delete(key);
      if (now() >= entry.until) return undefined;
      entries.set(key, entry);
      return entry.principal;
    },
    set(token, audience, principal, expiresAt) {
      if (maxEntries === 0) return;
      const until = Math.min(expiresAt, now() + maxAgeMs);
      if (!(until > now())) return;
      const key = keyOf(token, audience);
      entries.delete(key);
      while (entries.size >= maxEntries) {
        const oldest = entries.keys().next();
        if (oldest.done === true) break;
        entries.delete(oldest.value);
      }
      entries.set(key, { principal, until });
    },
    get size() {
      return entries.size;
    },
  };
}
