import { type JWTVerifyGetKey, jwtVerify } from "jose";

/**
 * How an upstream behind tenantgate learns who is calling: it verifies the `Tenantgate-Assertion`
 * header the gateway adds to every request it forwards (DESIGN, "MCP specifics" → Authorization).
 * This is the whole job; copy it into your server.
 *
 * The gateway has already authenticated the caller (OAuth bearer token or API key). The upstream
 * never sees that credential; it sees this short-lived EdDSA JWT, signed with a key the gateway
 * publishes at `<publicUrl>/.well-known/jwks.json`.
 */

/** Who the gateway says is calling. Key your data by all three identity fields, never by fewer. */
export interface VerifiedAssertion {
  /** The tenant the caller's data belongs to (the `tenant` claim). */
  readonly tenant: string;
  /** Who vouched for the subject (`principal_iss`): the caller's identity provider, not the gateway. */
  readonly principalIssuer: string;
  /** The caller within that issuer (`sub`). */
  readonly subject: string;
  /** Unique per assertion; an upstream that wants replay protection remembers it until `exp`. */
  readonly jti: string;
}

export interface VerifyAssertionOptions {
  /** The gateway's publicUrl: the only party allowed to vouch for callers here. */
  readonly issuer: string;
  /** This upstream's `audience` as configured on the gateway. */
  readonly audience: string;
  /** `createRemoteJWKSet(new URL(".../.well-known/jwks.json"))`, or `createLocalJWKSet(jwks)`. */
  readonly keys: JWTVerifyGetKey;
}

/**
 * Verifies one header value. Resolves to the caller, or rejects (with jose's error, or a plain
 * Error): any rejection means answer 401 without saying why, since the reason helps only an attacker.
 */
export async function verifyTenantgateAssertion(
  headerValue: string | undefined,
  options: VerifyAssertionOptions,
): Promise<VerifiedAssertion> {
  if (typeof headerValue !== "string" || headerValue === "") throw new Error("no assertion");
  const { payload } = await jwtVerify(headerValue, options.keys, {
    // Pinned, never read from the token's header: the gateway signs only with Ed25519, and accepting
    // whatever `alg` a token names is the classic JWT downgrade.
    algorithms: ["EdDSA"],
    // Explicit typing (RFC 8725 section 3.11): an access token or ID token signed by a key in the
    // same JWKS is not an assertion and must not be accepted as one.
    typ: "tenantgate-assertion+jwt",
    // Only the gateway you deploy behind may speak for callers.
    issuer: options.issuer,
    // Each upstream gets its own audience, so an assertion captured at one upstream (or sent to a
    // compromised one) cannot be replayed against this one.
    audience: options.audience,
    // The gateway signs a fresh assertion per request with exp <= 60 s; refusing anything older
    // bounds a leaked header's worth even if its `exp` were far away. Clocks must be in sync.
    maxTokenAge: "60s",
    requiredClaims: ["sub", "tenant", "principal_iss", "jti"],
  });
  // `requiredClaims` checks presence only; identity fields must be non-empty strings, or two
  // different callers could collapse into one key (`null`, `""`, a number and its string).
  const { sub, tenant, principal_iss: principalIssuer, jti } = payload;
  if (!isNonEmptyString(sub) || !isNonEmptyString(tenant) || !isNonEmptyString(principalIssuer)) {
    throw new Error("assertion identity claims are malformed");
  }
  if (!isNonEmptyString(jti)) throw new Error("assertion jti is malformed");
  // A principal is (principal_iss, sub): the same `sub` from two identity providers is two people.
  // The tenant travels with it because the gateway treats a changed tenant as a different caller.
  return { tenant, principalIssuer, subject: sub, jti };
}

function isNonEmptyString(value: unknown): value is string {
  return typeof value === "string" && value !== "";
}
