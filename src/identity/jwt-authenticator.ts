import { errors, jwtVerify } from "jose";
import { GateError, invalidArgument } from "../errors.ts";
import { invalidCredential } from "./failure.ts";
import { fileJwks, type IssuerKeySet, type RemoteJwksOptions, remoteJwks } from "./jwks.ts";
import {
  isIdentityString,
  isScopeToken,
  makePrincipal,
  type Principal,
  RESERVED_ISSUER_PREFIX,
} from "./principal.ts";
import { createVerifiedTokenCache } from "./verified-token-cache.ts";

/**
 * Bearer JWTs from configured issuers (DESIGN "Authorization"; RFC 9068 access tokens, RFC 8707
 * audiences). Asymmetric algorithms only: with an HMAC algorithm the verification key is the
 * signing key, and the classic confusion attack signs with an issuer's *public* key as the HMAC
 * secret. `none` is not an algorithm here at all.
 */
export const ASYMMETRIC_JWT_ALGORITHMS = Object.freeze([
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "ES256",
  "ES384",
  "ES512",
  "EdDSA",
  "Ed25519",
] as const);
export type JwtAlgorithm = (typeof ASYMMETRIC_JWT_ALGORITHMS)[number];
const ASYMMETRIC: ReadonlySet<string> = new Set(ASYMMETRIC_JWT_ALGORITHMS);

export interface JwtIssuerConfig {
  /** Exactly the `iss` the issuer puts in its tokens. */
  readonly issuer: string;
  /** Exactly one of `jwksUrl` (https, or http to loopback) and `jwksFile`. */
  readonly jwksUrl?: string;
  readonly jwksFile?: string;
  /** The algorithms this issuer signs with; a subset of `ASYMMETRIC_JWT_ALGORITHMS`. */
  readonly algorithms: readonly string[];
  /** Tolerance for `exp` and `nbf`, at most 5 minutes. */
  readonly clockSkewMs: number;
  /** The claim naming the tenant; required in every token when set. Unset: the tenant is `issuer`. */
  readonly tenantClaim?: string;
}

export interface JwtAuthenticatorOptions {
  readonly issuers: readonly JwtIssuerConfig[];
  /** Fetch tuning for issuers with a `jwksUrl`. */
  readonly jwks?: Partial<RemoteJwksOptions>;
  readonly cache?: { readonly maxEntries?: number; readonly maxAgeMs?: number };
  /** The clock, in epoch ms; tests move it. */
  readonly now?: () => number;
}

export interface JwtVerifyOptions {
  /** The audience of the upstream being called (RFC 8707); the token's `aud` must name it. */
  readonly audience: string;
}

export interface JwtAuthenticator {
  /**
   * The principal of a valid token for `audience`. Every refusal is `ERR_AUTH_INVALID` with the
   * same message and a reason code in `detail`; nothing of the token or its claims is in the error.
   */
  verify(token: string, options: JwtVerifyOptions): Promise<Principal>;
  /**
   * The principal of a token already verified for `audience` and still fresh, from the verified-token
   * cache only (one digest, no key or signature work); undefined otherwise.
   */
  verifiedBefore(token: string, options: JwtVerifyOptions): Principal | undefined;
}

export const DEFAULT_REMOTE_JWKS: RemoteJwksOptions = Object.freeze({
  timeoutMs: 3_000,
  cooldownMs: 30_000,
  maxAgeMs: 10 * 60_000,
  retryAfterFailureMs: 5_000,
});
export const DEFAULT_VERIFIED_CACHE = Object.freeze({ maxEntries: 10_000, maxAgeMs: 5 * 60_000 });
/** A JWT longer than this is refused before decoding (the bearer header bounds it the same way). */
export const MAX_JWT_LENGTH = 8 * 1024;
const MAX_CLOCK_SKEW_MS = 5 * 60_000;
const MAX_KID_LENGTH = 256;

interface Issuer {
  readonly issuer: string;
  readonly algorithms: ReadonlySet<string>;
  readonly clockSkewMs: number;
  readonly tenantClaim: string | undefined;
  readonly keys: IssuerKeySet;
}

type Claims = Record<string, unknown>;

export function createJwtAuthenticator(options: JwtAuthenticatorOptions): JwtAuthenticator {
  const now = options.now ?? Date.now;
  const remote = remoteOptions(options.jwks);
  const issuers = new Map<string, Issuer>();
  if (!Array.isArray(options.issuers) || options.issuers.length === 0) {
    throw new GateError("ERR_CONFIG_INVALID", "issuers must list at least one issuer");
  }
  for (const [index, config] of options.issuers.entries()) {
    const issuer = issuerFrom(config, `issuers[${index}]`, remote);
    if (issuers.has(issuer.issuer)) {
      throw new GateError("ERR_CONFIG_INVALID", `issuers[${index}].issuer is listed twice`);
    }
    issuers.set(issuer.issuer, issuer);
  }
  const cache = createVerifiedTokenCache({
    maxEntries: options.cache?.maxEntries ?? DEFAULT_VERIFIED_CACHE.maxEntries,
    maxAgeMs: options.cache?.maxAgeMs ?? DEFAULT_VERIFIED_CACHE.maxAgeMs,
    now,
  });

  return {
    verifiedBefore(token, { audience }) {
      if (typeof token !== "string" || typeof audience !== "string" || audience.length === 0)
        return undefined;
      return cache.get(token, audience);
    },
    async verify(token, { audience }) {
      if (typeof audience !== "string" || audience.length === 0) {
        throw invalidArgument("audience", "must be a non-empty string");
      }
      const parts = splitCompact(token);
      const cached = cache.get(token, audience);
      if (cached !== undefined) return cached;

      // Cheap checks first (DESIGN invariant 7): nothing below costs a signature check or a fetch.
      const header = decodeJson(parts[0]);
      const claims = decodeJson(parts[1]);
      const alg = header["alg"];
      if (typeof alg !== "string" || !ASYMMETRIC.has(alg)) throw invalidCredential("algorithm");
      // jose understands no critical extension that a JWT may use (b64=false is refused for JWTs).
      if (Object.hasOwn(header, "crit")) throw invalidCredential("malformed");
      const iss = claims["iss"];
      if (typeof iss !== "string") throw invalidCredential("malformed");
      // Choosing the issuer from the unverified `iss` is safe only because the signature is then
      // checked against that issuer's keys alone, with that issuer's algorithms, and jose checks
      // `iss` again: a token claiming issuer A verifies only if A's key signed it.
      const issuer = issuers.get(iss);
      if (issuer === undefined) throw invalidCredential("unknown-issuer");
      if (!issuer.algorithms.has(alg)) throw invalidCredential("algorithm");
      checkKid(header, issuer);
      const nowMs = now();
      checkTimes(claims, issuer, nowMs);
      if (!audienceMatches(claims["aud"], audience)) throw invalidCredential("audience");
      identityOf(claims, issuer);

      let verified: Claims;
      try {
        const result = await jwtVerify(token, issuer.keys.resolve, {
          algorithms: [...issuer.algorithms],
          issuer: issuer.issuer,
          audience,
          clockTolerance: issuer.clockSkewMs / 1000,
          requiredClaims: ["exp", "sub"],
          currentDate: new Date(nowMs),
        });
        verified = result.payload as Claims;
      } catch (error) {
        throw verificationFailure(error);
      }

      // The principal is built from the verified payload only (invariant 1).
      const identity = identityOf(verified, issuer);
      const expiresAt = (verified["exp"] as number) * 1000;
      const principal = makePrincipal({ kind: "jwt", issuer: issuer.issuer, expiresAt, ...identity });
      cache.set(token, audience, principal, expiresAt);
      return principal;
    },
  };
}

function configError(setting: string, problem: string): GateError {
  return new GateError("ERR_CONFIG_INVALID", `${setting} ${problem}`);
}

function remoteOptions(given: Partial<RemoteJwksOptions> | undefined): RemoteJwksOptions {
  const options = { ...DEFAULT_REMOTE_JWKS, ...given };
  const check = (name: keyof RemoteJwksOptions, min: number, max: number) => {
    const value = options[name];
    if (!Number.isSafeInteger(value) || value < min || value > max) {
      throw configError(`jwks.${name}`, `must be an integer from ${min} to ${max}`);
    }
  };
  // A fetch that may hang holds every request waiting on it: bounded, and well under a client's
  // own timeout.
  check("timeoutMs", 1, 30_000);
  check("cooldownMs", 0, 24 * 3_600_000);
  check("maxAgeMs", options.cooldownMs, 24 * 3_600_000);
  check("retryAfterFailureMs", 0, 3_600_000);
  return options;
}

function issuerFrom(config: JwtIssuerConfig, setting: string, remote: RemoteJwksOptions): Issuer {
  const { issuer, jwksUrl, jwksFile, algorithms, clockSkewMs, tenantClaim } = config;
  if (typeof issuer !== "string" || issuer.length === 0 || issuer.length > 1024 || !issuer.isWellFormed()) {
    throw configError(`${setting}.issuer`, "must be a non-empty string");
  }
  // tenantgate names API key and anonymous principals under this prefix; an issuer using it could
  // mint subjects that collide with them.
  if (issuer.startsWith(RESERVED_ISSUER_PREFIX)) {
    throw configError(`${setting}.issuer`, `must not start with ${RESERVED_ISSUER_PREFIX}`);
  }
  if (!Array.isArray(algorithms) || algorithms.length === 0) {
    throw configError(`${setting}.algorithms`, "must list at least one algorithm");
  }
  for (const alg of algorithms) {
    if (typeof alg !== "string" || !ASYMMETRIC.has(alg)) {
      throw configError(`${setting}.algorithms`, `may only hold ${ASYMMETRIC_JWT_ALGORITHMS.join(", ")}`);
    }
  }
  if (!Number.isSafeInteger(clockSkewMs) || clockSkewMs < 0 || clockSkewMs > MAX_CLOCK_SKEW_MS) {
    throw configError(`${setting}.clockSkewMs`, `must be an integer from 0 to ${MAX_CLOCK_SKEW_MS}`);
  }
  if (tenantClaim !== undefined && !isIdentityString(tenantClaim)) {
    throw configError(`${setting}.tenantClaim`, "must be a non-empty claim name");
  }
  if ((jwksUrl === undefined) === (jwksFile === undefined)) {
    throw configError(setting, "needs exactly one of jwksUrl and jwksFile");
  }
  const keys =
    jwksUrl !== undefined
      ? remoteJwks(jwksUrl, `${setting}.jwksUrl`, remote)
      : fileJwks(jwksFile as string, `${setting}.jwksFile`);
  return { issuer, algorithms: new Set(algorithms), clockSkewMs, tenantClaim, keys };
}

const COMPACT_JWS = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/;

/** Header, payload and signature of a compact JWS, each non-empty canonical-alphabet base64url. */
function splitCompact(token: string): [string, string, string] {
  if (typeof token !== "string" || token.length > MAX_JWT_LENGTH) throw invalidCredential("malformed");
  const match = COMPACT_JWS.exec(token);
  if (match === null) throw invalidCredential("malformed");
  const parts: [string, string, string] = [match[1]!, match[2]!, match[3]!];
  // A base64 group of one character encodes no whole byte: no encoder produces it.
  if (parts.some((part) => part.length % 4 === 1)) throw invalidCredential("malformed");
  return parts;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** A JSON object from base64url; the same bytes and parser jose uses, so both see the same claims. */
function decodeJson(part: string): Claims {
  let value: unknown;
  try {
    value = JSON.parse(strictUtf8.decode(Buffer.from(part, "base64url")));
  } catch {
    throw invalidCredential("malformed");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalidCredential("malformed");
  }
  return value as Claims;
}

function checkKid(header: Claims, issuer: Issuer): void {
  if (Object.hasOwn(header, "kid")) {
    const kid = header["kid"];
    if (typeof kid !== "string" || kid.length === 0 || kid.length > MAX_KID_LENGTH) {
      throw invalidCredential("malformed");
    }
    return;
  }
  // Without a `kid` the key is ambiguous once the set holds several; jose would refuse it too, but
  // only after a fetch. A remote set not yet fetched is left to jose.
  const count = issuer.keys.keyCount();
  if (count !== undefined && count > 1) throw invalidCredential("missing-kid");
}

function numericDate(value: unknown): number {
  if (typeof value !== "number" || !Number.isFinite(value)) throw invalidCredential("malformed");
  return value;
}

const MAX_TOKEN_LIFETIME_MS = 366 * 24 * 60 * 60 * 1000;

function checkTimes(claims: Claims, issuer: Issuer, nowMs: number): void {
  // `exp` is required: a token that never expires cannot be bounded by anything we control.
  if (!Object.hasOwn(claims, "exp")) throw invalidCredential("malformed");
  const expMs = numericDate(claims["exp"]) * 1000;
  if (expMs <= nowMs - issuer.clockSkewMs) throw invalidCredential("expired");
  // A token valid for more than a year is not an access token anyone meant to issue, and an `exp`
  // far enough out overflows the times derived from it (stream end timers, audit dates).
  if (expMs > nowMs + MAX_TOKEN_LIFETIME_MS) throw invalidCredential("lifetime");
  // A sender-constrained token (RFC 8705 mTLS, RFC 9449 DPoP) is only as good as its proof of
  // possession, which this gateway does not check: accepting it as a plain bearer token would make a
  // stolen bound token usable here.
  if (Object.hasOwn(claims, "cnf")) throw invalidCredential("sender-constrained");
  if (Object.hasOwn(claims, "nbf") && numericDate(claims["nbf"]) * 1000 > nowMs + issuer.clockSkewMs) {
    throw invalidCredential("not-yet-valid");
  }
}

function audienceMatches(aud: unknown, audience: string): boolean {
  if (typeof aud === "string") return aud === audience;
  return Array.isArray(aud) && aud.includes(audience);
}

/** Subject, tenant and scopes from a claims set; refuses what cannot name an identity. */
function identityOf(
  claims: Claims,
  issuer: Issuer,
): { subject: string; tenant: string; scopes: readonly string[] } {
  const subject = claims["sub"];
  if (!isIdentityString(subject)) throw invalidCredential("subject");
  let tenant = issuer.issuer;
  if (issuer.tenantClaim !== undefined) {
    // Required when configured (invariant 1): absent, empty or not a string is a refusal, never a
    // fallback to the issuer, which would merge the token into another tenant.
    const value = Object.hasOwn(claims, issuer.tenantClaim) ? claims[issuer.tenantClaim] : undefined;
    if (!isIdentityString(value)) throw invalidCredential("tenant-claim");
    tenant = value;
  }
  return { subject, tenant, scopes: scopesOf(claims) };
}

/**
 * Granted scopes: `scope`, a space-separated string (RFC 9068 section 2.2.3, RFC 8693), or else
 * `scp`, which some issuers send as an array and others as a space-separated string. A claim of
 * another shape is refused rather than read as "no scopes", so a token is never half-understood.
 */
function scopesOf(claims: Claims): string[] {
  const name = Object.hasOwn(claims, "scope") ? "scope" : Object.hasOwn(claims, "scp") ? "scp" : undefined;
  if (name === undefined) return [];
  const value = claims[name];
  const scopes =
    typeof value === "string"
      ? value.split(" ").filter((scope) => scope !== "")
      : name === "scp" && Array.isArray(value)
        ? value
        : undefined;
  if (scopes === undefined || !scopes.every(isScopeToken)) throw invalidCredential("scope-claim");
  return scopes;
}

/**
 * jose's failures as reason codes. The jose error itself is dropped, never attached as a cause:
 * claim errors carry the whole payload.
 */
function verificationFailure(error: unknown): GateError {
  // Key selection failures arrive already classified (see jwks.ts).
  if (error instanceof GateError) return error;
  if (error instanceof errors.JWSSignatureVerificationFailed) return invalidCredential("bad-signature");
  if (error instanceof errors.JOSEAlgNotAllowed) return invalidCredential("algorithm");
  if (error instanceof errors.JWTExpired) return invalidCredential("expired");
  if (error instanceof errors.JWTClaimValidationFailed) {
    switch (error.claim) {
      case "aud":
        return invalidCredential("audience");
      case "nbf":
        return invalidCredential("not-yet-valid");
      case "sub":
        return invalidCredential("subject");
      case "iss":
        return invalidCredential("unknown-issuer");
      default:
        return invalidCredential("malformed");
    }
  }
  if (error instanceof errors.JWSInvalid || error instanceof errors.JWTInvalid) {
    return invalidCredential("malformed");
  }
  // jose raises TypeError for a key it will not use with the algorithm (an RSA modulus under 2048
  // bits, a key of the wrong type).
  if (error instanceof TypeError) return invalidCredential("key-unusable");
  return invalidCredential("unverifiable");
}
