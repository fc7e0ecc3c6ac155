import { createLocalJWKSet, createRemoteJWKSet, type JWTVerifyGetKey, jwtVerify } from "jose";
import { ASSERTION_TYPE } from "../crypto/assertion-signer.ts";
import { GateError, invalidArgument } from "../errors.ts";
import {
  ANONYMOUS_ISSUER,
  API_KEY_ISSUER,
  isIdentityString,
  makePrincipal,
  type Principal,
} from "../identity/principal.ts";

/**
 * For an MCP server behind tenantgate: who is calling, from the `Tenantgate-Assertion` header the
 * gateway adds to every request it forwards. The server never sees the caller's own credential; it
 * sees this short-lived EdDSA JWT, signed with a key the gateway publishes at
 * `<publicUrl>/.well-known/jwks.json`, and gets back the same `Principal` the gateway judged.
 *
 * Every failure is one ERR_AUTH_INVALID (or ERR_AUTH_REQUIRED when there is no header): the reason
 * helps only an attacker.
 */
export interface AssertionVerifierOptions {
  /** The gateway's publicUrl: the only party allowed to vouch for callers here. */
  readonly issuer: string;
  /** This server's URL exactly as the gateway's `upstreams[].url` names it (the assertion's `aud`). */
  readonly audience: string;
  /** Where the gateway's keys are (`<publicUrl>/.well-known/jwks.json`), or the key set itself. */
  readonly jwks: URL | { readonly keys: readonly Record<string, unknown>[] } | JWTVerifyGetKey;
  /** Clock tolerance in seconds, 0 to 60. Default 5. */
  readonly clockToleranceSeconds?: number;
}

export interface AssertionVerifier {
  /** The caller an assertion header names, or a GateError. */
  verify(headerValue: string | readonly string[] | undefined): Promise<Principal>;
}

/** The gateway signs a fresh assertion per request that lives at most 60 s. */
const MAX_ASSERTION_AGE = "60s";
/** No more skew than an assertion's whole lifetime: beyond that a replica's clock is simply wrong. */
const MAX_CLOCK_TOLERANCE_SECONDS = 60;

export function createAssertionVerifier(options: AssertionVerifierOptions): AssertionVerifier {
  if (!isIdentityString(options?.issuer)) throw invalidArgument("issuer", "must be the gateway's publicUrl");
  if (!isIdentityString(options.audience))
    throw invalidArgument("audience", "must be this server's audience");
  const jwks = options.jwks;
  const keys: JWTVerifyGetKey =
    typeof jwks === "function"
      ? jwks
      : jwks instanceof URL
        ? createRemoteJWKSet(jwks)
        : createLocalJWKSet({ keys: [...jwks.keys] as never });
  const clockTolerance = options.clockToleranceSeconds ?? 5;
  // The tolerance is added to every time check, max age included: a large one would accept an
  // assertion long after its 60 s. NaN or Infinity jose refuses only at verify time, failing every
  // request; both are argument errors here, at start-up.
  if (
    typeof clockTolerance !== "number" ||
    !Number.isFinite(clockTolerance) ||
    clockTolerance < 0 ||
    clockTolerance > MAX_CLOCK_TOLERANCE_SECONDS
  ) {
    throw invalidArgument("clockToleranceSeconds", `must be from 0 to ${MAX_CLOCK_TOLERANCE_SECONDS}`);
  }

  return {
    async verify(headerValue) {
      // One header, one value: two assertions could each be judged by a different component.
      const values =
        headerValue === undefined ? [] : typeof headerValue === "string" ? [headerValue] : headerValue;
      if (values.length === 0 || values[0] === "") {
        throw new GateError("ERR_AUTH_REQUIRED", "no assertion");
      }
      const [token] = values;
      if (values.length !== 1 || token === undefined) {
        throw new GateError("ERR_AUTH_INVALID", "assertion refused", { detail: "repeated" });
      }
      let payload: Record<string, unknown>;
      try {
        ({ payload } = await jwtVerify(token, keys, {
          // Pinned, never read from the token: the gateway signs only with Ed25519.
          algorithms: ["EdDSA"],
          // Explicit typing (RFC 8725 §3.11): another JWT signed by the same keys is not an assertion.
          typ: ASSERTION_TYPE,
          issuer: options.issuer,
          audience: options.audience,
          maxTokenAge: MAX_ASSERTION_AGE,
          clockTolerance,
          requiredClaims: ["sub", "tenant", "principal_iss", "jti", "exp"],
        }));
      } catch (cause) {
        throw new GateError("ERR_AUTH_INVALID", "assertion refused", { detail: "verification", cause });
      }
      const { sub, tenant, principal_iss: issuer, scope } = payload;
      if (!isIdentityString(sub) || !isIdentityString(tenant) || !isIdentityString(issuer)) {
        throw new GateError("ERR_AUTH_INVALID", "assertion refused", { detail: "identity claims" });
      }
      const kind = issuer === API_KEY_ISSUER ? "api-key" : issuer === ANONYMOUS_ISSUER ? "anonymous" : "jwt";
      return makePrincipal({
        kind,
        issuer,
        subject: sub,
        tenant,
        scopes: typeof scope === "string" && scope !== "" ? scope.split(" ") : [],
        expiresAt: typeof payload["exp"] === "number" ? payload["exp"] * 1000 : null,
      });
    },
  };
}
