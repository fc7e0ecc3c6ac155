import type { UpstreamConfig } from "../config/gateway-config.ts";
import { upstreamPathProblem } from "../config/value-checks.ts";
import { invalidArgument } from "../errors.ts";

/**
 * The well-known suffix RFC 9728 §3 registers for protected resource metadata. `/.well-known/` is
 * reserved for the gateway (DESIGN.md), so no upstream path can collide with it.
 */
export const PROTECTED_RESOURCE_WELL_KNOWN = "/.well-known/oauth-protected-resource";

export interface UpstreamRoutes {
  /** The upstream whose path is exactly `pathname`, byte for byte; undefined otherwise. */
  match(pathname: string): UpstreamConfig | undefined;
  /** The upstream whose protected resource metadata lives at exactly `pathname`; undefined otherwise. */
  matchMetadata(pathname: string): UpstreamConfig | undefined;
}

/**
 * The gateway-local path of the metadata for an upstream at `upstreamPath`: the well-known suffix
 * followed by the path (RFC 9728 §3.1). For the upstream at `/` the slash after the host is dropped
 * before insertion (§3.1: "any terminating slash (/) following the host component MUST be removed"),
 * so its metadata is the bare well-known path.
 */
export function metadataPath(upstreamPath: string): string {
  return upstreamPath === "/"
    ? PROTECTED_RESOURCE_WELL_KNOWN
    : `${PROTECTED_RESOURCE_WELL_KNOWN}${upstreamPath}`;
}

/**
 * Exact routing from request path to upstream (DESIGN.md: upstream paths are matched exactly).
 *
 * No prefix match, no trailing-slash or case folding, no percent-decoding, no dot-segment removal:
 * each of those is a second spelling of a route, and a second spelling is where an authorisation
 * decision made for one path (audience, session binding, THREATS A1 and S11) and a router that sends
 * the request somewhere else can disagree. A path that differs in any byte is no route (404 upstream).
 * Lookups go through a Map, so `__proto__`, `constructor` and friends are ordinary misses.
 */
export function createUpstreamRoutes(config: {
  readonly upstreams: readonly UpstreamConfig[];
}): UpstreamRoutes {
  const upstreams = config?.upstreams;
  if (!Array.isArray(upstreams)) throw invalidArgument("upstreams", "must be a list");
  const byPath = new Map<string, UpstreamConfig>();
  const byMetadataPath = new Map<string, UpstreamConfig>();
  for (const upstream of upstreams) {
    // The config layer already checks these; a table built from anything else is a wiring mistake,
    // and a reserved or duplicate path here would shadow the gateway's own endpoints or another
    // upstream, so it is refused at start-up rather than resolved by list order.
    if (typeof upstream?.path !== "string" || upstreamPathProblem(upstream.path) !== undefined) {
      throw invalidArgument("upstream path", "must be a valid, unreserved upstream path");
    }
    if (byPath.has(upstream.path)) throw invalidArgument("upstream path", "must be unique");
    byPath.set(upstream.path, upstream);
    byMetadataPath.set(metadataPath(upstream.path), upstream);
  }

  return {
    match(pathname: string): UpstreamConfig | undefined {
      return typeof pathname === "string" ? byPath.get(pathname) : undefined;
    },
    matchMetadata(pathname: string): UpstreamConfig | undefined {
      return typeof pathname === "string" ? byMetadataPath.get(pathname) : undefined;
    },
  };
}
