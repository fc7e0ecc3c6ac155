import { GateError, invalidArgument } from "../errors.ts";
import { type DistinctHeaders, findBearerToken } from "../identity/bearer.ts";

/**
 * Reads a poll or download token from a request's headers, and only from there (THREATS T4; DESIGN
 * invariant 8). A query string ends up in access logs, proxy logs, browser history and Referer
 * headers (the everyrow audit found poll tokens logged that way), so a request that carries a
 * token-like query parameter is refused outright rather than read around: a client that sends one
 * learns at once, instead of leaking tokens into logs that happen to be ignored.
 */

/** What the reader needs of a request: `node:http`'s `IncomingMessage` has both. */
export interface TokenRequest {
  readonly url?: string | undefined;
  /** Every occurrence of each header, as `IncomingMessage.headersDistinct` keeps them. */
  readonly headersDistinct: DistinctHeaders;
}

export interface ReadRequestTokenOptions {
  /**
   * Where the token travels. `"authorization"` (the default): `Authorization: Bearer <token>`, for
   * endpoints whose caller is identified another way (a session cookie). Any other name: a dedicated
   * header holding the token alone, e.g. `Tenantgate-Poll-Token` beside the caller's own
   * `Authorization`.
   */
  readonly header?: string;
}

const HEADER_NAME = /^[A-Za-z0-9-]{1,64}$/;
/** Visible ASCII without spaces, bounded: every token tenantgate mints fits, anything odd does not. */
const TOKEN_VALUE = /^[\x21-\x7e]{1,512}$/;
/** Query parameter names that are refused once normalised (lowercase, without `-`, `_`, `.`). */
const CREDENTIAL_NAMES = new Set(["authorization", "auth", "bearer"]);

function normalise(name: string): string {
  return name.toLowerCase().replace(/[-_.\s]/g, "");
}

function refuseTokenInQuery(url: string | undefined, header: string): void {
  if (typeof url !== "string") return;
  const mark = url.indexOf("?");
  if (mark === -1) return;
  const ownName = normalise(header);
  for (const name of new URLSearchParams(url.slice(mark + 1)).keys()) {
    const normal = normalise(name);
    if (normal.endsWith("token") || CREDENTIAL_NAMES.has(normal) || normal === ownName) {
      // The detail names the rule, never the parameter or its value.
      throw new GateError("ERR_REQUEST_INVALID", "invalid request", { detail: "query-string" });
    }
  }
}

/**
 * The token the request carries in `options.header`, or undefined when it carries none. Refused with
 * `ERR_REQUEST_INVALID`: a token-like query parameter (`token`, `poll_token`, `access_token`, any
 * name ending in "token", `authorization`, the header's own name), the header given twice, or a
 * value that cannot be a token. A malformed `Authorization` header is `ERR_AUTH_INVALID`.
 */
export function readRequestToken(
  request: TokenRequest,
  options: ReadRequestTokenOptions = {},
): string | undefined {
  const header = options.header ?? "authorization";
  if (typeof header !== "string" || !HEADER_NAME.test(header)) {
    throw invalidArgument("header", "must be a header name");
  }
  if (typeof request !== "object" || request === null || typeof request.headersDistinct !== "object") {
    throw invalidArgument("request", "must have headersDistinct (a node:http IncomingMessage does)");
  }
  refuseTokenInQuery(request.url, header);
  if (header.toLowerCase() === "authorization") return findBearerToken(request.headersDistinct);
  const values: string[] = [];
  for (const name of Object.keys(request.headersDistinct)) {
    if (name.toLowerCase() !== header.toLowerCase()) continue;
    values.push(...(request.headersDistinct[name] ?? []));
  }
  if (values.length === 0) return undefined;
  const value = values[0]!;
  if (values.length > 1 || !TOKEN_VALUE.test(value)) {
    throw new GateError("ERR_REQUEST_INVALID", "invalid request", { detail: "token-header" });
  }
  return value;
}
