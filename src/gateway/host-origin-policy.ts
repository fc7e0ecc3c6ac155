import { GateError, invalidArgument } from "../errors.ts";
import type { DistinctHeaders } from "../identity/bearer.ts";

// Symbols, not strings: a header whose value is the word "missing" must not read as an absent header.
const MISSING: unique symbol = Symbol("missing");
const REPEATED: unique symbol = Symbol("repeated");

export interface HostOriginPolicyOptions {
  /** `listen.allowedHosts`: `host` or `host:port` values; the port is part of the match. */
  readonly allowedHosts: readonly string[];
  /** `listen.allowedOrigins`: `scheme://host[:port]` values. */
  readonly allowedOrigins: readonly string[];
}

export interface HostOriginPolicy {
  /** Returns when the request may proceed; throws ERR_HOST_FORBIDDEN or ERR_ORIGIN_FORBIDDEN (403). */
  check(headers: DistinctHeaders): void;
}

/**
 * The Host and Origin checks that stop DNS rebinding and cross-site browser requests (THREATS L4).
 * They run on every deployment: a public gateway behind a name is as reachable from a hostile page
 * as one on loopback.
 *
 * Matching is exact after lower-casing, against the allowlists only. Nothing is derived from the
 * request itself: in particular an Origin equal to the Host proves nothing (a rebinding page's
 * Origin and Host are both the attacker's name), so "same origin" is never a reason to pass.
 * No URL parsing happens on the request values: a parser would normalise forms (default ports,
 * numeric hosts, trailing dots) that the allowlists never listed, and every normalisation is a way
 * for two parties to disagree about what was allowed.
 *
 * Errors never carry a header value, not even in `detail`: both headers are attacker-controlled and
 * end up in logs and the audit trail.
 */
export function createHostOriginPolicy(options: HostOriginPolicyOptions): HostOriginPolicy {
  const allowedHosts = lowerCaseSet(options?.allowedHosts, "allowedHosts");
  // An empty host allowlist would refuse every request; the config layer never produces one, so it
  // can only be a wiring mistake, better caught at start-up than as a wall of 403s.
  if (allowedHosts.size === 0) throw invalidArgument("allowedHosts", "must list at least one host");
  // An empty origin allowlist is legitimate: it refuses every browser request and admits the rest.
  const allowedOrigins = lowerCaseSet(options?.allowedOrigins, "allowedOrigins");

  return {
    check(headers: DistinctHeaders): void {
      const host = single(headers, "host");
      if (host === MISSING || host === REPEATED) {
        const why = host === MISSING ? "missing" : "repeated";
        throw new GateError("ERR_HOST_FORBIDDEN", "Host header refused", { detail: `host ${why}` });
      }
      if (!allowedHosts.has(host.toLowerCase())) {
        throw new GateError("ERR_HOST_FORBIDDEN", "Host header refused", { detail: "host not allowed" });
      }

      // No Origin: not a browser (or a same-origin GET, which carries no state-changing body).
      // Non-browser clients have no ambient credentials for a hostile page to borrow.
      const origin = single(headers, "origin");
      if (origin === MISSING) return;
      if (origin === REPEATED) {
        throw new GateError("ERR_ORIGIN_FORBIDDEN", "Origin header refused", { detail: "origin repeated" });
      }
      // `null` is what sandboxed frames, file: pages and some redirects send: an opaque origin no
      // allowlist can name, so it is refused even if an operator listed it.
      const lowered = origin.toLowerCase();
      if (lowered === "null" || !allowedOrigins.has(lowered)) {
        throw new GateError("ERR_ORIGIN_FORBIDDEN", "Origin header refused", {
          detail: "origin not allowed",
        });
      }
    },
  };
}

function lowerCaseSet(values: readonly string[] | undefined, name: string): ReadonlySet<string> {
  if (!Array.isArray(values) || !values.every((value) => typeof value === "string" && value.length > 0)) {
    throw invalidArgument(name, "must be a list of non-empty strings");
  }
  return new Set(values.map((value) => value.toLowerCase()));
}

/** The header's only value, or why there is not exactly one. */
function single(headers: DistinctHeaders, name: string): string | typeof MISSING | typeof REPEATED {
  if (typeof headers !== "object" || headers === null) {
    throw invalidArgument("headers", "must be request.headersDistinct");
  }
  const values: string[] = [];
  // Every name is looked at, not just the lower-case one, so a plain object with "Host" and "host"
  // (tests, embedders) has both counted as it would be on the wire.
  for (const key of Object.keys(headers)) {
    if (key.toLowerCase() !== name) continue;
    const occurrences = headers[key];
    if (occurrences === undefined) continue;
    // `request.headers` (joined strings) instead of `headersDistinct` would hide duplicates: refuse it.
    if (!Array.isArray(occurrences)) throw invalidArgument("headers", "must be request.headersDistinct");
    values.push(...occurrences);
  }
  if (values.length === 0) return MISSING;
  if (values.length > 1) return REPEATED;
  // An empty value is neither an allowed host nor an allowed origin; returning it as present keeps
  // `Origin:` (empty) from passing as "no Origin".
  const [value] = values;
  if (typeof value !== "string") throw invalidArgument("headers", "must be request.headersDistinct");
  return value;
}
