/**
 * The identity layer, listed by name: who is calling (a `Principal`), and the authenticators that
 * establish it from a verified credential. Helpers that build principals are not exported: a
 * principal comes from an authenticator or `anonymousPrincipal()`, never from assembled fields.
 */

export { ANONYMOUS_TENANT, anonymousPrincipal } from "./anonymous.ts";
export {
  type ApiKeyAuthenticator,
  type ApiKeyConfig,
  createApiKeyAuthenticator,
} from "./api-key-authenticator.ts";
export {
  type AuthenticateOptions,
  type Authenticator,
  type AuthenticatorOptions,
  createAuthenticator,
} from "./authenticate.ts";
export {
  type DistinctHeaders,
  extractBearerToken,
  findBearerToken,
  MAX_BEARER_TOKEN_LENGTH,
} from "./bearer.ts";
export {
  addressKey,
  createFailedAuthLimiter,
  type FailedAuthLimiter,
  type FailedAuthLimiterOptions,
} from "./failed-auth-limiter.ts";
export { type CredentialFailure, credentialFailureOf } from "./failure.ts";
export type { RemoteJwksOptions } from "./jwks.ts";
export {
  ASYMMETRIC_JWT_ALGORITHMS,
  createJwtAuthenticator,
  type JwtAuthenticator,
  type JwtAuthenticatorOptions,
  type JwtIssuerConfig,
  type JwtVerifyOptions,
} from "./jwt-authenticator.ts";
export {
  ANONYMOUS_ISSUER,
  API_KEY_ISSUER,
  ownerScope,
  type Principal,
  samePrincipal,
} from "./principal.ts";
