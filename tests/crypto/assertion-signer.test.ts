import assert from "node:assert/strict";
import {
  createPrivateKey,
  createPublicKey,
  sign as edSign,
  verify as edVerify,
  randomBytes,
} from "node:crypto";
import { describe, it } from "node:test";
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  type JSONWebKeySet,
  jwtVerify,
} from "jose";
import {
  ASSERTION_TYPE,
  type AssertionSigner,
  createAssertionSigner,
} from "../../src/crypto/assertion-signer.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { isGateError } from "../../src/errors.ts";
import { makePrincipal } from "../../src/identity/principal.ts";

const ISSUER = "https://gate.example.com";
const UPSTREAM = "https://files.internal.example/mcp";
const OTHER_UPSTREAM = "https://mail.internal.example/mcp";

const principal = makePrincipal({
  kind: "jwt",
  issuer: "https://idp.example.com",
  subject: "user-42",
  tenant: "acme",
  scopes: ["files:read"],
  expiresAt: null,
});

function verify(token: string, jwks: unknown, audience = UPSTREAM) {
  return jwtVerify(token, createLocalJWKSet(jwks as JSONWebKeySet), {
    issuer: ISSUER,
    audience,
    algorithms: ["EdDSA"],
    typ: ASSERTION_TYPE,
  });
}

function signer(keyring: Keyring, extra: { lifetimeMs?: number; now?: () => number } = {}): AssertionSigner {
  return createAssertionSigner({ keyring, issuer: ISSUER, ...extra });
}

/** Rejects with the given jose error code: the check that failed is the one the test is about. */
const rejects = (promise: Promise<unknown>, code: string) =>
  assert.rejects(promise, (e: unknown) => (e as { code?: unknown }).code === code);

describe("identity assertion signer", () => {
  it("an upstream verifies the assertion against the JWKS and sees the principal", async () => {
    const s = signer(Keyring.ephemeral());
    const token = await s.sign(principal, { audience: UPSTREAM });
    const { payload, protectedHeader } = await verify(token, s.jwks());
    assert.deepEqual(protectedHeader, { alg: "EdDSA", typ: ASSERTION_TYPE, kid: s.activeKid });
    assert.equal(payload.iss, ISSUER);
    assert.equal(payload.aud, UPSTREAM);
    assert.equal(payload.sub, "user-42");
    assert.equal(payload["tenant"], "acme");
    assert.equal(payload["principal_iss"], "https://idp.example.com");
    assert.match(String(payload.jti), /^[A-Za-z0-9_-]{32}$/);
    assert.deepEqual(Object.keys(payload).sort(), [
      "aud",
      "exp",
      "iat",
      "iss",
      "jti",
      "principal_iss",
      "sub",
      "tenant",
    ]);
  });

  it("lives at most 60 s, from the injected clock", async () => {
    const at = 1_800_000_000_500;
    const s = signer(Keyring.ephemeral(), { now: () => at });
    const claims = decodeJwt(await s.sign(principal, { audience: UPSTREAM }));
    assert.equal(claims.iat, 1_800_000_000);
    assert.equal(claims.exp, 1_800_000_060);

    const short = signer(Keyring.ephemeral(), { lifetimeMs: 5_000 });
    const shortClaims = decodeJwt(await short.sign(principal, { audience: UPSTREAM }));
    assert.equal(shortClaims.exp! - shortClaims.iat!, 5);
  });

  it("an expired assertion is refused by the upstream", async () => {
    const s = signer(Keyring.ephemeral(), { now: () => Date.now() - 61_000 });
    const token = await s.sign(principal, { audience: UPSTREAM });
    await rejects(verify(token, s.jwks()), "ERR_JWT_EXPIRED");
  });

  it("refuses a lifetime over 60 s, or not in whole seconds, at creation", () => {
    for (const lifetimeMs of [60_001, 61_000, 3_600_000, 0, -1000, 500, 1500, Number.NaN, Infinity]) {
      assert.throws(
        () => signer(Keyring.ephemeral(), { lifetimeMs }),
        (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
        String(lifetimeMs),
      );
    }
    assert.equal(signer(Keyring.ephemeral(), { lifetimeMs: 60_000 }).lifetimeMs, 60_000);
  });

  it("an assertion for one upstream does not verify at another", async () => {
    const s = signer(Keyring.ephemeral());
    const token = await s.sign(principal, { audience: UPSTREAM });
    await verify(token, s.jwks(), UPSTREAM);
    await rejects(verify(token, s.jwks(), OTHER_UPSTREAM), "ERR_JWT_CLAIM_VALIDATION_FAILED");
  });

  it("replicas with the same master key publish the same JWKS and verify each other", async () => {
    const key = randomBytes(32);
    const a = signer(Keyring.fromKeys([{ id: "k1", key }], "k1"));
    const b = signer(Keyring.fromKeys([{ id: "k1", key: Buffer.from(key) }], "k1"));
    assert.deepEqual(a.jwks(), b.jwks());
    await verify(await a.sign(principal, { audience: UPSTREAM }), b.jwks());
    await verify(await b.sign(principal, { audience: UPSTREAM }), a.jwks());
  });

  it("a different master key does not verify", async () => {
    const a = signer(Keyring.ephemeral());
    const b = signer(Keyring.ephemeral());
    assert.notEqual(a.activeKid, b.activeKid);
    await rejects(
      verify(await a.sign(principal, { audience: UPSTREAM }), b.jwks()),
      "ERR_JWKS_NO_MATCHING_KEY",
    );
    // Even with b's key published under a's kid, the signature does not check out.
    const forged = { keys: [{ ...b.jwks().keys[0]!, kid: a.activeKid }] };
    await rejects(
      verify(await a.sign(principal, { audience: UPSTREAM }), forged),
      "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
    );
  });

  it("after rotation old and new assertions verify, and new ones carry the new kid", async () => {
    const oldKey = randomBytes(32);
    const newKey = randomBytes(32);
    const before = signer(Keyring.fromKeys([{ id: "2024", key: oldKey }], "2024"));
    const oldToken = await before.sign(principal, { audience: UPSTREAM });

    const after = signer(
      Keyring.fromKeys(
        [
          { id: "2024", key: oldKey },
          { id: "2025", key: newKey },
        ],
        "2025",
      ),
    );
    const newToken = await after.sign(principal, { audience: UPSTREAM });
    const jwks = after.jwks();
    assert.equal(jwks.keys.length, 2);
    assert.equal(jwks.keys[0]!.kid, after.activeKid);
    assert.ok(jwks.keys.some((k) => k.kid === before.activeKid));

    assert.equal((await verify(oldToken, jwks)).protectedHeader.kid, before.activeKid);
    const fresh = await verify(newToken, jwks);
    assert.equal(fresh.protectedHeader.kid, after.activeKid);
    assert.notEqual(after.activeKid, before.activeKid);
    // The old key's entry is unchanged by rotation: replicas not yet rotated still agree on it.
    assert.deepEqual(
      jwks.keys.find((k) => k.kid === before.activeKid),
      before.jwks().keys[0],
    );
    // A replica that has not rotated yet cannot verify the new key's assertions.
    await rejects(verify(newToken, before.jwks()), "ERR_JWKS_NO_MATCHING_KEY");
  });

  it("the JWKS holds public members only, and kid is the RFC 7638 thumbprint", async () => {
    const keyring = Keyring.fromKeys(
      [
        { id: "a", key: randomBytes(32) },
        { id: "b", key: randomBytes(32) },
      ],
      "a",
    );
    const s = signer(keyring);
    const jwks = s.jwks();
    const text = JSON.stringify(jwks);
    for (const privateMember of ['"d"', '"p"', '"q"', '"dp"', '"dq"', '"qi"', '"k"', '"oth"']) {
      assert.ok(!text.includes(privateMember), privateMember);
    }
    for (const key of jwks.keys) {
      assert.deepEqual(Object.keys(key).sort(), ["alg", "crv", "kid", "kty", "use", "x"]);
      assert.equal(key.kty, "OKP");
      assert.equal(key.crv, "Ed25519");
      assert.equal(key.use, "sig");
      assert.equal(key.alg, "EdDSA");
      assert.equal(Buffer.from(key.x, "base64url").byteLength, 32);
      assert.equal(key.kid, await calculateJwkThumbprint({ kty: key.kty, crv: key.crv, x: key.x }, "sha256"));
      // The master key id is not what identifies the key.
      assert.ok(!["a", "b"].includes(key.kid));
    }
  });

  it("the signing key is Ed25519 from the assertion-signing purpose subkey (pinned vector)", () => {
    const keyring = Keyring.fromKeys([{ id: "k", key: Buffer.alloc(32, 7) }], "k");
    const [key] = signer(keyring).jwks().keys;
    // Pinned: a change to the derivation would split replicas running different versions.
    assert.equal(key!.x, "4gcdKfgPj5bnnCJdQpLfUcW7tMCBeicaK1Id8oUwM3s");
    assert.equal(key!.kid, "SoHaXftohDptkDtTESXLwpErRWM-3Aw9QxIRk88eEPc");
    // Independently: a key built from the purpose subkey as the seed signs what the published key verifies.
    const seed = keyring.purposeKey("assertion-signing", "k");
    const privateKey = createPrivateKey({
      key: { kty: "OKP", crv: "Ed25519", d: seed.toString("base64url"), x: key!.x },
      format: "jwk",
    });
    const message = Buffer.from("tenantgate");
    const publicKey = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: key!.x }, format: "jwk" });
    assert.ok(edVerify(null, message, publicKey, edSign(null, message, privateKey)));
    // Not the master key itself, nor another purpose's subkey.
    assert.notDeepEqual(seed, Buffer.alloc(32, 7));
    assert.notDeepEqual(seed, keyring.purposeKey("audit-chain", "k"));
  });

  it("the JWKS is a copy: editing a response changes nothing published later", () => {
    const s = signer(Keyring.ephemeral());
    const first = s.jwks() as unknown as { keys: Array<Record<string, unknown>> };
    first.keys[0]!["d"] = "leak";
    first.keys[0]!["x"] = "tampered";
    first.keys.push({ kty: "OKP" });
    const second = s.jwks();
    assert.equal(second.keys.length, 1);
    assert.ok(!("d" in second.keys[0]!));
    assert.notEqual(second.keys[0]!.x, "tampered");
  });

  it("a tampered payload or header fails verification", async () => {
    const s = signer(Keyring.ephemeral());
    const token = await s.sign(principal, { audience: UPSTREAM });
    const [header, payload, signature] = token.split(".") as [string, string, string];
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
    claims.tenant = "other-tenant";
    const forgedPayload = Buffer.from(JSON.stringify(claims)).toString("base64url");
    await rejects(
      verify(`${header}.${forgedPayload}.${signature}`, s.jwks()),
      "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
    );

    const forgedHeader = Buffer.from(
      JSON.stringify({ ...decodeProtectedHeader(token), typ: "JWT" }),
    ).toString("base64url");
    await rejects(
      verify(`${forgedHeader}.${payload}.${signature}`, s.jwks()),
      "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
    );

    const flipped = Buffer.from(signature, "base64url");
    flipped[0]! ^= 1;
    await rejects(
      verify(`${header}.${payload}.${flipped.toString("base64url")}`, s.jwks()),
      "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
    );
  });

  it("jti values are distinct over 1,000 signs", async () => {
    const s = signer(Keyring.ephemeral());
    const jtis = new Set<unknown>();
    for (let i = 0; i < 1000; i++) jtis.add(decodeJwt(await s.sign(principal, { audience: UPSTREAM })).jti);
    assert.equal(jtis.size, 1000);
  });

  it("refuses bad arguments with GateError", async () => {
    assert.throws(
      () => createAssertionSigner({ keyring: Keyring.ephemeral(), issuer: "" }),
      (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
    const s = signer(Keyring.ephemeral());
    for (const audience of ["", "a\nb", ["x"] as unknown as string, undefined as unknown as string]) {
      await assert.rejects(s.sign(principal, { audience }), (e: unknown) =>
        isGateError(e, "ERR_ARGUMENT_INVALID"),
      );
    }
    await assert.rejects(s.sign({ ...principal, subject: "" }, { audience: UPSTREAM }), (e: unknown) =>
      isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
    const broken = signer(Keyring.ephemeral(), { now: () => Number.NaN });
    await assert.rejects(broken.sign(principal, { audience: UPSTREAM }), (e: unknown) =>
      isGateError(e, "ERR_INTERNAL"),
    );
  });
});
