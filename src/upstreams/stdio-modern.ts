/**
 * The wire translation behind `stdio.modern: "per-principal"` (src/upstreams/stdio-upstream.ts): a
 * stdio server that speaks the 2025 lifecycle (`initialize`, then requests) serving self-contained
 * 2026-07-28 requests.
 *
 * The bridge initializes the server once, itself, for the process's one principal, and then:
 * - answers `server/discover` from what `initialize` returned (2026-07-28 lifecycle: discovery is
 *   the stateless replacement of the handshake);
 * - writes every other request with an id of its own (concurrent HTTP requests of one principal may
 *   carry the same JSON-RPC id: ids are only unique per client connection) and without the
 *   per-request envelope keys a 2025 server does not know;
 * - relays the server's answer under the client's id, as a modern result (`resultType`).
 *
 * Nothing here decides who may reach which process; that is the bridge's job. These functions only
 * reshape messages, and refuse answers they cannot vouch for.
 */
import { GateError } from "../errors.ts";
import type { JsonRpcId } from "../gateway/json-rpc-body.ts";

/** `_meta` keys of the 2026-07-28 per-request envelope: the bridge's concern, not the server's. */
const ENVELOPE_META_KEYS = new Set([
  "io.modelcontextprotocol/protocolVersion",
  "io.modelcontextprotocol/clientCapabilities",
  "io.modelcontextprotocol/clientInfo",
]);
const SERVER_INFO_META_KEY = "io.modelcontextprotocol/serverInfo";
/**
 * Results that 2026-07-28 makes cacheable (SEP-2549: `ttlMs` and `cacheScope` required). A 2025
 * server states neither; the bridge says "do not cache, and never across callers": what a process
 * lists is its principal's (its credentials may decide it), so "public" could hand one principal's
 * list to another through a shared cache.
 */
const CACHEABLE_METHODS = new Set([
  "tools/list",
  "prompts/list",
  "resources/list",
  "resources/templates/list",
  "resources/read",
]);
const UNCACHEABLE = Object.freeze({ ttlMs: 0, cacheScope: "private" });

/**
 * Server capabilities relayed in `server/discover`. Only what works through the bridge: list-changed
 * and subscribe flags promise notifications a request-scoped answer cannot carry, `logging` and the
 * 2025 `tasks` capability have no 2026-07-28 counterpart here.
 */
const RELAYED_CAPABILITIES = ["tools", "prompts", "resources", "completions", "experimental"] as const;
const UNRELAYED_FLAGS = new Set(["listChanged", "subscribe"]);

/** What the server said of itself in its `initialize` answer, kept for `server/discover`. */
export interface StdioServerDescription {
  readonly protocolVersion: string;
  readonly capabilities: Record<string, unknown>;
  readonly serverInfo: Record<string, unknown> | undefined;
  readonly instructions: string | undefined;
}

/** The bridge's `initialize`: no client capabilities, so the server has no reason to call back. */
export function bridgeInitialize(id: number, protocolVersion: string, bridgeVersion: string): unknown {
  return {
    jsonrpc: "2.0",
    id,
    method: "initialize",
    params: {
      protocolVersion,
      capabilities: {},
      clientInfo: { name: "tenantgate-stdio-bridge", version: bridgeVersion },
    },
  };
}

export const INITIALIZED_NOTIFICATION = Object.freeze({
  jsonrpc: "2.0",
  method: "notifications/initialized",
});

/**
 * The server's answer to the bridge's `initialize`, checked: a result, in a version the upstream is
 * configured for. Anything else means the process is unusable (ERR_UPSTREAM_UNAVAILABLE).
 */
export function readServerDescription(text: string, accepted: readonly string[]): StdioServerDescription {
  const message = JSON.parse(text) as Record<string, unknown>;
  const result = message["result"];
  if (!isRecord(result)) {
    throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio server refused to initialize", {
      detail: "stdio-initialize-refused",
    });
  }
  const version = result["protocolVersion"];
  if (typeof version !== "string" || !accepted.includes(version)) {
    throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio server negotiated an unsupported version", {
      detail: "negotiated-version-unsupported",
    });
  }
  const capabilities = isRecord(result["capabilities"]) ? result["capabilities"] : {};
  const instructions = result["instructions"];
  return {
    protocolVersion: version,
    capabilities,
    serverInfo: isRecord(result["serverInfo"]) ? result["serverInfo"] : undefined,
    instructions: typeof instructions === "string" ? instructions : undefined,
  };
}

/** The `server/discover` result for a process's server, under the client's id. */
export function discoverAnswer(
  id: JsonRpcId,
  server: StdioServerDescription,
  supportedVersions: readonly string[],
): string {
  const capabilities: Record<string, unknown> = {};
  for (const name of RELAYED_CAPABILITIES) {
    const value = server.capabilities[name];
    if (!isRecord(value)) continue;
    capabilities[name] = Object.fromEntries(
      Object.entries(value).filter(([key]) => !UNRELAYED_FLAGS.has(key)),
    );
  }
  return JSON.stringify({
    jsonrpc: "2.0",
    id,
    result: {
      resultType: "complete",
      ...UNCACHEABLE,
      supportedVersions: [...supportedVersions],
      capabilities,
      ...(server.instructions !== undefined ? { instructions: server.instructions } : {}),
      ...(server.serverInfo !== undefined ? { _meta: { [SERVER_INFO_META_KEY]: server.serverInfo } } : {}),
    },
  });
}

/**
 * A client's request as the server gets it: the bridge's id, the envelope keys taken out of `_meta`,
 * and a progress token, if the client sent one, replaced by the bridge's id too (two requests of one
 * principal may carry the same token; the bridge routes the server's progress by its own).
 */
export function serverRequest(message: Record<string, unknown>, bridgeId: number): Record<string, unknown> {
  const forwarded: Record<string, unknown> = { jsonrpc: "2.0", id: bridgeId, method: message["method"] };
  const params = message["params"];
  if (params === undefined) return forwarded;
  if (!isRecord(params) || !isRecord(params["_meta"])) return { ...forwarded, params };
  const meta = Object.fromEntries(
    Object.entries(params["_meta"])
      .filter(([key]) => !ENVELOPE_META_KEYS.has(key))
      .map(([key, value]) => (key === "progressToken" ? [key, bridgeId] : [key, value])),
  );
  const { _meta: _envelope, ...rest } = params;
  return { ...forwarded, params: Object.keys(meta).length > 0 ? { ...rest, _meta: meta } : rest };
}

/** The progress token a client's request asks for progress under (MCP: a string or an integer). */
export function progressTokenOf(message: Record<string, unknown>): string | number | undefined {
  const params = message["params"];
  const meta = isRecord(params) ? params["_meta"] : undefined;
  const token = isRecord(meta) ? meta["progressToken"] : undefined;
  return typeof token === "string" || Number.isSafeInteger(token) ? (token as string | number) : undefined;
}

/**
 * The server's progress notification as the client gets it: under the client's own token, with only
 * the fields progress has (2026-07-28 basic/utilities/progress).
 */
export function clientProgress(params: Record<string, unknown>, clientToken: string | number): string {
  const { progress, total, message } = params;
  return JSON.stringify({
    jsonrpc: "2.0",
    method: "notifications/progress",
    params: {
      progressToken: clientToken,
      progress: typeof progress === "number" ? progress : 0,
      ...(typeof total === "number" ? { total } : {}),
      ...(typeof message === "string" ? { message } : {}),
    },
  });
}

/**
 * The server's answer to `method` under the client's id, as a 2026-07-28 result: it says what kind it
 * is (`resultType`: a 2025 server only ever completes) and, where cacheable, that it must not be
 * cached. A 2025 server means nothing by `ttlMs` or `cacheScope`, so whatever it wrote there is
 * replaced, never trusted to say "public". An error passes as it is; an answer that is neither
 * becomes an internal error rather than a message a client cannot read.
 */
export function clientAnswer(text: string, clientId: JsonRpcId, method: string): string {
  const message = JSON.parse(text) as Record<string, unknown>;
  const result = message["result"];
  if (isRecord(result)) {
    const cache = CACHEABLE_METHODS.has(method) ? UNCACHEABLE : {};
    return JSON.stringify({
      jsonrpc: "2.0",
      id: clientId,
      result: { resultType: "complete", ...result, ...cache },
    });
  }
  const error = isRecord(message["error"])
    ? message["error"]
    : { code: -32603, message: "Internal error: the server's answer was not a result" };
  return JSON.stringify({ jsonrpc: "2.0", id: clientId, error });
}

/**
 * What the bridge answers a server's own request on a principal's process: it has no client to ask
 * (the bridge declared no capabilities), except `ping`, which any peer answers.
 */
export function answerServerRequest(message: Record<string, unknown>): unknown {
  if (message["method"] === "ping") return { jsonrpc: "2.0", id: message["id"], result: {} };
  return {
    jsonrpc: "2.0",
    id: message["id"],
    error: { code: -32601, message: "Method not found: no client to ask through the gateway" },
  };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
