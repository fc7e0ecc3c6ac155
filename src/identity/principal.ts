import type { OwnerScope } from "../store/keys.ts";
import { invalidCredential } from "./failure.ts";

/**
 * Who is calling, as established by a verified credential (DESIGN invariant 1). Nothing here ever
 * comes from a client-chosen id, a tool argument, a header other than the credential, or the
 * client's address.
 *
 * - `issuer` names who vouched for the subject: a configured JWT issuer, or one of tenantgate's own
 *   `urn:tenantgate:` issuers for API keys and anonymous callers. JWT issuers may not use that
 *   prefix, so a subject from one kind of credential can never be mistaken for another's.
 * - `tenant` comes from the issuer's configured claim, or is the issuer itself when none is
 *   configured.
 * - `expiresAt` is the credential's `exp` in epoch ms: a stream opened with the credential must end
 *   then (invariant 7). `null` for credentials without an expiry (API keys, anonymous).
 */
export interface Principal {
  readonly kind: "jwt" | "api-key" | "anonymous";
  readonly issuer: string;
  readonly subject: string;
  readonly tenant: string;
  readonly scopes: readonly string[];
  readonly expiresAt: number | null;
}

/** The issuer of every API key principal. */
export const API_KEY_ISSUER = "urn:tenantgate:api-key";
/** The issuer of every anonymous principal. */
export const ANONYMOUS_ISSUER = "urn:tenantgate:anonymous";
/** Issuers under this prefix are tenantgate's own; a configured JWT issuer may not use it. */
export const RESERVED_ISSUER_PREFIX = "urn:tenantgate:";

/** Where the principal owns data in the store: (tenant, issuer, subject), never less. */
export function ownerScope(principal: Principal): OwnerScope {
  return Object.freeze({ tenant: principal.tenant, issuer: principal.issuer, subject: principal.subject });
}

/**
 * Whether two principals are the same caller. A refreshed token (same issuer and subject) is the
 * same principal, so it keeps its session; the same subject from another issuer, or with another
 * tenant, is someone else (THREATS A3). `kind` needs no comparison: it is implied by the issuer.
 * Scopes and expiry are properties of the credential, not of the identity.
 */
export function samePrincipal(a: Principal, b: Principal): boolean {
  return a.issuer === b.issuer && a.subject === b.subject && a.tenant === b.tenant;
}

/** Longest subject or tenant accepted; store key segments allow 1024, leaving room for escaping. */
export const MAX_IDENTITY_LENGTH = 256;

// Cc: the C0 controls, DEL and the C1 controls. Never part of an identity, and a newline in a
// subject could forge a line in a plain-text log that forgot to tag it.
const CONTROL_CHARACTER = /\p{Cc}/u;

/**
 * Whether `value` can name a subject or tenant: a non-empty, well-formed string of bounded length
 * with no control characters. Ill-formed Unicode is refused because digests and store keys encode
 * as UTF-8, which would merge two distinct strings into one identity.
 */
export function isIdentityString(value: unknown): value is string {
  return (
    typeof value === "string" &&
    value.length > 0 &&
    value.length <= MAX_IDENTITY_LENGTH &&
    value.isWellFormed() &&
    !CONTROL_CHARACTER.test(value)
  );
}

// RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]{1,256}$/;

export function isScopeToken(value: unknown): value is string {
  return typeof value === "string" && SCOPE_TOKEN.test(value);
}

/**
 * Builds a frozen principal. Authenticators call this only with values from a verified credential
 * or from configuration; a subject or tenant that cannot name an identity refuses the credential.
 */
export function makePrincipal(fields: Principal): Principal {
  if (!isIdentityString(fields.subject)) throw invalidCredential("subject");
  if (!isIdentityString(fields.tenant)) throw invalidCredential("tenant-claim");
  const scopes = Object.freeze([...new Set(fields.scopes)]);
  return Object.freeze({
    kind: fields.kind,
    issuer: fields.issuer,
    subject: fields.subject,
    tenant: fields.tenant,
    scopes,
    expiresAt: fields.expiresAt,
  });
}
