import type { IncomingHttpHeaders } from "node:http";
import { GateError, type GateErrorCode, invalidArgument } from "../errors.ts";

/**
 * The only client request headers the upstream ever sees, apart from those the gateway sets itself
 * (DESIGN invariant 4, THREATS S9). Everything else stays at the gateway: the client's
 * `Authorization` and cookies (the upstream gets `Tenantgate-Assertion` instead), any client-sent
 * `Tenantgate-Assertion`, session and stream headers (the gateway translates those), forwarding and
 * hop-by-hop headers, `Content-Length` (undici computes it from the body the gateway checked) and
 * `Accept-Encoding` (so the upstream answers uncompressed and the gateway can read what it relays).
 */
export const FORWARDED_REQUEST_HEADERS: readonly string[] = Object.freeze([
  "accept",
  "content-type",
  "user-agent",
]);

/**
 * The only upstream response headers the client ever sees, apart from the gateway's own. Not the
 * upstream's `Mcp-Session-Id` or `Set-Cookie` (THREATS S9), not `WWW-Authenticate` (an upstream's
 * challenge must never reach the client, DESIGN authorization), not framing headers (Node frames the
 * response it writes; `Content-Encoding` is never negotiated upstream), not banners.
 */
export const FORWARDED_RESPONSE_HEADERS: readonly string[] = Object.freeze([
  "content-type",
  "cache-control",
  "retry-after",
]);

// Response headers with list syntax (RFC 9110 section 5.3): several field lines mean the same as one
// joined with ", ". For the others a repetition is ambiguous and the response is refused.
const LIST_RESPONSE_HEADERS: ReadonlySet<string> = new Set(["cache-control"]);

// RFC 9110 section 5.1 (token) and 5.5: a field value is visible ASCII, obs-text, SP and HTAB. Node's
// parser already refuses CR, LF and NUL in what it reads; these checks cover values built or relayed
// some other way, where a CR/LF would split a header (response splitting, request smuggling).
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: the point is to find them.
const FORBIDDEN_VALUE_CHARS = /[\u0000-\u0008\u000a-\u001f\u007f]|[^\u0000-\u00ff]/;

/**
 * The headers of the request to the upstream: `accept`, `content-type` and `user-agent` copied from
 * the client's `request.headers` (unless the client named them in `Connection`, which makes them
 * hop-by-hop, RFC 9110 section 7.6.1), then the gateway's own `set` (`tenantgate-assertion`,
 * `mcp-session-id`, `mcp-protocol-version`, `last-event-id`, ...), which win over a copied one.
 * Names come out lower-cased.
 *
 * A copied value with a control character, or an allowlisted header given twice (an array, or two
 * spellings of one name in a plain object), is ERR_REQUEST_INVALID. A bad name or value in `set` is
 * the gateway's own mistake: ERR_ARGUMENT_INVALID.
 */
export function upstreamRequestHeaders(
  client: IncomingHttpHeaders,
  set: Readonly<Record<string, string>>,
): Record<string, string> {
  return forward(client, set, FORWARDED_REQUEST_HEADERS, {
    code: "ERR_REQUEST_INVALID",
    message: "invalid request",
    joinRepeated: () => false,
  });
}

/**
 * The headers of the response to the client: `content-type`, `cache-control` and `retry-after`
 * copied from the upstream's response (undici's `headers`, arrays for repeated fields) unless the
 * upstream named them in `Connection`, then the gateway's own `set` (its `mcp-session-id`, ...).
 *
 * Repeated values: `cache-control` is a list header, so its field lines are joined with ", " (the
 * same meaning). A repeated `content-type` or `retry-after` is refused, not reduced to the first:
 * the gateway decides how to relay the body from the content type, and a client that read the
 * other one would parse what the gateway did not check. Refusals, and values with control
 * characters, are ERR_UPSTREAM_UNAVAILABLE (the upstream misbehaved; the client gets a 502).
 */
export function clientResponseHeaders(
  upstream: Record<string, string | string[] | undefined>,
  set: Readonly<Record<string, string>>,
): Record<string, string> {
  return forward(upstream, set, FORWARDED_RESPONSE_HEADERS, {
    code: "ERR_UPSTREAM_UNAVAILABLE",
    message: "upstream unavailable",
    joinRepeated: (name) => LIST_RESPONSE_HEADERS.has(name),
  });
}

interface Side {
  /** The code for a flaw in the headers being copied (the other party's data). */
  readonly code: GateErrorCode;
  readonly message: string;
  readonly joinRepeated: (name: string) => boolean;
}

type HeaderSource = { readonly [name: string]: string | readonly string[] | number | undefined };

function forward(
  source: HeaderSource,
  set: Readonly<Record<string, string>>,
  allowlist: readonly string[],
  side: Side,
): Record<string, string> {
  if (typeof source !== "object" || source === null) throw invalidArgument("headers", "must be an object");
  const own = checkedSet(set);
  const refuse = (detail: string): GateError => new GateError(side.code, side.message, { detail });

  // Every occurrence of each name, whatever its spelling: Node and undici lower-case names, a plain
  // object may not, and "Accept" beside "accept" is two field lines, not one.
  const occurrences = new Map<string, string[]>();
  for (const rawName of Object.keys(source)) {
    const raw = source[rawName];
    if (raw === undefined) continue;
    const name = rawName.toLowerCase();
    const values = Array.isArray(raw) ? raw : [raw];
    const list = occurrences.get(name) ?? [];
    for (const value of values) {
      // Node types some request headers loosely; anything not a string cannot be relayed as is.
      if (typeof value !== "string") throw refuse("header value not a string");
      list.push(value);
    }
    occurrences.set(name, list);
  }

  const hopByHop = new Set<string>();
  for (const value of occurrences.get("connection") ?? []) {
    for (const token of value.split(",")) {
      const name = token.trim().toLowerCase();
      if (name !== "") hopByHop.add(name);
    }
  }

  const result = new Map<string, string>();
  for (const name of allowlist) {
    const values = occurrences.get(name);
    if (values === undefined || values.length === 0 || hopByHop.has(name)) continue;
    if (values.length > 1 && !side.joinRepeated(name)) throw refuse("allowlisted header repeated");
    const value = values.join(", ");
    if (FORBIDDEN_VALUE_CHARS.test(value)) throw refuse("header value has control characters");
    result.set(name, value);
  }
  for (const [name, value] of own) result.set(name, value);
  // Object.fromEntries defines own properties, so even a name like `__proto__` could not reach the
  // prototype (TOKEN admits it; nothing here would copy one from the other party anyway).
  return Object.fromEntries(result);
}

/** The gateway's own headers, lower-cased and checked: its mistakes must not reach the wire. */
function checkedSet(set: Readonly<Record<string, string>>): Map<string, string> {
  if (typeof set !== "object" || set === null) throw invalidArgument("set", "must be an object");
  const checked = new Map<string, string>();
  for (const rawName of Object.keys(set)) {
    const value = set[rawName];
    if (!TOKEN.test(rawName)) throw invalidArgument("set", "must have header names that are tokens");
    const name = rawName.toLowerCase();
    if (checked.has(name)) throw invalidArgument("set", "must name each header once");
    if (typeof value !== "string" || FORBIDDEN_VALUE_CHARS.test(value)) {
      throw invalidArgument("set", "must have header values without control characters");
    }
    checked.set(name, value);
  }
  return checked;
}
