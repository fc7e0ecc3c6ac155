import { GateError } from "../errors.ts";

/**
 * Why a credential was refused: the `detail` of an `ERR_AUTH_INVALID`, for the audit trail and the
 * denial counters (DESIGN invariant 9). A closed set of fixed words, so a detail can never carry a
 * token, a key or a claim value.
 */
export type CredentialFailure =
  // The Authorization header itself.
  | "duplicate-authorization"
  | "scheme"
  | "malformed-bearer"
  | "oversized"
  // JWT shape and claims, in the order they are checked.
  | "malformed"
  | "algorithm"
  | "unknown-issuer"
  | "missing-kid"
  | "expired"
  | "lifetime"
  | "sender-constrained"
  | "not-yet-valid"
  | "audience"
  | "subject"
  | "tenant-claim"
  | "scope-claim"
  // Keys and signature.
  | "unknown-kid"
  | "key-unusable"
  | "jwks-unavailable"
  | "bad-signature"
  | "unverifiable"
  // Routing and API keys.
  | "no-jwt-issuers"
  | "unknown-api-key";

/**
 * The one failure every authenticator raises for a credential it will not accept. The message is
 * the same for every reason (the client-facing form is generic anyway, and a uniform message keeps
 * log readers from inferring the reason from text); `detail` is the reason code. A `cause` is
 * attached only where it cannot hold the credential or a claim (a JWKS fetch error): jose's claim
 * errors carry the whole payload and are never passed on.
 */
export function invalidCredential(reason: CredentialFailure, cause?: unknown): GateError {
  return new GateError("ERR_AUTH_INVALID", "invalid token", { detail: reason, cause });
}

/** The reason code of an `ERR_AUTH_INVALID`, or undefined for any other error. */
export function credentialFailureOf(error: unknown): CredentialFailure | undefined {
  return error instanceof GateError && error.code === "ERR_AUTH_INVALID"
    ? (error.detail as CredentialFailure | undefined)
    : undefined;
}
