import { digest } from "../crypto/ids.ts";
import { invalidArgument } from "../errors.ts";

/**
 * The only way to name something in a store (DESIGN invariant 5).
 *
 * - Ownership records (`own/…`) are keyed globally by the digest of the id, with the owner as the
 *   value, so a race for one id has exactly one winner whoever the racers are.
 * - Owned data (`data/…`) and per-owner indexes (`index/…`) live under (tenant, issuer, subject),
 *   every segment escaped, so no id can forge another tenant's or principal's prefix. Global indexes
 *   (`index/<kind>/<part>…`) have fewer segments than any owner index, so neither can spell the other.
 * - Counters (`count/…`), token buckets (`bucket/…`) and lease sets (`lease/…`) are named by kind and
 *   segments, also escaped.
 *
 * The key types are branded: a store method accepts only keys made here, and each kind of key only
 * where it belongs (a counter key cannot be read as a record). Adapters store `encoded` and must not
 * build keys of their own. docs/storage-schema.md lists every key the project writes.
 */

declare const recordBrand: unique symbol;
declare const counterBrand: unique symbol;
declare const indexBrand: unique symbol;
declare const bucketBrand: unique symbol;
declare const leaseBrand: unique symbol;

export type KeyNamespace = "own" | "data" | "count" | "index" | "bucket" | "lease";

const NAMESPACES: readonly KeyNamespace[] = ["own", "data", "count", "index", "bucket", "lease"];

interface KeyShape {
  readonly namespace: KeyNamespace;
  /** Raw segments, for diagnostics; adapters use `encoded`. */
  readonly segments: readonly string[];
  /** Injective text form: distinct (namespace, segments) never give the same string. */
  readonly encoded: string;
}

export type RecordKey = KeyShape & { readonly [recordBrand]: true };
export type CounterKey = KeyShape & { readonly [counterBrand]: true };
export type IndexKey = KeyShape & { readonly [indexBrand]: true };
export type BucketKey = KeyShape & { readonly [bucketBrand]: true };
export type LeaseKey = KeyShape & { readonly [leaseBrand]: true };

/** Who owns scoped data: the tenant and the principal (issuer, subject) inside it. */
export interface OwnerScope {
  readonly tenant: string;
  readonly issuer: string;
  readonly subject: string;
}

const KIND = /^[a-z][a-z0-9-]{0,39}$/;
const MAX_SEGMENT_LENGTH = 1024;

/**
 * Percent-encodes every character outside [A-Za-z0-9._~-] (UTF-8 bytes), so `/` never occurs inside
 * a segment and the joined form can be split back unambiguously.
 */
export function escapeSegment(segment: string): string {
  if (segment.length === 0) throw invalidArgument("key segment", "must not be empty");
  if (segment.length > MAX_SEGMENT_LENGTH) throw invalidArgument("key segment", "is too long");
  // Lone surrogates would be replaced by U+FFFD, making two distinct strings one key.
  if (!segment.isWellFormed()) throw invalidArgument("key segment", "must be well-formed Unicode");
  return encodeURIComponent(segment).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

function checkKind(kind: string): void {
  if (!KIND.test(kind)) throw invalidArgument("key kind", "must be a short lowercase name");
}

function build(namespace: KeyNamespace, segments: readonly string[]): KeyShape {
  return Object.freeze({
    namespace,
    segments: Object.freeze([...segments]),
    encoded: `${namespace}/${segments.map(escapeSegment).join("/")}`,
  });
}

function scopeSegments(scope: OwnerScope): string[] {
  return [scope.tenant, scope.issuer, scope.subject];
}

/**
 * The global ownership record for an id of `kind` (session, task, upload, code, …).
 *
 * An id is named by one or more parts. Ids tenantgate mints are globally unique and need one part;
 * an id chosen by someone else is unique only where it was chosen, so it must be named with that
 * place: a task id is `ownershipKey("task", upstreamName, taskId)`, or two upstreams that both
 * number their tasks 1, 2, 3 would share owner records. Parts are length-prefixed before digesting,
 * so ("ab", "c") and ("a", "bc") are different ids.
 */
export function ownershipKey(kind: string, ...idParts: [string, ...string[]]): RecordKey {
  checkKind(kind);
  if (idParts.length === 0) throw invalidArgument("idParts", "must name the id");
  for (const part of idParts) {
    if (typeof part !== "string" || part.length === 0 || part.length > MAX_SEGMENT_LENGTH) {
      throw invalidArgument("id part", `must be a string of 1 to ${MAX_SEGMENT_LENGTH} characters`);
    }
  }
  // Always length-prefixed, so a one-part id can never spell the encoding of a two-part one.
  const named = idParts.map((part) => `${part.length}:${part}`).join("");
  return build("own", [kind, digest(kind, named)]) as RecordKey;
}

/** A SHA-256 digest in base64url without padding: what `ownershipKey` puts in its second segment. */
const OWNERSHIP_DIGEST = /^[A-Za-z0-9_-]{43}$/;

/**
 * The ownership record of `kind` named by its digest (as `list` and audit events show it) instead of
 * by the id. For operator paths only (revocation, inspection): a digest is not a credential, so
 * anything that acts on a key built here must be an admin action, never one a client can trigger by
 * presenting a digest. Refuses anything that is not a 43-character base64url digest.
 */
export function ownershipKeyFromDigest(kind: string, idDigest: string): RecordKey {
  checkKind(kind);
  if (typeof idDigest !== "string" || !OWNERSHIP_DIGEST.test(idDigest)) {
    throw invalidArgument("digest", "must be a 43-character base64url digest");
  }
  return build("own", [kind, idDigest]) as RecordKey;
}

/** Data owned by one principal, e.g. `ownedKey(scope, "vault", "github_token")`. */
export function ownedKey(scope: OwnerScope, kind: string, ...parts: string[]): RecordKey {
  checkKind(kind);
  if (parts.length === 0) throw invalidArgument("parts", "must name at least one segment");
  return build("data", [...scopeSegments(scope), kind, ...parts]) as RecordKey;
}

/** The index of what one principal owns of `kind`, for listing and revoking. */
export function ownerIndexKey(scope: OwnerScope, kind: string): IndexKey {
  checkKind(kind);
  return build("index", [...scopeSegments(scope), kind]) as IndexKey;
}

/**
 * An index that belongs to no one principal, e.g. `globalIndexKey("vault-key", keyId)`: the vault
 * entries sealed under one master key, which rotation walks across principals (so reading one is an
 * operator's act, never a client's).
 *
 * One or two parts, so a global index has two or three segments after `index/`, and an owner index
 * (`ownerIndexKey`) always has four (tenant, issuer, subject, kind). Segments never contain `/`, so
 * keys with different segment counts are different strings: no tenant, issuer or subject however
 * chosen names a global index, and no global index spells a principal's. (Matching on the first
 * segment would not do: a tenant may be called "vault-key".)
 */
export function globalIndexKey(kind: string, ...parts: [string] | [string, string]): IndexKey {
  checkKind(kind);
  if (parts.length < 1 || parts.length > 2) {
    throw invalidArgument("parts", "must name one or two segments");
  }
  return build("index", [kind, ...parts]) as IndexKey;
}

/**
 * A counter, e.g. `counterKey("sessions-per-principal", tenant, issuer, subject)`. A tenant is named
 * by whoever asserts it: a tenant-level counter includes the issuer too, or two issuers that both
 * assert a tenant called "acme" would share its caps.
 */
export function counterKey(kind: string, ...parts: string[]): CounterKey {
  checkKind(kind);
  return build("count", [kind, ...parts]) as CounterKey;
}

/**
 * A token bucket, e.g. `bucketKey("rate", digest)`. As with counters, a bucket shared by a tenant must
 * name the issuer too.
 */
export function bucketKey(kind: string, ...parts: string[]): BucketKey {
  checkKind(kind);
  return build("bucket", [kind, ...parts]) as BucketKey;
}

/**
 * A lease set (members that each expire unless renewed), e.g. `leaseKey("connections", upstream)`
 * for a cap that holds across replicas.
 */
export function leaseKey(kind: string, ...parts: string[]): LeaseKey {
  checkKind(kind);
  return build("lease", [kind, ...parts]) as LeaseKey;
}

/**
 * Rebuilds a key from its namespace and raw segments, e.g. one sent to a store running in another
 * process. Not exported from the package: application code uses the builders above.
 */
export function restoreKey(namespace: KeyNamespace, segments: readonly string[]): KeyShape {
  if (!NAMESPACES.includes(namespace)) {
    throw invalidArgument("namespace", "is not a key namespace");
  }
  return build(namespace, segments);
}
