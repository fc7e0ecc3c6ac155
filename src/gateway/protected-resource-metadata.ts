import type { UpstreamConfig } from "../config/gateway-config.ts";
import { isScopeToken } from "../config/value-checks.ts";
import { invalidArgument } from "../errors.ts";
import { PROTECTED_RESOURCE_WELL_KNOWN } from "./upstream-routes.ts";

/** RFC 9728 §2 metadata, the fields the gateway publishes. */
export interface ProtectedResourceMetadata {
  readonly resource: string;
  readonly authorization_servers?: readonly string[];
  readonly scopes_supported?: readonly string[];
  readonly bearer_methods_supported: readonly ["header"];
}

export interface ProtectedResourceMetadataOptions {
  /**
   * The resource identifier the client used for this upstream: `publicUrl + path` (see
   * `resourceUrl`). Computed by the caller from configuration, never from the request's Host or
   * forwarding headers, which the client controls.
   */
  readonly resource: string;
  /** Configured issuer identifiers (`auth.issuers[].issuer`), published as written. */
  readonly issuers: readonly string[];
  /** The scopes to publish; defaults to `upstream.scopes`. */
  readonly scopes?: readonly string[];
}

/**
 * The protected resource identifier the client uses for an upstream: the canonical publicUrl followed
 * by the upstream's path (RFC 8707 §2, DESIGN.md). Plain concatenation, no URL parsing: the config
 * layer already canonicalised publicUrl and validated the path, and re-parsing could only introduce a
 * second spelling of the same resource.
 */
export function resourceUrl(publicUrl: string, upstreamPath: string): string {
  return `${publicUrl}${upstreamPath}`;
}

/**
 * Where a client finds the metadata for the resource `publicUrl + upstreamPath` (RFC 9728 §3.1): the
 * well-known string is inserted between the host and the path, so `https://gw.example/mcp` has its
 * metadata at `https://gw.example/.well-known/oauth-protected-resource/mcp`. A publicUrl with a path
 * (`https://host/base`) keeps that path after the well-known string, because clients derive this URL
 * from the resource identifier by the same rule.
 */
export function metadataUrl(publicUrl: string, upstreamPath: string): string {
  const resource = parseResource(resourceUrl(publicUrl, upstreamPath), "publicUrl");
  const path = resource.text.slice(resource.origin.length);
  // §3.1: the slash right after the host is removed when there is nothing after it.
  return `${resource.origin}${PROTECTED_RESOURCE_WELL_KNOWN}${path === "/" ? "" : path}`;
}

/**
 * The RFC 9728 §2 document for one upstream.
 *
 * `resource` is the caller's value unchanged: §3.3 requires it to be identical to the identifier the
 * client derived the metadata URL from, and clients reject a mismatch, so it is never rewritten or
 * normalised here. `bearer_methods_supported` is `header` only: tokens in a query string end up in
 * logs and Referer headers (RFC 6750 §5.3, THREATS T4), and form bodies are not how MCP talks.
 * `authorization_servers` and `scopes_supported` are left out when empty (both OPTIONAL in §2), since
 * an empty list says nothing a client can use.
 */
export function protectedResourceMetadata(
  upstream: UpstreamConfig,
  options: ProtectedResourceMetadataOptions,
): ProtectedResourceMetadata {
  const resource = parseResource(options?.resource, "resource").text;
  const issuers = options.issuers;
  if (
    !Array.isArray(issuers) ||
    !issuers.every((issuer) => typeof issuer === "string" && issuer.length > 0)
  ) {
    throw invalidArgument("issuers", "must be a list of issuer identifiers");
  }
  const scopes = options.scopes ?? upstream?.scopes;
  if (!Array.isArray(scopes) || !scopes.every((scope) => typeof scope === "string" && isScopeToken(scope))) {
    throw invalidArgument("scopes", "must be a list of OAuth scope tokens");
  }
  return {
    resource,
    ...(issuers.length > 0 ? { authorization_servers: [...new Set(issuers)] } : {}),
    ...(scopes.length > 0 ? { scopes_supported: [...new Set(scopes)] } : {}),
    bearer_methods_supported: ["header"],
  };
}

/**
 * A resource identifier per RFC 9728 §1.2 / RFC 8707 §2: an absolute http(s) URL without a fragment
 * (and, here, without query or credentials, which publicUrl never has). Returns the text as given.
 */
function parseResource(text: unknown, name: string): { text: string; origin: string } {
  if (typeof text !== "string") throw invalidArgument(name, "must be an http(s) URL");
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw invalidArgument(name, "must be an http(s) URL");
  }
  const plain =
    (url.protocol === "https:" || url.protocol === "http:") &&
    url.username === "" &&
    url.password === "" &&
    !text.includes("?") &&
    !text.includes("#") &&
    // The identifier is compared as a string; the text must already be the origin the parser sees,
    // or the metadata URL would be built on a different spelling than the resource.
    text.startsWith(`${url.origin}/`) &&
    /^[\x21-\x7e]+$/.test(text);
  if (!plain) throw invalidArgument(name, "must be an http(s) URL without query, fragment or credentials");
  return { text, origin: url.origin };
}
