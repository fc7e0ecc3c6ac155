import { escapeSegment, type OwnerScope } from "../../src/store/keys.ts";
import type { RevealedEntries, Vault, VaultEntryInfo } from "../../src/vault/vault.ts";

/**
 * A TEST DOUBLE of the vault: plain values in memory, no sealing, no limits. It keeps the one
 * property the stdio bridge relies on (an owner's `reveal` answers only that owner's entries, and
 * reports the rest missing) and records every `reveal` so tests can tell whether one happened. The
 * real vault is tested against its own contract elsewhere.
 */
export interface VaultDouble extends Vault {
  /** Each reveal call: whose entries and which names. */
  readonly reveals: { readonly owner: OwnerScope; readonly names: readonly string[] }[];
}

export function createVaultDouble(): VaultDouble {
  const entries = new Map<string, Map<string, { value: string; updatedAt: number }>>();
  const ownerKey = (owner: OwnerScope): string =>
    [owner.tenant, owner.issuer, owner.subject].map(escapeSegment).join("/");
  const of = (owner: OwnerScope): Map<string, { value: string; updatedAt: number }> => {
    const key = ownerKey(owner);
    let own = entries.get(key);
    if (own === undefined) {
      own = new Map();
      entries.set(key, own);
    }
    return own;
  };
  const reveals: VaultDouble["reveals"] = [];

  return {
    reveals,
    async put(owner, name, value) {
      const own = of(owner);
      const created = !own.has(name);
      own.set(name, { value, updatedAt: Date.now() });
      return { created };
    },
    async delete(owner, name) {
      return of(owner).delete(name);
    },
    async list(owner): Promise<VaultEntryInfo[]> {
      return [...of(owner)]
        .map(([name, entry]) => ({ name, updatedAt: entry.updatedAt, keyId: "double" }))
        .sort((a, b) => a.name.localeCompare(b.name));
    },
    async reveal(owner, names): Promise<RevealedEntries> {
      reveals.push({ owner: { ...owner }, names: [...names] });
      const own = of(owner);
      const values = new Map<string, string>();
      const missing: string[] = [];
      for (const name of names) {
        const entry = own.get(name);
        if (entry === undefined) missing.push(name);
        else values.set(name, entry.value);
      }
      return { values, missing };
    },
    async deleteAll(owner) {
      const own = of(owner);
      const count = own.size;
      own.clear();
      return count;
    },
    async resealAll() {
      return { resealed: 0, unreadable: 0 };
    },
    async keyUsage() {
      let count = 0;
      for (const own of entries.values()) count += own.size;
      return { double: count };
    },
  };
}
