import { isScopeToken } from "../config/value-checks.ts";
import { type GateError, type GateErrorCode, invalidArgument, toWire } from "../errors.ts";

export interface ChallengeOptions {
  /** The upstream's metadata URL (`metadataUrl(publicUrl, path)`), from configuration only. */
  readonly metadataUrl: string;
  /** The scopes the refused request needed; used by ERR_INSUFFICIENT_SCOPE only. */
  readonly requiredScopes?: readonly string[];
  /** Seconds for `Retry-After` on ERR_AUTH_RATE_LIMITED. Default 60, the limiter's default window. */
  readonly retryAfterSeconds?: number;
}

export interface Challenge {
  readonly status: number;
  /** Header name -> value; empty when the code carries no challenge. */
  readonly headers: Readonly<Record<string, string>>;
}

const DEFAULT_RETRY_AFTER_SECONDS = 60;

/**
 * The status and headers that go with an authentication or authorisation refusal.
 *
 * Only the error's code is read: `message`, `detail` and `cause` never reach a header, and no value
 * here comes from the request (the metadata URL and scopes are configuration; the retry delay is the
 * gateway's), so a header cannot echo attacker input or say which check failed.
 *
 * - ERR_AUTH_REQUIRED: 401, `Bearer resource_metadata="…"` (RFC 9728 §5.1). No `error` attribute:
 *   a request without credentials gets none (RFC 6750 §3.1).
 * - ERR_AUTH_INVALID: 401, the same plus `error="invalid_token"` (RFC 6750 §3.1). No
 *   `error_description`: it would be detail.
 * - ERR_INSUFFICIENT_SCOPE: 403, `Bearer error="insufficient_scope", scope="…", resource_metadata="…"`
 *   (RFC 6750 §3.1, and the MCP step-up flow reads `scope` to ask for more).
 * - ERR_AUTH_RATE_LIMITED: 429 with `Retry-After` (RFC 6585 §4, RFC 9110 §10.2.3).
 * - Any other code: its wire status and no headers.
 */
export function challengeHeaders(error: GateError | GateErrorCode, options: ChallengeOptions): Challenge {
  const code = toWire(typeof error === "string" ? error : error?.code).code;
  const status = toWire(code).status;
  switch (code) {
    case "ERR_AUTH_REQUIRED":
      return { status, headers: { "WWW-Authenticate": bearer([["resource_metadata", url(options)]]) } };
    case "ERR_AUTH_INVALID":
      return {
        status,
        headers: {
          "WWW-Authenticate": bearer([
            ["error", "invalid_token"],
            ["resource_metadata", url(options)],
          ]),
        },
      };
    case "ERR_INSUFFICIENT_SCOPE": {
      const scopes = requiredScopes(options);
      return {
        status,
        headers: {
          "WWW-Authenticate": bearer([
            ["error", "insufficient_scope"],
            // RFC 6750 §3: space-delimited; an empty attribute would tell the client nothing.
            ...(scopes.length > 0 ? [["scope", scopes.join(" ")] as const] : []),
            ["resource_metadata", url(options)],
          ]),
        },
      };
    }
    case "ERR_AUTH_RATE_LIMITED":
      return { status, headers: { "Retry-After": String(retryAfter(options)) } };
    default:
      return { status, headers: {} };
  }
}

function bearer(params: readonly (readonly [string, string])[]): string {
  return `Bearer ${params.map(([name, value]) => `${name}=${quotedString(value, name)}`).join(", ")}`;
}

/**
 * RFC 9110 §5.6.4 quoted-string. `"` and `\` become quoted-pairs; anything that is neither qdtext nor
 * quotable VCHAR/SP/HTAB (controls, DEL, and non-ASCII, which Node would refuse or mangle) is refused
 * rather than stripped, because a silently altered URL or scope is a wrong challenge.
 */
export function quotedString(value: string, name = "value"): string {
  if (typeof value !== "string" || !/^[\t\x20-\x7e]*$/.test(value)) {
    throw invalidArgument(name, "must be printable ASCII to appear in a header");
  }
  return `"${value.replace(/["\\]/g, "\\$&")}"`;
}

function url(options: ChallengeOptions): string {
  const value = options?.metadataUrl;
  // A URL (RFC 3986) has no space, quote or backslash; refusing them keeps the attribute one token.
  if (typeof value !== "string" || !/^https?:\/\/[\x21-\x7e]+$/.test(value) || /["\\]/.test(value)) {
    throw invalidArgument("metadataUrl", "must be an http(s) URL");
  }
  return value;
}

function requiredScopes(options: ChallengeOptions): string[] {
  const scopes = options?.requiredScopes ?? [];
  // RFC 6750 §3 scope-token excludes `"` and `\`, so a valid scope never needs escaping.
  if (!Array.isArray(scopes) || !scopes.every((scope) => typeof scope === "string" && isScopeToken(scope))) {
    throw invalidArgument("requiredScopes", "must be a list of OAuth scope tokens");
  }
  return [...new Set(scopes)];
}

function retryAfter(options: ChallengeOptions): number {
  const seconds = options?.retryAfterSeconds ?? DEFAULT_RETRY_AFTER_SECONDS;
  if (!Number.isSafeInteger(seconds) || seconds < 1 || seconds > 86_400) {
    throw invalidArgument("retryAfterSeconds", "must be a whole number of seconds from 1 to 86400");
  }
  return seconds;
}
