import { GateError } from "../errors.ts";
import { invalidCredential } from "./failure.ts";

/**
 * Request headers with every occurrence of each header kept, as in Node's
 * `IncomingMessage.headersDistinct`. Not `IncomingMessage.headers`: Node keeps only the first of
 * several `Authorization` headers there, and two credentials in one request must be refused, not
 * silently reduced to whichever came first.
 */
export type DistinctHeaders = { readonly [name: string]: readonly string[] | undefined };

/** Longest bearer token accepted: far above any real access token, far below Node's header limit. */
export const MAX_BEARER_TOKEN_LENGTH = 8 * 1024;

// RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token. The scheme is case-insensitive
// (RFC 9110 section 11.1). The token may be any visible ASCII without spaces, which covers
// b64token, JWTs and tenantgate's API keys; a second word or a tab is malformed.
const BEARER = /^([A-Za-z]+) +([\x21-\x7e]+)$/;

/**
 * The bearer token from the request's `Authorization` header, or `undefined` when the request has
 * none. A header that is present but not exactly one well-formed bearer credential is
 * `ERR_AUTH_INVALID`, never treated as absent: a broken credential must not fall through to
 * anonymous access.
 *
 * Headers only (RFC 6750 section 2.1; THREATS T4): this module offers no way to read a token from a
 * query string or a body, so none can end up in an access log or a Referer.
 */
export function findBearerToken(headers: DistinctHeaders): string | undefined {
  const values: string[] = [];
  // Look at every name, not just the lowercase one, so a caller passing a plain object with
  // "Authorization" and "authorization" still has both counted.
  for (const name of Object.keys(headers)) {
    if (name.toLowerCase() !== "authorization") continue;
    const occurrences = headers[name];
    if (occurrences !== undefined) values.push(...occurrences);
  }
  if (values.length === 0) return undefined;
  if (values.length > 1) throw invalidCredential("duplicate-authorization");
  const value = values[0]!;
  // Bound the work before matching: scheme, spaces and token together.
  if (value.length > MAX_BEARER_TOKEN_LENGTH + 64) throw invalidCredential("oversized");
  const match = BEARER.exec(value);
  if (match === null) throw invalidCredential("malformed-bearer");
  if (match[1]!.toLowerCase() !== "bearer") throw invalidCredential("scheme");
  const token = match[2]!;
  if (token.length > MAX_BEARER_TOKEN_LENGTH) throw invalidCredential("oversized");
  return token;
}

/** Like `findBearerToken`, but a request without a credential is `ERR_AUTH_REQUIRED`. */
export function extractBearerToken(headers: DistinctHeaders): string {
  const token = findBearerToken(headers);
  if (token === undefined) throw new GateError("ERR_AUTH_REQUIRED", "authentication required");
  return token;
}
