import { digest } from "../crypto/ids.ts";
import { GateError } from "../errors.ts";
import { invalidCredential } from "./failure.ts";
import {
  API_KEY_ISSUER,
  isIdentityString,
  isScopeToken,
  makePrincipal,
  type Principal,
} from "./principal.ts";

/**
 * One configured API key (`auth.apiKeys[]`). Only the key's digest is configured
 * (`tenantgate keys api-key` prints both): the configuration and the store never hold a usable key.
 */
export interface ApiKeyConfig {
  /** The operator's name for the key (for audit and revocation), not a secret. */
  readonly id: string;
  /** `digest("api-key", key)`. */
  readonly digest: string;
  readonly subject: string;
  readonly tenant: string;
  readonly scopes: readonly string[];
}

export interface ApiKeyAuthenticator {
  /** The principal of a configured key; an unknown key is `ERR_AUTH_INVALID` ("unknown-api-key"). */
  authenticate(key: string): Principal;
}

const DIGEST = /^[A-Za-z0-9_-]{43}$/;

/**
 * API keys looked up by digest in a hash map. The lookup compares digests, not keys, so timing
 * reveals at most something about a digest of the guess, which says nothing about any configured
 * key; no constant-time comparison is needed.
 *
 * Principals have the issuer `urn:tenantgate:api-key`, which no JWT issuer may use, so an API key's
 * subject never collides with a JWT subject. Two keys declaring the same subject and tenant are the
 * same principal: rotating a key keeps its sessions and data. Keys have no expiry; revoking one
 * means removing it from the configuration.
 */
export function createApiKeyAuthenticator(keys: readonly ApiKeyConfig[]): ApiKeyAuthenticator {
  if (!Array.isArray(keys)) throw new GateError("ERR_CONFIG_INVALID", "apiKeys must be a list");
  const byDigest = new Map<string, Principal>();
  const ids = new Set<string>();
  for (const [index, key] of keys.entries()) {
    const setting = `apiKeys[${index}]`;
    if (!isIdentityString(key.id)) throw configError(`${setting}.id`, "must be a non-empty name");
    if (ids.has(key.id)) throw configError(`${setting}.id`, "is listed twice");
    ids.add(key.id);
    if (typeof key.digest !== "string" || !DIGEST.test(key.digest)) {
      throw configError(`${setting}.digest`, "must be the output of tenantgate keys digest");
    }
    if (byDigest.has(key.digest)) throw configError(`${setting}.digest`, "is listed twice");
    if (!isIdentityString(key.subject)) throw configError(`${setting}.subject`, "must be a non-empty name");
    if (!isIdentityString(key.tenant)) throw configError(`${setting}.tenant`, "must be a non-empty name");
    if (!Array.isArray(key.scopes) || !key.scopes.every(isScopeToken)) {
      throw configError(`${setting}.scopes`, "must be a list of scope names");
    }
    byDigest.set(
      key.digest,
      makePrincipal({
        kind: "api-key",
        issuer: API_KEY_ISSUER,
        subject: key.subject,
        tenant: key.tenant,
        scopes: key.scopes,
        expiresAt: null,
      }),
    );
  }

  return {
    authenticate(key) {
      // Bearer extraction admits only visible ASCII; anything else cannot be a configured key, and
      // digest() would refuse ill-formed Unicode with an argument error instead of a 401.
      if (typeof key !== "string" || !/^[\x21-\x7e]{1,8192}$/.test(key)) {
        throw invalidCredential("unknown-api-key");
      }
      const principal = byDigest.get(digest("api-key", key));
      if (principal === undefined) throw invalidCredential("unknown-api-key");
      return principal;
    },
  };
}

function configError(setting: string, problem: string): GateError {
  return new GateError("ERR_CONFIG_INVALID", `${setting} ${problem}`);
}
