import type { Keyring } from "../crypto/keyring.ts";
import { openToString, type SealContext, seal, sealedKeyId } from "../crypto/seal.ts";
import { GateError, invalidArgument, isGateError } from "../errors.ts";
import { parseObject } from "../server/owner-fields.ts";
import { MAX_BATCH_KEYS, MAX_MEMBER_LENGTH } from "../store/arguments.ts";
import type { Store } from "../store/contract.ts";
import {
  globalIndexKey,
  type IndexKey,
  type OwnerScope,
  ownedKey,
  ownerIndexKey,
  type RecordKey,
} from "../store/keys.ts";

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
/**
 * A credential is a header value: visible ASCII, with spaces and tabs only between visible
 * characters, at most this many bytes.
 */
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
  /**
   * The names asked for that the principal has not enrolled, or whose entry does not open (tampered
   * with, copied from elsewhere, or sealed under a key the keyring no longer holds), in the order
   * first asked. Each name appears once.
   */
  readonly missing: readonly string[];
}

export interface ResealReport {
  /** Entries found under a key other than the active one and re-sealed under the active key. */
  readonly resealed: number;
  /**
   * Entries that did not open (tampered, or sealed under a key no longer configured): left as they
   * are. Only the keys the keyring holds are walked: entries under a key it no longer has are not
   * reached at all (nor counted by `keyUsage`), and `reveal` reports them missing, so they are as
   * unreadable as a tampered one; their owners must enroll again. Retire a key once `keyUsage` shows
   * 0 for it, never before.
   */
  readonly unreadable: number;
}

export interface Vault {
  /**
   * Stores (or replaces) the owner's entry, sealed under the active key. Refuses a bad name or value
   * with ERR_ARGUMENT_INVALID (naming the argument, never the value), as it does an owner too long
   * for the key-id index (naming "owner"), and a 65th entry with ERR_STORE_FULL (replacing an entry
   * at the cap is allowed). Answers whether the entry is new.
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
  /**
   * How many entries are sealed under each key id the keyring holds (0 included), over all
   * principals (a key can go at 0). Counted from the key-id indexes and verified against each
   * record; an index entry that no longer matches its record is not counted and is removed.
   */
  keyUsage(): Promise<Readonly<Record<string, number>>>;
}

// ---------------------------------------------------------------------------------------------
// The implementation
// ---------------------------------------------------------------------------------------------

/**
 * Storage (docs/storage-schema.md, "Keys in use"):
 * - the entry: `data/<tenant>/<issuer>/<subject>/vault/<name>`, JSON `{v:1, name, updatedAt, sealed}`,
 *   `sealed` bound to (tenant, issuer, subject, name) and, through `seal`, to its key id;
 * - the owner's names: `index/<tenant>/<issuer>/<subject>/vault`, for `list` and `deleteAll`;
 * - per master key: `index/vault-key/<keyId>`, members `[tenant, issuer, subject, name]` as JSON,
 *   so rotation finds every entry under a key without a scan the store does not offer.
 *
 * Both indexes are hints: the record decides. Hints are added before a record is written (a crash
 * leaves a hint to nothing, never an entry nobody can find) and again after it. Every removal of a
 * hint is followed by a read of the record and the re-adding of the hint if the record still needs
 * it (`dropHints`). Between them, whichever call last touches an entry leaves the hints it needs: a
 * remover that raced a writer either reads the new record and restores the hint, or removed it
 * before the writer's second add.
 */

const ENTRY_KIND = "vault";
const KEY_INDEX_KIND = "vault-key";
const SEAL_PURPOSE = "vault";
const RECORD_VERSION = 1;
/** Entries re-sealed at once by `resealAll`: bounded, so a large vault does not flood the store. */
const RESEAL_CONCURRENCY = 16;

/**
 * RFC 9110 field-content: visible characters, with spaces and tabs only between them (a header
 * parser strips them at the ends, so the upstream would receive another value). No CR, LF or NUL (they
 * end or split a header) and nothing outside ASCII (encoded differently by different clients).
 */
const HEADER_VALUE = /^[!-~](?:[ \t!-~]*[!-~])?$/;

export interface VaultOptions {
  readonly store: Store;
  readonly keyring: Keyring;
  /** Clock (epoch ms) for `updatedAt`, for tests. */
  readonly now?: () => number;
}

interface VaultRecord {
  readonly v: typeof RECORD_VERSION;
  readonly name: string;
  readonly updatedAt: number;
  readonly sealed: string;
}

interface ParsedEntry {
  readonly record: VaultRecord;
  readonly keyId: string;
}

/** An entry found through a key-id index, with the exact text read (what a re-seal compares). */
interface LocatedEntry {
  readonly owner: OwnerScope;
  readonly name: string;
  readonly text: string;
  readonly record: VaultRecord;
}

function checkOwner(owner: OwnerScope): OwnerScope {
  if (typeof owner !== "object" || owner === null) {
    throw invalidArgument("owner", "must name a tenant, issuer and subject");
  }
  // Read once into a copy: every key and seal context below is built from the same three strings.
  const scope = { tenant: owner.tenant, issuer: owner.issuer, subject: owner.subject };
  for (const field of [scope.tenant, scope.issuer, scope.subject]) {
    if (typeof field !== "string" || field.length === 0 || !field.isWellFormed()) {
      throw invalidArgument("owner", "must name a tenant, issuer and subject as non-empty strings");
    }
  }
  return Object.freeze(scope);
}

function isEntryName(name: unknown): name is string {
  return typeof name === "string" && VAULT_ENTRY_NAME.test(name);
}

function checkName(name: string, argument: string): void {
  if (!isEntryName(name)) throw invalidArgument(argument, "must be an entry name ([a-z][a-z0-9_]{0,63})");
}

function isHeaderValue(value: unknown): value is string {
  return (
    typeof value === "string" &&
    value.length > 0 &&
    value.length <= MAX_VAULT_VALUE_LENGTH &&
    HEADER_VALUE.test(value)
  );
}

/** The context every entry is sealed with: moved to another principal's row or name, it does not open. */
function sealContext(owner: OwnerScope, name: string): SealContext {
  return { purpose: SEAL_PURPOSE, owner: [owner.tenant, owner.issuer, owner.subject, name] };
}

function entryKey(owner: OwnerScope, name: string): RecordKey {
  return ownedKey(owner, ENTRY_KIND, name);
}

function namesIndex(owner: OwnerScope): IndexKey {
  return ownerIndexKey(owner, ENTRY_KIND);
}

function keyIdIndex(keyId: string): IndexKey {
  return globalIndexKey(KEY_INDEX_KIND, keyId);
}

/** The entry's member in its key id's index; refused (before anything is written) if it cannot fit. */
function keyIdMember(owner: OwnerScope, name: string): string {
  const member = JSON.stringify([owner.tenant, owner.issuer, owner.subject, name]);
  if (member.length > MAX_MEMBER_LENGTH) {
    throw invalidArgument(
      "owner",
      `is too long to index (tenant, issuer and subject within ${MAX_MEMBER_LENGTH} characters)`,
    );
  }
  return member;
}

function parseMember(member: string): { owner: OwnerScope; name: string } | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(member);
  } catch {
    return null;
  }
  if (!Array.isArray(parsed) || parsed.length !== 4) return null;
  const [tenant, issuer, subject, name] = parsed as unknown[];
  for (const field of [tenant, issuer, subject]) {
    if (typeof field !== "string" || field.length === 0 || !field.isWellFormed()) return null;
  }
  if (!isEntryName(name)) return null;
  return { owner: { tenant, issuer, subject } as OwnerScope, name };
}

/** A record that is not exactly this shape, or names another entry, is treated as absent. */
function parseRecord(text: string | null, name: string): ParsedEntry | null {
  const r = parseObject(text);
  if (r === null || r["v"] !== RECORD_VERSION || r["name"] !== name) return null;
  if (typeof r["updatedAt"] !== "number" || !Number.isFinite(r["updatedAt"])) return null;
  if (typeof r["sealed"] !== "string") return null;
  const keyId = sealedKeyId(r["sealed"]);
  if (keyId === null) return null;
  return { record: { v: RECORD_VERSION, name, updatedAt: r["updatedAt"], sealed: r["sealed"] }, keyId };
}

function recordText(name: string, updatedAt: number, sealed: string): string {
  const record: VaultRecord = { v: RECORD_VERSION, name, updatedAt, sealed };
  return JSON.stringify(record);
}

/**
 * Opens an entry for its owner; null when it does not open (tampered, moved, or under a key the
 * keyring no longer holds). A value that opens but is not a header value is refused too: only
 * `put` seals with this purpose, and what reaches an upstream header must be checked where it leaves.
 */
function openEntry(keyring: Keyring, owner: OwnerScope, name: string, record: VaultRecord): string | null {
  let value: string;
  try {
    value = openToString(keyring, record.sealed, sealContext(owner, name));
  } catch (error) {
    if (isGateError(error, "ERR_SEALED_VALUE_INVALID")) return null;
    throw error;
  }
  return isHeaderValue(value) ? value : null;
}

function storeFull(): GateError {
  return new GateError("ERR_STORE_FULL", "store full", {
    detail: `vault holds at most ${MAX_VAULT_ENTRIES_PER_PRINCIPAL} entries per principal`,
  });
}

export function createVault(options: VaultOptions): Vault {
  const { store, keyring } = options;
  const now = options.now ?? Date.now;

  /** Reads any number of records, MAX_BATCH_KEYS per round trip. A store error rejects. */
  async function readMany(keys: readonly RecordKey[]): Promise<Array<string | null>> {
    const texts: Array<string | null> = [];
    for (let start = 0; start < keys.length; start += MAX_BATCH_KEYS) {
      texts.push(...(await store.getMany(keys.slice(start, start + MAX_BATCH_KEYS))));
    }
    return texts;
  }

  /**
   * Removes the hints named, then reads the record and adds back those it still needs. The only way
   * an entry's hint is removed (index members that name no entry at all are simply dropped), so a
   * removal that raced a write never leaves a live entry unindexed.
   */
  async function dropHints(
    owner: OwnerScope,
    name: string,
    drop: { readonly name: boolean; readonly keyIds: readonly string[] },
  ): Promise<void> {
    const member = drop.keyIds.length > 0 ? keyIdMember(owner, name) : "";
    await Promise.all([
      drop.name ? store.indexRemove(namesIndex(owner), name) : undefined,
      ...drop.keyIds.map((keyId) => store.indexRemove(keyIdIndex(keyId), member)),
    ]);
    const text = await store.get(entryKey(owner, name));
    if (text === null) return;
    const keyId = parseRecord(text, name)?.keyId ?? null;
    await Promise.all([
      // A record that is there keeps its name in the owner's index, even unreadable: deleteAll finds it.
      drop.name ? store.indexAdd(namesIndex(owner), name) : undefined,
      keyId !== null && drop.keyIds.includes(keyId) ? store.indexAdd(keyIdIndex(keyId), member) : undefined,
    ]);
  }

  /**
   * The principal's cap. Not atomic with the write: concurrent creates by one principal can pass it
   * together (each adds its hint before it counts, so they usually see each other), exceeding it by
   * at most the number that principal runs at once; it never touches another principal's entries.
   */
  async function checkRoom(owner: OwnerScope, name: string): Promise<void> {
    const others = (await store.indexList(namesIndex(owner))).filter((member) => member !== name);
    if (others.length < MAX_VAULT_ENTRIES_PER_PRINCIPAL) return;
    // At the cap by the hints: the records decide (a hint may name a put that crashed or is in flight).
    const names = others.filter(isEntryName);
    const texts = await readMany(names.map((other) => entryKey(owner, other)));
    if (texts.filter((text) => text !== null).length < MAX_VAULT_ENTRIES_PER_PRINCIPAL) return;
    await dropHints(owner, name, { name: true, keyIds: [] });
    throw storeFull();
  }

  /**
   * Re-seals an entry that opened under another key, replacing exactly the text read: a put or delete
   * that landed in between wins, and this answers false.
   */
  async function resealEntry(
    owner: OwnerScope,
    name: string,
    text: string,
    record: VaultRecord,
    value: string,
  ): Promise<boolean> {
    const active = keyring.activeKeyId;
    const previousKeyId = sealedKeyId(record.sealed);
    const member = keyIdMember(owner, name);
    const next = recordText(name, record.updatedAt, seal(keyring, value, sealContext(owner, name)));
    await store.indexAdd(keyIdIndex(active), member);
    if (!(await store.replaceIfEquals(entryKey(owner, name), text, next))) {
      // The call that won wrote its own hints; the one added above stays only if the record needs it.
      await dropHints(owner, name, { name: false, keyIds: [active] });
      return false;
    }
    await store.indexAdd(keyIdIndex(active), member);
    if (previousKeyId !== null && previousKeyId !== active) {
      await dropHints(owner, name, { name: false, keyIds: [previousKeyId] });
    }
    return true;
  }

  /**
   * The entries sealed under `keyId`, of every principal, each read and checked against its index
   * member. A member whose record is gone or under another key is removed (`dropHints`). Operator
   * paths only: nothing a client sends reaches here.
   */
  async function entriesUnder(keyId: string): Promise<LocatedEntry[]> {
    const index = keyIdIndex(keyId);
    const located: { owner: OwnerScope; name: string }[] = [];
    for (const member of new Set(await store.indexList(index))) {
      const parsed = parseMember(member);
      // Never written by this module (every member it adds parses): nothing to keep or restore.
      if (parsed === null) await store.indexRemove(index, member);
      else located.push(parsed);
    }
    const texts = await readMany(located.map(({ owner, name }) => entryKey(owner, name)));
    const entries: LocatedEntry[] = [];
    for (const [i, { owner, name }] of located.entries()) {
      const text = texts[i] ?? null;
      const parsed = parseRecord(text, name);
      if (text !== null && parsed !== null && parsed.keyId === keyId) {
        entries.push({ owner, name, text, record: parsed.record });
      } else {
        await dropHints(owner, name, { name: false, keyIds: [keyId] });
      }
    }
    return entries;
  }

  async function deleteEntry(owner: OwnerScope, name: string): Promise<boolean> {
    // take answers what it removed, so the hint of the key it was sealed under goes too.
    const taken = await store.take(entryKey(owner, name));
    const keyId = parseRecord(taken, name)?.keyId ?? null;
    await dropHints(owner, name, { name: true, keyIds: keyId === null ? [] : [keyId] });
    return taken !== null;
  }

  return {
    async put(owner, name, value) {
      const scope = checkOwner(owner);
      checkName(name, "name");
      // Never echoed: a value is a credential.
      if (!isHeaderValue(value)) {
        throw invalidArgument(
          "value",
          `must be 1 to ${MAX_VAULT_VALUE_LENGTH} characters of visible ASCII, with spaces or tabs only between them`,
        );
      }
      const key = entryKey(scope, name);
      const member = keyIdMember(scope, name);
      const active = keyring.activeKeyId;
      const text = recordText(name, now(), seal(keyring, value, sealContext(scope, name)));
      const previous = await store.get(key);
      await store.indexAdd(namesIndex(scope), name);
      if (previous === null) await checkRoom(scope, name);
      await store.indexAdd(keyIdIndex(active), member);
      await store.put(key, text);
      // Again after the write, for a concurrent dropHints that read the record before it.
      await Promise.all([
        store.indexAdd(namesIndex(scope), name),
        store.indexAdd(keyIdIndex(active), member),
      ]);
      const previousKeyId = parseRecord(previous, name)?.keyId ?? null;
      if (previousKeyId !== null && previousKeyId !== active) {
        await dropHints(scope, name, { name: false, keyIds: [previousKeyId] });
      }
      return { created: previous === null };
    },

    async delete(owner, name) {
      const scope = checkOwner(owner);
      checkName(name, "name");
      return deleteEntry(scope, name);
    },

    async list(owner) {
      const scope = checkOwner(owner);
      const names = [...new Set(await store.indexList(namesIndex(scope)))].filter(isEntryName);
      const texts = await readMany(names.map((name) => entryKey(scope, name)));
      const entries: VaultEntryInfo[] = [];
      for (const [i, name] of names.entries()) {
        // A hint to nothing may be a put in flight: left for it (or for delete) to settle.
        const parsed = parseRecord(texts[i] ?? null, name);
        if (parsed === null) continue;
        entries.push(Object.freeze({ name, updatedAt: parsed.record.updatedAt, keyId: parsed.keyId }));
      }
      return entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    },

    async reveal(owner, names) {
      const scope = checkOwner(owner);
      if (!Array.isArray(names)) throw invalidArgument("names", "must be an array of entry names");
      const wanted = [...new Set(names)];
      for (const name of wanted) checkName(name, "names");
      if (wanted.length > MAX_VAULT_ENTRIES_PER_PRINCIPAL) {
        throw invalidArgument("names", `must name at most ${MAX_VAULT_ENTRIES_PER_PRINCIPAL} entries`);
      }
      // One round trip for every name (MAX_VAULT_ENTRIES_PER_PRINCIPAL is within MAX_BATCH_KEYS). A
      // store that cannot answer rejects: an unread entry is never reported missing (fail closed).
      const texts = await readMany(wanted.map((name) => entryKey(scope, name)));
      const values = new Map<string, string>();
      const missing: string[] = [];
      const stale: LocatedEntry[] = [];
      for (const [i, name] of wanted.entries()) {
        const text = texts[i] ?? null;
        const parsed = parseRecord(text, name);
        const value = parsed === null ? null : openEntry(keyring, scope, name, parsed.record);
        // Tampered, moved or under a retired key: the owner's to enroll again, never an error.
        if (text === null || parsed === null || value === null) {
          missing.push(name);
          continue;
        }
        values.set(name, value);
        if (parsed.keyId !== keyring.activeKeyId) {
          stale.push({ owner: scope, name, text, record: parsed.record });
        }
      }
      // Lazy re-seal after a rotation. The values are already read: a failed rewrite is left for the
      // next reveal or resealAll, and must not fail the owner's call.
      await Promise.all(
        stale.map((entry) =>
          resealEntry(scope, entry.name, entry.text, entry.record, values.get(entry.name) ?? "").catch(
            () => false,
          ),
        ),
      );
      return Object.freeze({ values, missing: Object.freeze(missing) });
    },

    async deleteAll(owner) {
      const scope = checkOwner(owner);
      const members = [...new Set(await store.indexList(namesIndex(scope)))];
      let deleted = 0;
      for (const member of members) {
        if (!isEntryName(member)) {
          // Never written by put: nothing to restore.
          await store.indexRemove(namesIndex(scope), member);
          continue;
        }
        if (await deleteEntry(scope, member)) deleted++;
      }
      return deleted;
    },

    async resealAll() {
      let resealed = 0;
      let unreadable = 0;
      for (const keyId of keyring.keyIds) {
        if (keyId === keyring.activeKeyId) continue;
        const entries = await entriesUnder(keyId);
        for (let start = 0; start < entries.length; start += RESEAL_CONCURRENCY) {
          const outcomes = await Promise.all(
            entries.slice(start, start + RESEAL_CONCURRENCY).map(async (entry) => {
              const value = openEntry(keyring, entry.owner, entry.name, entry.record);
              if (value === null) return "unreadable";
              // Lost to a concurrent put or delete: nothing left to re-seal.
              return (await resealEntry(entry.owner, entry.name, entry.text, entry.record, value))
                ? "resealed"
                : "superseded";
            }),
          );
          resealed += outcomes.filter((outcome) => outcome === "resealed").length;
          unreadable += outcomes.filter((outcome) => outcome === "unreadable").length;
        }
      }
      return Object.freeze({ resealed, unreadable });
    },

    async keyUsage() {
      const usage: Record<string, number> = {};
      for (const keyId of keyring.keyIds) usage[keyId] = (await entriesUnder(keyId)).length;
      return Object.freeze(usage);
    },
  };
}

/**
 * The vault, with `onChange(owner, entry)` called after each write or removal that succeeded (`entry`
 * null: all of the owner's entries). The observer's failure never changes the vault's answer.
 */
export function observeVaultChanges(
  vault: Vault,
  onChange: (owner: OwnerScope, entry: string | null) => void,
): Vault {
  const notify = (owner: OwnerScope, entry: string | null): void => {
    try {
      onChange(owner, entry);
    } catch {
      // What ends processes is best effort here; a modern request re-reads the vault anyway.
    }
  };
  return {
    ...vault,
    async put(owner, name, value) {
      const answer = await vault.put(owner, name, value);
      notify(owner, name);
      return answer;
    },
    async delete(owner, name) {
      const removed = await vault.delete(owner, name);
      if (removed) notify(owner, name);
      return removed;
    },
    async deleteAll(owner) {
      const removed = await vault.deleteAll(owner);
      if (removed > 0) notify(owner, null);
      return removed;
    },
  };
}
