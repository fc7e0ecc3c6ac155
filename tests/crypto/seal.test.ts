import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Keyring } from "../../src/crypto/keyring.ts";
import { MAX_PLAINTEXT_BYTES, open, openToString, seal, sealedKeyId } from "../../src/crypto/seal.ts";
import { isGateError } from "../../src/errors.ts";
import { ownedKey } from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { fastCheckParameters } from "../support/fast-check.ts";

const alice = { purpose: "vault", owner: ["tenant-a", "https://issuer.example", "alice", "github_token"] };

function keyring(ids: string[], active: string): Keyring {
  return Keyring.fromKeys(
    ids.map((id) => ({ id, key: Buffer.alloc(32, id.charCodeAt(0)) })),
    active,
  );
}

/** Every open failure must look the same: same class, code and message. */
function assertOpenFails(fn: () => unknown, why: string): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(isGateError(error, "ERR_SEALED_VALUE_INVALID"), `${why}: wrong error ${String(error)}`);
    assert.equal(error.message, "decryption operation failed", why);
    assert.equal(error.detail, undefined, `${why}: no detail that tells which check failed`);
    return true;
  });
}

describe("seal and open", () => {
  it("round-trips text and bytes under the owner and purpose it was sealed for", () => {
    const ring = Keyring.ephemeral();
    assert.equal(openToString(ring, seal(ring, "ghp_secret", alice), alice), "ghp_secret");
    const bytes = randomBytes(100);
    assert.deepEqual(open(ring, seal(ring, bytes, alice), alice), bytes);
    assert.equal(openToString(ring, seal(ring, "", alice), alice), "");
  });

  it("uses a fresh IV for every message", () => {
    const ring = Keyring.ephemeral();
    const ivs = new Set(Array.from({ length: 2_000 }, () => seal(ring, "same", alice).split(".")[2]));
    assert.equal(ivs.size, 2_000);
  });

  it("C2 a ciphertext copied into another principal's row fails to open", async () => {
    const ring = Keyring.ephemeral();
    const store = new MemoryStore();
    const bobScope = { tenant: "tenant-b", issuer: "https://issuer.example", subject: "bob" };
    const aliceScope = { tenant: "tenant-a", issuer: "https://issuer.example", subject: "alice" };
    await store.put(ownedKey(aliceScope, "vault", "github_token"), seal(ring, "alice-token", alice));
    // An attacker with write access to the store copies alice's row into bob's.
    const stolen = await store.get(ownedKey(aliceScope, "vault", "github_token"));
    await store.put(ownedKey(bobScope, "vault", "github_token"), stolen!);
    const bob = { purpose: "vault", owner: ["tenant-b", "https://issuer.example", "bob", "github_token"] };
    const copied = await store.get(ownedKey(bobScope, "vault", "github_token"));
    assertOpenFails(() => open(ring, copied!, bob), "moved to bob's row");
    // Same tenant, other user; same user, other secret name; same owner, other purpose.
    assertOpenFails(
      () =>
        open(ring, copied!, {
          ...alice,
          owner: ["tenant-a", "https://issuer.example", "carol", "github_token"],
        }),
      "other subject",
    );
    assertOpenFails(
      () => open(ring, copied!, { ...alice, owner: [...alice.owner.slice(0, 3), "google_token"] }),
      "other name",
    );
    assertOpenFails(() => open(ring, copied!, { ...alice, purpose: "upstream-session" }), "other purpose");
    await store.close();
  });

  it("owner segments are length-prefixed: shifting a boundary does not open", () => {
    const ring = Keyring.ephemeral();
    const sealed = seal(ring, "x", { purpose: "vault", owner: ["ab", "c"] });
    assertOpenFails(() => open(ring, sealed, { purpose: "vault", owner: ["a", "bc"] }), "boundary shift");
    assertOpenFails(() => open(ring, sealed, { purpose: "vault", owner: ["abc"] }), "merged segments");
    assertOpenFails(() => open(ring, sealed, { purpose: "vault", owner: ["ab", "c", "x"] }), "extra segment");
  });

  it("any change to any byte of the sealed text is refused with the same error", async () => {
    const ring = Keyring.ephemeral();
    const sealed = seal(ring, "tamper me", alice);
    await fc.assert(
      fc.property(fc.nat({ max: sealed.length - 1 }), fc.constantFrom(..."ABCabc012-_.=+/ "), (at, c) => {
        const tampered = sealed.slice(0, at) + c + sealed.slice(at + 1);
        if (tampered === sealed) return;
        assertOpenFails(() => open(ring, tampered, alice), `byte ${at} set to ${c}`);
      }),
      fastCheckParameters(300),
    );
    for (const garbage of [
      "",
      ".",
      "v1...",
      "v1.ephemeral.AAAA.AAAA",
      `v2${sealed.slice(2)}`,
      `${sealed}.x`,
      "x".repeat(2 << 20),
    ]) {
      assertOpenFails(() => open(ring, garbage, alice), `garbage of length ${garbage.length}`);
    }
  });

  it("relabelling the key id is refused even when that key is loaded", () => {
    const ring = keyring(["k1", "k2"], "k1");
    const sealed = seal(ring, "x", alice);
    assertOpenFails(() => open(ring, sealed.replace(".k1.", ".k2."), alice), "relabelled key id");
  });

  it("rotation: values sealed under a retired active key still open; new ones use the new key", () => {
    const before = keyring(["k1"], "k1");
    const old = seal(before, "kept", alice);
    const after = keyring(["k1", "k2"], "k2");
    assert.equal(openToString(after, old, alice), "kept");
    const fresh = seal(after, "new", alice);
    assert.equal(sealedKeyId(fresh), "k2");
    assert.equal(sealedKeyId(old), "k1");
    for (const malformed of ["v1..a.b", "v1.k.1.a.b", "v2.k1.a.b", "v1.k/1.a.b"])
      assert.equal(sealedKeyId(malformed), null);
    assertOpenFails(() => open(keyring(["k2"], "k2"), old, alice), "key removed");
  });

  it("refuses an empty owner, ill-typed contexts, and plaintext too large to open again", () => {
    const ring = Keyring.ephemeral();
    const invalid = (fn: () => unknown) =>
      assert.throws(fn, (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"));
    invalid(() => seal(ring, "x", { purpose: "vault", owner: [] }));
    invalid(() => seal(ring, "x", { purpose: "vault", owner: [""] }));
    invalid(() => seal(ring, "x", { purpose: undefined, owner: ["a"] } as never));
    invalid(() => seal(ring, "x", { purpose: "vault", owner: [1] } as never));
    invalid(() => seal(ring, Buffer.alloc(MAX_PLAINTEXT_BYTES + 1), alice));
    const largest = seal(ring, Buffer.alloc(MAX_PLAINTEXT_BYTES, 7), alice);
    assert.equal(
      open(ring, largest, alice).byteLength,
      MAX_PLAINTEXT_BYTES,
      "the largest sealable value opens",
    );
    invalid(() => open(ring, largest, { purpose: "vault", owner: [] }));
  });

  it("sealing keys are not reachable as purpose keys", () => {
    const ring = Keyring.ephemeral();
    assert.notDeepEqual(ring.purposeKey("seal/vault"), ring.sealingKey("vault"));
  });

  it("a different master key with the same id does not open it", () => {
    const a = Keyring.fromKeys([{ id: "k", key: randomBytes(32) }], "k");
    const b = Keyring.fromKeys([{ id: "k", key: randomBytes(32) }], "k");
    assertOpenFails(() => open(b, seal(a, "x", alice), alice), "other master key");
  });
});
