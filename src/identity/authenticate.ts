import { GateError, invalidArgument, isGateError } from "../errors.ts";
import type { ApiKeyAuthenticator } from "./api-key-authenticator.ts";
import { type DistinctHeaders, findBearerToken } from "./bearer.ts";
import type { FailedAuthLimiter } from "./failed-auth-limiter.ts";
import { credentialFailureOf, invalidCredential } from "./failure.ts";
import type { JwtAuthenticator } from "./jwt-authenticator.ts";
import { isScopeToken, type Principal } from "./principal.ts";

export interface AuthenticatorOptions {
  readonly jwt?: JwtAuthenticator;
  readonly apiKeys?: ApiKeyAuthenticator;
  /** Requests without a credential are let through as "anonymous" (DESIGN invariant 2). */
  readonly anonymous: boolean;
  /** Consulted before any credential is checked; failures are recorded in it. */
  readonly failedAuthLimiter?: FailedAuthLimiter;
}

export interface AuthenticateOptions {
  /** The audience of the upstream being called (RFC 8707). */
  readonly audience: string;
  /** Scopes the upstream requires; every one must be granted. */
  readonly requiredScopes: readonly string[];
  /**
   * The client's address as the gateway determined it (the socket's peer, or the nearest untrusted
   * hop when behind trusted proxies), for the failed-auth limiter. Never taken from a header the
   * client controls.
   */
  readonly clientAddress: string | undefined;
}

export interface Authenticator {
  /**
   * Authenticates one request. Resolves to the principal, or to "anonymous" when there is no
   * credential and anonymous access is on: the caller gives a new session a fresh
   * `anonymousPrincipal()` and uses the session's principal afterwards.
   *
   * Rejects with `ERR_AUTH_REQUIRED` (no credential), `ERR_AUTH_INVALID` (a credential that fails
   * any check, including a malformed Authorization header), `ERR_AUTH_RATE_LIMITED` (too many
   * failures from this address) or `ERR_INSUFFICIENT_SCOPE` (detail lists the missing scopes).
   */
  authenticate(headers: DistinctHeaders, options: AuthenticateOptions): Promise<Principal | "anonymous">;
}

export function createAuthenticator(options: AuthenticatorOptions): Authenticator {
  const { jwt, apiKeys, anonymous, failedAuthLimiter: limiter } = options;
  if (jwt === undefined && apiKeys === undefined && anonymous !== true) {
    throw new GateError(
      "ERR_CONFIG_INVALID",
      "auth configures no issuers, no API keys and no anonymous access",
    );
  }

  // A credential the client got wrong counts against its address. "jwks-unavailable" does not: the
  // issuer's outage is not the client's doing, and counting it would lock out every client that
  // retried during the outage.
  const noteFailure = (error: unknown, address: string | undefined): void => {
    if (limiter === undefined || !isGateError(error, "ERR_AUTH_INVALID")) return;
    if (credentialFailureOf(error) === "jwks-unavailable") return;
    limiter.recordFailure(address);
  };

  const verify = async (token: string, audience: string): Promise<Principal> => {
    // A compact JWS has exactly two dots; tenantgate's API keys (base64url) have none.
    if (token.split(".").length === 3) {
      if (jwt === undefined) throw invalidCredential("no-jwt-issuers");
      return jwt.verify(token, { audience });
    }
    if (apiKeys === undefined) throw invalidCredential("unknown-api-key");
    return apiKeys.authenticate(token);
  };

  return {
    async authenticate(headers, { audience, requiredScopes, clientAddress }) {
      if (typeof audience !== "string" || audience.length === 0) {
        throw invalidArgument("audience", "must be a non-empty string");
      }
      if (!Array.isArray(requiredScopes) || !requiredScopes.every(isScopeToken)) {
        throw invalidArgument("requiredScopes", "must be a list of scope names");
      }

      let token: string | undefined;
      try {
        token = findBearerToken(headers);
      } catch (error) {
        noteFailure(error, clientAddress);
        throw error;
      }

      if (token === undefined) {
        // An anonymous caller holds no scopes; where scopes are required the answer is the 401
        // challenge that tells the client to obtain a token, not a 403 it cannot act on.
        if (anonymous && requiredScopes.length === 0) return "anonymous";
        throw new GateError("ERR_AUTH_REQUIRED", "authentication required", {
          detail: anonymous ? "scopes-required" : "no-credential",
        });
      }

      // Before any token work (THREATS L2): a limited address costs a map lookup, nothing more.
      if (limiter !== undefined && !limiter.check(clientAddress)) {
        throw new GateError("ERR_AUTH_RATE_LIMITED", "too many failed authentications", {
          detail: "failed-auth-limit",
        });
      }

      let principal: Principal;
      try {
        principal = await verify(token, audience);
      } catch (error) {
        noteFailure(error, clientAddress);
        throw error;
      }

      const missing = requiredScopes.filter((scope) => !principal.scopes.includes(scope));
      if (missing.length > 0) {
        // Scope names are configuration, not secrets: the audit trail and the 403's
        // `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."` may both name them.
        throw new GateError("ERR_INSUFFICIENT_SCOPE", "insufficient scope", {
          detail: `missing scopes: ${missing.join(" ")}`,
        });
      }
      return principal;
    },
  };
}
