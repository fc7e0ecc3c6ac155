import type { IncomingMessage } from "node:http";
import type { UpstreamConfig } from "../config/gateway-config.ts";
import { GateError } from "../errors.ts";
import { VAULT_ENTRY_NAME } from "../vault/vault.ts";
import { mediaTypeOf } from "./http-responses.ts";
import type { UpstreamRoutes } from "./upstream-routes.ts";

/**
 * Enrollment (issue 6): a principal writes its own upstream credentials, write-only.
 *
 *   GET    /.tenantgate/vault<upstream path>           the caller's entry names (never values)
 *   PUT    /.tenantgate/vault<upstream path>/<name>    body {"value": "..."}: 201 new, 204 replaced
 *   DELETE /.tenantgate/vault<upstream path>/<name>    204, or 404 when there was none
 *
 * The upstream path chooses the token audience and scopes (RFC 8707: the same token the client uses
 * for that upstream), as for `/.tenantgate/session<path>`, and which entries may be written: only
 * those that upstream uses (its `inject`, a command's `vault:NAME` env values; any other name is 404),
 * so a token for one upstream never replaces or removes the credential another injects. The entries
 * belong to the principal. No method ever answers a value: a stolen access token can overwrite or
 * delete the caller's own entries for that upstream, never read them.
 */
export const VAULT_PREFIX = "/.tenantgate/vault";

/** A PUT body: the value and the JSON around it. */
export const MAX_VAULT_BODY_BYTES = 16 * 1024;

export interface VaultRoute {
  readonly upstream: UpstreamConfig;
  /** The entry a PUT or DELETE names; undefined for the listing. */
  readonly name: string | undefined;
}

/** The route a path under VAULT_PREFIX names, or undefined (404). */
export function matchVaultPath(path: string, routes: UpstreamRoutes): VaultRoute | undefined {
  if (!path.startsWith(`${VAULT_PREFIX}/`)) return undefined;
  const rest = path.slice(VAULT_PREFIX.length);
  const listed = routes.match(rest);
  if (listed) return { upstream: listed, name: undefined };
  const slash = rest.lastIndexOf("/");
  if (slash <= 0) return undefined;
  const upstream = routes.match(rest.slice(0, slash));
  const name = rest.slice(slash + 1);
  if (!upstream || !VAULT_ENTRY_NAME.test(name)) return undefined;
  return { upstream, name };
}

/**
 * The value of a PUT body: `{"value": "<credential>"}` and nothing else. A malformed body is one
 * generic refusal; the value's own rules (charset, length) are the vault's to check.
 */
export function vaultValueOf(body: Buffer, request: IncomingMessage): string {
  if (mediaTypeOf(request.headers["content-type"]) !== "application/json") {
    throw new GateError("ERR_MEDIA_TYPE_UNSUPPORTED", "content type refused", { detail: "content-type" });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch {
    throw new GateError("ERR_REQUEST_INVALID", "invalid request", { detail: "vault-body" });
  }
  if (
    typeof parsed !== "object" ||
    parsed === null ||
    Array.isArray(parsed) ||
    Object.keys(parsed).length !== 1 ||
    typeof (parsed as { value?: unknown }).value !== "string"
  ) {
    throw new GateError("ERR_REQUEST_INVALID", "invalid request", { detail: "vault-body" });
  }
  return (parsed as { value: string }).value;
}
