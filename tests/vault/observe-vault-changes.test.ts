/**
 * `observeVaultChanges`: the gateway's hook that ends stdio processes holding a credential that was
 * just replaced or removed. It must report every change that happened, only those, and never let an
 * observer's failure change the vault's answer.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Keyring } from "../../src/crypto/keyring.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { createVault, observeVaultChanges } from "../../src/vault/vault.ts";

const owner = { tenant: "acme", issuer: "https://issuer.example", subject: "alice" };

describe("observeVaultChanges", () => {
  it("reports each write and each removal that happened, and nothing else", async () => {
    const seen: (string | null)[] = [];
    const vault = observeVaultChanges(
      createVault({ store: new MemoryStore(), keyring: Keyring.ephemeral() }),
      (o, entry) => {
        assert.deepEqual(o, owner);
        seen.push(entry);
      },
    );
    await vault.put(owner, "github_token", "first");
    await vault.put(owner, "github_token", "second");
    assert.equal(await vault.delete(owner, "absent_token"), false);
    assert.equal(await vault.delete(owner, "github_token"), true);
    assert.equal(await vault.deleteAll(owner), 0);
    await vault.put(owner, "other_token", "x");
    assert.equal(await vault.deleteAll(owner), 1);
    assert.deepEqual(seen, ["github_token", "github_token", "github_token", "other_token", null]);
    assert.deepEqual((await vault.reveal(owner, ["other_token"])).missing, ["other_token"]);
  });

  it("a failing observer changes nothing the vault answers", async () => {
    const vault = observeVaultChanges(
      createVault({ store: new MemoryStore(), keyring: Keyring.ephemeral() }),
      () => {
        throw new Error("observer failed");
      },
    );
    assert.deepEqual(await vault.put(owner, "github_token", "value"), { created: true });
    assert.equal((await vault.reveal(owner, ["github_token"])).values.get("github_token"), "value");
    assert.equal(await vault.delete(owner, "github_token"), true);
  });
});
