import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { createIdentifierTagger, TAG_HEX_LENGTH } from "../../src/crypto/identifier-tag.ts";
import { digest, looksLikeMintedId, mintId } from "../../src/crypto/ids.ts";
import { isGateError } from "../../src/errors.ts";

describe("minted ids", () => {
  it("S10 ids are >= 128 bits of CSPRNG output in visible, URL-safe ASCII", () => {
    const ids = Array.from({ length: 10_000 }, () => mintId());
    for (const id of ids) {
      assert.match(id, /^[A-Za-z0-9_-]+$/);
      assert.ok(Buffer.from(id, "base64url").byteLength * 8 >= 128);
      assert.ok(looksLikeMintedId(id));
    }
    assert.equal(new Set(ids).size, ids.length);
    // Every character position varies: no constant prefix or counter hides in the id.
    for (let position = 0; position < ids[0]!.length - 1; position++) {
      assert.ok(new Set(ids.map((id) => id[position])).size > 30, `position ${position} barely varies`);
    }
  });

  it("refuses fewer than 128 bits", () => {
    assert.throws(
      () => mintId(15),
      (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
    assert.equal(Buffer.from(mintId(16), "base64url").byteLength, 16);
  });

  it("rejects shapes no minted id has", () => {
    for (const bad of [
      "",
      "short",
      "has space in it and is long enough",
      "a".repeat(200),
      "ä".repeat(30),
      "id/with/slashes/aaaaaaaa",
    ]) {
      assert.equal(looksLikeMintedId(bad), false, bad);
    }
  });
});

describe("digests", () => {
  it("are deterministic, separated by purpose, and reveal nothing of the input's shape", () => {
    assert.equal(digest("session", "abc"), digest("session", "abc"));
    assert.notEqual(digest("session", "abc"), digest("task", "abc"));
    assert.match(digest("session", "abc"), /^[A-Za-z0-9_-]{43}$/);
  });

  it("refuse ill-formed Unicode, which UTF-8 would merge with another string", () => {
    assert.throws(
      () => digest("task", "x\ud800"),
      (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
  });
});

describe("identifier tags for logs", () => {
  it(`are ${TAG_HEX_LENGTH} hex characters, stable per key, different across keys`, () => {
    const key = randomBytes(32);
    const tagger = createIdentifierTagger(key);
    const tag = tagger.tag("session-id-value");
    assert.match(tag, /^[0-9a-f]{12}$/);
    assert.equal(createIdentifierTagger(key).tag("session-id-value"), tag);
    assert.notEqual(createIdentifierTagger().tag("session-id-value"), tag, "the default key is per process");
    assert.notEqual(tagger.tag("session-id-valuf"), tag);
  });

  it("are HMAC-SHA256 of the UTF-16LE value under the key, cut to 12 hex (a fixed vector: tags in old trails stay comparable)", () => {
    const key = Buffer.alloc(32, 7);
    const expected = createHmac("sha256", key)
      .update("session-id-value", "utf16le")
      .digest("hex")
      .slice(0, 12);
    assert.equal(createIdentifierTagger(key).tag("session-id-value"), expected);
    assert.equal(createIdentifierTagger(key).tag("session-id-value"), "5f7463501ed8");
  });

  it("keep lone surrogates distinct from U+FFFD and never throw on them", () => {
    const tagger = createIdentifierTagger();
    assert.notEqual(tagger.tag("\ud800"), tagger.tag("\ufffd"));
    assert.notEqual(tagger.tag("\ud800"), tagger.tag("\udc00"));
  });

  it("refuse a short key", () => {
    assert.throws(
      () => createIdentifierTagger(randomBytes(16)),
      (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
  });
});
