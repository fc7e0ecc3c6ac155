import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { isGateError } from "../../src/errors.ts";
import {
  bucketKey,
  counterKey,
  escapeSegment,
  globalIndexKey,
  leaseKey,
  ownedKey,
  ownerIndexKey,
  ownershipKey,
  ownershipKeyFromDigest,
} from "../../src/store/keys.ts";
import { fastCheckParameters } from "../support/fast-check.ts";

const scope = { tenant: "t", issuer: "https://issuer.example", subject: "alice" };

describe("store key builder", () => {
  it("escaping is reversible, so the encoding is injective", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", minLength: 1, maxLength: 40 }), (segment) => {
        const escaped = escapeSegment(segment);
        assert.match(escaped, /^[A-Za-z0-9._~%-]+$/, "only unreserved characters and escapes");
        assert.equal(decodeURIComponent(escaped), segment);
      }),
      fastCheckParameters(2_000),
    );
  });

  it("a separator inside an id cannot forge another tenant's or principal's prefix", () => {
    const forged = ownedKey({ tenant: "t/data/victim", issuer: "i", subject: "s" }, "note", "x");
    const victim = ownedKey({ tenant: "t", issuer: "data", subject: "victim" }, "note", "x");
    assert.notEqual(forged.encoded, victim.encoded);
    assert.equal(ownedKey(scope, "note", "a/b").encoded.split("/").length, 6);
  });

  it("ownership keys hold the id's digest, never the id", () => {
    const key = ownershipKey("session", "raw-session-id-value");
    assert.ok(!key.encoded.includes("raw-session-id-value"));
    assert.notEqual(key.encoded, ownershipKey("task", "raw-session-id-value").encoded);
    assert.equal(key.encoded, ownershipKey("session", "raw-session-id-value").encoded);
  });

  it("an id chosen elsewhere is named with where it was chosen; parts cannot be re-split", () => {
    assert.notEqual(
      ownershipKey("task", "upstream-a", "1").encoded,
      ownershipKey("task", "upstream-b", "1").encoded,
    );
    assert.notEqual(ownershipKey("task", "ab", "c").encoded, ownershipKey("task", "a", "bc").encoded);
    assert.notEqual(ownershipKey("task", "2:ab1:c").encoded, ownershipKey("task", "ab", "c").encoded);
  });

  it("an ownership key rebuilt from its digest (operator paths) is the same key; nothing else is accepted", () => {
    const key = ownershipKey("session", "raw-session-id-value");
    const idDigest = key.segments[1]!;
    assert.equal(ownershipKeyFromDigest("session", idDigest).encoded, key.encoded);
    assert.notEqual(ownershipKeyFromDigest("task", idDigest).encoded, key.encoded);
    const invalid = (fn: () => unknown) =>
      assert.throws(fn, (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"));
    for (const bad of [
      "",
      "raw-session-id-value",
      idDigest.slice(1),
      `${idDigest}A`,
      `${idDigest.slice(1)}/`,
    ]) {
      invalid(() => ownershipKeyFromDigest("session", bad));
    }
    invalid(() => ownershipKeyFromDigest("session", `${idDigest.slice(1)}=`));
    invalid(() => ownershipKeyFromDigest("session", 42 as unknown as string));
    invalid(() => ownershipKeyFromDigest("Session", idDigest));
  });

  it("namespaces keep records, counters, indexes, buckets and leases apart", () => {
    const encodings = [
      ownedKey(scope, "session", "x").encoded,
      ownerIndexKey(scope, "session").encoded,
      counterKey("session", "x").encoded,
      ownershipKey("session", "x").encoded,
      bucketKey("session", "x").encoded,
      leaseKey("session", "x").encoded,
    ];
    assert.equal(new Set(encodings.map((e) => e.split("/")[0])).size, 6);
  });

  it("a global index never equals a principal's index, whatever the principal is called", () => {
    assert.equal(globalIndexKey("vault-key", "k1").encoded, "index/vault-key/k1");
    // The owner index with every segment chosen to spell the global one still has four segments.
    const spelled = ownerIndexKey({ tenant: "vault-key", issuer: "k1", subject: "x" }, "y");
    assert.equal(spelled.encoded.split("/").length, 5);
    const segment = fc.string({ minLength: 1, maxLength: 8 });
    fc.assert(
      fc.property(
        segment,
        segment,
        segment,
        fc.constantFrom("vault-key", "vault", "session"),
        (a, b, c, kind) => {
          const owners = [
            ownerIndexKey({ tenant: kind, issuer: a, subject: b }, "vault").encoded,
            ownerIndexKey({ tenant: a, issuer: b, subject: c }, kind).encoded,
          ];
          for (const global of [globalIndexKey(kind, a).encoded, globalIndexKey(kind, a, b).encoded]) {
            assert.ok(!owners.includes(global));
          }
        },
      ),
      fastCheckParameters(500),
    );
    const invalid = (fn: () => unknown) =>
      assert.throws(fn, (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"));
    invalid(() => (globalIndexKey as (kind: string, ...parts: string[]) => unknown)("vault-key"));
    invalid(() =>
      (globalIndexKey as (kind: string, ...parts: string[]) => unknown)("vault-key", "a", "b", "c"),
    );
    invalid(() => globalIndexKey("vault-key", ""));
    invalid(() => globalIndexKey("Vault", "k1"));
  });

  it("refuses empty, oversized and ill-formed segments and bad kinds", () => {
    const invalid = (fn: () => unknown) =>
      assert.throws(fn, (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"));
    invalid(() => ownedKey({ ...scope, tenant: "" }, "note", "x"));
    invalid(() => ownedKey(scope, "note", "x".repeat(1025)));
    invalid(() => ownedKey(scope, "note", "\udc00"));
    invalid(() => ownedKey(scope, "note"));
    invalid(() => ownedKey(scope, "Note", "x"));
    invalid(() => counterKey("a/b"));
    invalid(() => bucketKey("Rate", "x"));
    invalid(() => leaseKey("connections", ""));
    invalid(() => ownershipKey("task", "upstream", ""));
    invalid(() => ownershipKey("task", "x".repeat(1025)));
  });
});
