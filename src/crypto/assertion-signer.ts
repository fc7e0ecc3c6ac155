import {
  createHash,
  createPrivateKey,
  createPublicKey,
  sign as cryptoSign,
  type KeyObject,
} from "node:crypto";
import { GateError, invalidArgument } from "../errors.ts";
import { isIdentityString, type Principal } from "../identity/principal.ts";
import { mintId } from "./ids.ts";
import { Keyring } from "./keyring.ts";

/**
 * Signs the `Tenantgate-Assertion` the gateway sends upstream (DESIGN, "MCP specifics" →
 * Authorization): an EdDSA JWT that tells one upstream who the verified caller is.
 *
 * Keys. Each loaded master key yields one Ed25519 key whose 32-byte seed is the keyring's purpose
 * subkey "assertion-signing" (DESIGN invariant 5: nothing signs with a master key, and this subkey
 * is disjoint from every other use). The derivation is deterministic, so every replica holding the
 * same master keys signs with, and publishes, the same keys without sharing any state, and rotating
 * the master key (add one, make it active) adds a signing key while the old one stays published.
 *
 * `kid` is the RFC 7638 thumbprint of the public key. The master key id is operator-chosen text
 * (often a date or an environment name); a thumbprint says nothing about the deployment, is stable
 * across replicas, and changes exactly when the key does.
 *
 * `typ` is "tenantgate-assertion+jwt" (RFC 8725 section 3.11 explicit typing): an upstream that
 * checks it cannot be fed some other JWT signed by a key it trusts, and this key's tokens cannot be
 * replayed where a plain "JWT" (an access token) is expected.
 */

export const ASSERTION_TYPE = "tenantgate-assertion+jwt";
export const ASSERTION_ALGORITHM = "EdDSA";
/** DESIGN: an assertion lives at most 60 s, so a leaked one is worth little for long. */
export const MAX_ASSERTION_LIFETIME_MS = 60_000;
const SIGNING_PURPOSE = "assertion-signing";
const SEED_BYTES = 32;
// PKCS#8 PrivateKeyInfo for Ed25519 (RFC 8410) up to the 32-byte seed: version 0, algorithm
// 1.3.101.112, then an OCTET STRING holding an OCTET STRING of 32 bytes.
const ED25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const MAX_CLAIM_LENGTH = 2048;
const CONTROL_CHARACTER = /\p{Cc}/u;

/** A public verification key as published in the JWKS. Nothing else is ever in it. */
export interface AssertionPublicJwk {
  readonly kty: "OKP";
  readonly crv: "Ed25519";
  readonly x: string;
  readonly kid: string;
  readonly use: "sig";
  readonly alg: "EdDSA";
}

export interface AssertionJwks {
  readonly keys: readonly AssertionPublicJwk[];
}

export interface AssertionSignerOptions {
  readonly keyring: Keyring;
  /** The gateway's publicUrl; becomes `iss`. */
  readonly issuer: string;
  /** Whole seconds, 1 s to 60 s. Default 60 s. */
  readonly lifetimeMs?: number;
  /** Epoch ms; for tests. Default `Date.now`. */
  readonly now?: () => number;
}

export interface SignAssertionOptions {
  /** The one upstream this assertion is for; becomes `aud` (a single string, never a list). */
  readonly audience: string;
}

export interface AssertionSigner {
  readonly issuer: string;
  readonly lifetimeMs: number;
  /** The kid that new assertions carry (the active master key's signing key). */
  readonly activeKid: string;
  sign(principal: Principal, options: SignAssertionOptions): Promise<string>;
  /** What `/.well-known/jwks.json` serves: every loaded key, active first. A fresh copy each call. */
  jwks(): AssertionJwks;
}

interface SigningKey {
  readonly privateKey: KeyObject;
  readonly publicJwk: AssertionPublicJwk;
}

export function createAssertionSigner(options: AssertionSignerOptions): AssertionSigner {
  if (typeof options !== "object" || options === null || !(options.keyring instanceof Keyring)) {
    throw invalidArgument("keyring", "must be a Keyring");
  }
  const { keyring, issuer, lifetimeMs = MAX_ASSERTION_LIFETIME_MS, now = Date.now } = options;
  if (!isClaimString(issuer) || !URL.canParse(issuer)) throw invalidArgument("issuer", "must be a URL");
  // JWT times are whole seconds; a fractional lifetime would have to be rounded one way or the other,
  // and rounding up could exceed the 60 s bound.
  if (
    !Number.isInteger(lifetimeMs) ||
    lifetimeMs < 1000 ||
    lifetimeMs > MAX_ASSERTION_LIFETIME_MS ||
    lifetimeMs % 1000 !== 0
  ) {
    throw invalidArgument(
      "lifetimeMs",
      `must be whole seconds from 1 s to ${MAX_ASSERTION_LIFETIME_MS / 1000} s`,
    );
  }
  if (typeof now !== "function") throw invalidArgument("now", "must be a function");
  const lifetimeSeconds = lifetimeMs / 1000;

  // Derived once, up front: a keyring's key set never changes, and a bad key should fail at start-up,
  // not on the first request.
  const byKeyId = new Map<string, SigningKey>();
  for (const keyId of keyring.keyIds) byKeyId.set(keyId, deriveSigningKey(keyring, keyId));
  const active = byKeyId.get(keyring.activeKeyId);
  if (!active) throw new GateError("ERR_INTERNAL", "the active master key has no signing key");

  // Active first, then the rest in keyring order. Two master keys with the same bytes would give the
  // same key twice; a JWKS with duplicate kids makes verifiers refuse it, so it is published once.
  const published: AssertionPublicJwk[] = [active.publicJwk];
  for (const { publicJwk } of byKeyId.values()) {
    if (!published.some((key) => key.kid === publicJwk.kid)) published.push(publicJwk);
  }

  const activeHeader = Buffer.from(
    JSON.stringify({ alg: ASSERTION_ALGORITHM, typ: ASSERTION_TYPE, kid: active.publicJwk.kid }),
  ).toString("base64url");

  return Object.freeze({
    issuer,
    lifetimeMs,
    activeKid: active.publicJwk.kid,
    async sign(principal: Principal, signOptions: SignAssertionOptions): Promise<string> {
      const audience = signOptions?.audience;
      if (!isClaimString(audience)) throw invalidArgument("audience", "must be a non-empty string");
      // The principal type already promises this; checked again because an assertion with an empty
      // or odd identity would be trusted by the upstream as-is.
      if (
        !isIdentityString(principal?.subject) ||
        !isIdentityString(principal.tenant) ||
        !isClaimString(principal.issuer)
      ) {
        throw invalidArgument("principal", "must have a subject, tenant and issuer");
      }
      let nowMs: number;
      try {
        nowMs = now();
      } catch (cause) {
        throw new GateError("ERR_INTERNAL", "the clock failed", { cause });
      }
      if (!Number.isFinite(nowMs) || nowMs < 0) throw new GateError("ERR_INTERNAL", "the clock gave no time");
      const iat = Math.floor(nowMs / 1000);
      // A compact JWS built directly and signed with node:crypto's one-shot Ed25519 sign: the same
      // token jose would produce, without WebCrypto's per-call job and promise (the largest single
      // cost on the gateway's request path, measured). The header is fixed per key.
      const payload = {
        tenant: principal.tenant,
        principal_iss: principal.issuer,
        iss: issuer,
        aud: audience,
        sub: principal.subject,
        jti: mintId(),
        iat,
        exp: iat + lifetimeSeconds,
      };
      try {
        const signingInput = `${activeHeader}.${Buffer.from(JSON.stringify(payload)).toString("base64url")}`;
        const signature = cryptoSign(null, Buffer.from(signingInput), active.privateKey);
        return `${signingInput}.${signature.toString("base64url")}`;
      } catch (cause) {
        throw new GateError("ERR_INTERNAL", "signing the identity assertion failed", { cause });
      }
    },
    jwks(): AssertionJwks {
      // Copies, so a caller that edits the response (or serialises it with extra fields) cannot
      // change what the next request publishes.
      return { keys: published.map((key) => ({ ...key })) };
    },
  });
}

function deriveSigningKey(keyring: Keyring, keyId: string): SigningKey {
  const seed = keyring.purposeKey(SIGNING_PURPOSE, keyId);
  if (seed.byteLength !== SEED_BYTES) {
    throw new GateError("ERR_KEY_INVALID", "an assertion signing seed must be 32 bytes");
  }
  const der = Buffer.concat([ED25519_PKCS8_PREFIX, seed]);
  let privateKey: KeyObject;
  let x: unknown;
  try {
    privateKey = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
    // The public half, exported on its own: `x` is computed by OpenSSL from the seed, and the
    // exported object cannot carry `d` because the key it comes from has none.
    x = createPublicKey(privateKey).export({ format: "jwk" }).x;
  } catch (cause) {
    throw new GateError("ERR_KEY_INVALID", "the assertion signing key could not be built", { cause });
  } finally {
    // The DER copy holds the seed; the KeyObject keeps its own copy.
    der.fill(0);
  }
  if (typeof x !== "string" || Buffer.from(x, "base64url").byteLength !== 32) {
    throw new GateError("ERR_KEY_INVALID", "the assertion signing key has no Ed25519 public key");
  }
  const publicJwk: AssertionPublicJwk = Object.freeze({
    kty: "OKP",
    crv: "Ed25519",
    x,
    kid: ed25519Thumbprint(x),
    use: "sig",
    alg: "EdDSA",
  });
  return { privateKey, publicJwk };
}

/**
 * RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 public key: the required members `crv`,
 * `kty`, `x` in lexicographic order, no whitespace (RFC 8037 section 2). Computed here rather than
 * with jose's async `calculateJwkThumbprint` so creating a signer stays synchronous; the tests check
 * both agree. `x` is base64url, so JSON.stringify adds no escapes.
 */
function ed25519Thumbprint(x: string): string {
  const canonical = `{"crv":"Ed25519","kty":"OKP","x":${JSON.stringify(x)}}`;
  return createHash("sha256").update(canonical, "utf8").digest("base64url");
}

/**
 * A non-empty, bounded, well-formed string without control characters: what `iss`, `aud` and
 * `principal_iss` must be for an upstream to compare them byte for byte without surprises.
 */
function isClaimString(value: unknown): value is string {
  return (
    typeof value === "string" &&
    value.length > 0 &&
    value.length <= MAX_CLAIM_LENGTH &&
    value.isWellFormed() &&
    !CONTROL_CHARACTER.test(value)
  );
}
