import { GateError, invalidArgument } from "../errors.ts";
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

  // Only failures that cost real work count against an address: a signature checked, a key looked
  // up or fetched, an API key tried. Refusals decided by the cheap checks (expired, wrong audience,
  // malformed) cost less than the limiter itself, and counting them would lock out clients that
  // share an address while they routinely refresh an expired token. An issuer's outage
  // ("jwks-unavailable") is not the client's doing and never counts.
  const COUNTED: ReadonlySet<string> = new Set([
    "bad-signature",
    "unknown-kid",
    "key-unusable",
    "unverifiable",
    "unknown-api-key",
  ]);
  const costly = (error: unknown): boolean => {
    const reason = credentialFailureOf(error);
    return reason !== undefined && COUNTED.has(reason);
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

      // A malformed Authorization header is refused before any work, and is not counted (above).
      const token = findBearerToken(headers);

      if (token === undefined) {
        // An anonymous caller holds no scopes; where scopes are required the answer is the 401
        // challenge that tells the client to obtain a token, not a 403 it cannot act on.
        if (anonymous && requiredScopes.length === 0) return "anonymous";
        throw new GateError("ERR_AUTH_REQUIRED", "authentication required", {
          detail: anonymous ? "scopes-required" : "no-credential",
        });
      }

      // A token this gateway already verified for this audience costs one digest to recognise, less
      // than the limiter protects: it passes even from a limited address, so an attacker flooding
      // the limiter cannot lock out clients whose tokens are already known good.
      let principal = jwt?.verifiedBefore(token, { audience });
      if (principal === undefined) {
        // Before any token work (THREATS L2): a limited address costs a map lookup, nothing more.
        // The attempt counts while in flight, so a concurrent burst is cut at the limit.
        const attempt = limiter?.begin(clientAddress);
        if (limiter !== undefined && attempt == null) {
          throw new GateError("ERR_AUTH_RATE_LIMITED", "too many failed authentications", {
            detail: "failed-auth-limit",
          });
        }
        try {
          principal = await verify(token, audience);
          attempt?.done();
        } catch (error) {
          if (costly(error)) attempt?.failed();
          else attempt?.done();
          throw error;
        }
      }

      const granted = principal.scopes;
      const missing = requiredScopes.filter((scope) => !granted.includes(scope));
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
