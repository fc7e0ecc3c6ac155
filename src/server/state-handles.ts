import { digest, looksLikeMintedId, mintId } from "../crypto/ids.ts";
import { GateError, invalidArgument } from "../errors.ts";
import { ownerScope, type Principal } from "../identity/principal.ts";
import type { Store } from "../store/contract.ts";
import { ownedKey, type RecordKey } from "../store/keys.ts";
import { checkLifetime, checkPrincipal } from "./owner-fields.ts";

/**
 * State handles: opaque ids a server gives a client to refer to server-side state across requests
 * (a cursor, a multi-step form, a `requestState` too large to send back). The 2026-07-28 security
 * guidance asks that such state be keyed `<principal>:<handle>`; here the key is
 * `data/<tenant>/<issuer>/<subject>/state-handle/<digest(handle)>`, so the same handle presented by
 * another principal names a key that does not exist: it finds nothing, and can write nothing.
 *
 * A handle is 192 CSPRNG bits and is stored only as its digest. A handle the principal did not get
 * from `create` is never adopted: `put` only replaces an existing value (no fixation).
 */
export interface StateHandles {
  /** Stores `value` for `principal` and returns a new handle for it. */
  create(principal: Principal, value: string): Promise<string>;
  /** The value, or null: unknown, expired, malformed, or another principal's handle all read alike. */
  get(principal: Principal, handle: string): Promise<string | null>;
  /**
   * Replaces the value of a live handle of `principal` and restarts its lifetime; `ERR_NOT_FOUND`
   * otherwise. Last writer wins; a `put` racing the same principal's `delete` may restore the value.
   */
  put(principal: Principal, handle: string, value: string): Promise<void>;
  /** True if a live handle of `principal` was removed. */
  delete(principal: Principal, handle: string): Promise<boolean>;
}

export interface StateHandlesOptions {
  readonly store: Store;
  /** Lifetime in ms since the last write (`create` or `put`): 1 ms to 30 days. */
  readonly ttlMs: number;
}

const KIND = "state-handle";

export function createStateHandles(options: StateHandlesOptions): StateHandles {
  const { store } = options;
  const ttlMs = checkLifetime("ttlMs", options.ttlMs);

  /** A malformed handle names a key no handle has, so it costs the read an unknown one costs. */
  const keyOf = (principal: Principal, handle: string): RecordKey => {
    checkPrincipal(principal);
    const wellFormed = typeof handle === "string" && looksLikeMintedId(handle);
    return ownedKey(ownerScope(principal), KIND, digest(KIND, wellFormed ? handle : "\u0000"));
  };
  const checkValue = (value: string): void => {
    if (typeof value !== "string") throw invalidArgument("value", "must be a string");
  };

  return {
    async create(principal, value) {
      checkValue(value);
      for (let attempt = 0; attempt < 3; attempt++) {
        const handle = mintId();
        const outcome = await store.claim(keyOf(principal, handle), value, { ttlMs });
        if (outcome.won) return handle;
      }
      throw new GateError("ERR_INTERNAL", "internal error", { detail: "state-handle collision" });
    },

    async get(principal, handle) {
      const key = keyOf(principal, handle);
      const value = await store.get(key);
      return looksLikeMintedId(String(handle)) ? value : null;
    },

    async put(principal, handle, value) {
      checkValue(value);
      const key = keyOf(principal, handle);
      const existing = await store.get(key);
      if (existing === null || !looksLikeMintedId(String(handle))) {
        throw new GateError("ERR_NOT_FOUND", "not found", { detail: "state-handle" });
      }
      await store.put(key, value, { ttlMs });
    },

    async delete(principal, handle) {
      const key = keyOf(principal, handle);
      if (!looksLikeMintedId(String(handle))) {
        await store.get(key);
        return false;
      }
      return store.delete(key);
    },
  };
}
