import type { OwnerScope } from "../store/keys.ts";

/**
 * The per-principal credential vault (THREATS C1-C3): each principal's upstream credentials (a
 * GitHub token, a Google refresh token), sealed under the master key with associated data binding
 * tenant, principal, entry name and key id, so a ciphertext copied to another principal's row, or
 * renamed, fails to open.
 *
 * Values go in (`put`) and never come back out to a client: `reveal` is the one way out, and the
 * gateway calls it only to build the owner's own upstream call. Nothing in a request chooses whose
 * entries are read: the owner is always the verified principal.
 */

/** Entry names: what `upstreams[].inject` refers to as `{vault:NAME}` and the enrollment path names. */
export const VAULT_ENTRY_NAME = /^[a-z][a-z0-9_]{0,63}$/;
/** A credential is a header value: visible ASCII and spaces, at most this many bytes. */
export const MAX_VAULT_VALUE_LENGTH = 8192;
/** Entries one principal may hold. */
export const MAX_VAULT_ENTRIES_PER_PRINCIPAL = 64;

export interface VaultEntryInfo {
  readonly name: string;
  /** When the value was last written (epoch ms). */
  readonly updatedAt: number;
  /** The master key id the value is sealed under (for rotation). */
  readonly keyId: string;
}

export interface RevealedEntries {
  /** name -> value, for the names that are enrolled. */
  readonly values: ReadonlyMap<string, string>;
  /** The names asked for that the principal has not enrolled, in the order asked. */
  readonly missing: readonly string[];
}

export interface ResealReport {
  /** Entries found under a key other than the active one and re-sealed under the active key. */
  readonly resealed: number;
  /** Entries that did not open (tampered, or sealed under a key no longer configured): left as they are. */
  readonly unreadable: number;
}

export interface Vault {
  /**
   * Stores (or replaces) the owner's entry. Refuses a bad name or value with ERR_ARGUMENT_INVALID
   * (naming the argument, never the value), and a 65th entry with ERR_STORE_FULL.
   * Answers whether the entry is new.
   */
  put(owner: OwnerScope, name: string, value: string): Promise<{ readonly created: boolean }>;
  /** Removes the owner's entry; false if there was none. */
  delete(owner: OwnerScope, name: string): Promise<boolean>;
  /** The owner's entry names (never values), sorted by name. */
  list(owner: OwnerScope): Promise<VaultEntryInfo[]>;
  /**
   * The owner's own values for `names`, for injection into the owner's own upstream call. An entry
   * that does not open is reported missing (and never another principal's). An entry under a key
   * that is not the active one is re-sealed under the active key as it is read (lazily, with a
   * compare-and-set, so a concurrent `put` is never overwritten).
   */
  reveal(owner: OwnerScope, names: readonly string[]): Promise<RevealedEntries>;
  /** Removes every entry of the owner; answers how many. */
  deleteAll(owner: OwnerScope): Promise<number>;
  /** Re-seals every entry, of every principal, that is not under the active key. */
  resealAll(): Promise<ResealReport>;
  /** How many entries are sealed under each key id, over all principals (a key can go at 0). */
  keyUsage(): Promise<Readonly<Record<string, number>>>;
}
