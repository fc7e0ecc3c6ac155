import { GateError } from "../errors.ts";
import type { DistinctHeaders } from "../identity/bearer.ts";
import type { JsonRpcMessage } from "./json-rpc-body.ts";

/**
 * Header/body agreement for modern (2026-07-28) requests: Streamable HTTP, "Request Metadata" and
 * "Server Validation". Intermediaries route, rate-limit and authorize on the mirrored headers while
 * the upstream executes the body; a disagreement is a confused-deputy vector, so every mirrored
 * header the gateway can check against the body is checked, and the request is refused with
 * -32020 (ERR_HEADER_MISMATCH) otherwise. The gateway decides on the parsed body only, and forwards
 * exactly the header values it checked.
 */

/** `params._meta` key that must carry the same version as the `MCP-Protocol-Version` header. */
export const PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion";

/** Methods whose `Mcp-Name` is required, and the body field it mirrors. */
const NAMED_METHODS: ReadonlyMap<string, "name" | "uri" | "taskId"> = new Map([
  ["tools/call", "name"],
  ["prompts/get", "name"],
  ["resources/read", "uri"],
  // The tasks extension's Streamable HTTP binding (SEP-2663): Mcp-Name mirrors params.taskId, so
  // intermediaries can route a task's requests; the gateway polices ownership on the body's value.
  ["tasks/get", "taskId"],
  ["tasks/update", "taskId"],
  ["tasks/cancel", "taskId"],
]);

const BASE64_SENTINEL = /^=\?base64\?([A-Za-z0-9+/]*={0,2})\?=$/;
/** RFC 9110 field values: visible ASCII, space and tab. Leading or trailing whitespace is not kept by parsers. */
const PLAIN_VALUE = /^[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?$/;
/** `Mcp-Param-{Name}`: the name part is an RFC 9110 token. */
const PARAM_HEADER = /^mcp-param-[!#$%&'*+.^_`|~0-9a-z-]+$/;
const MAX_MIRRORED_VALUE_LENGTH = 8 * 1024;

export interface CheckedModernRequest {
  /** The headers the upstream receives for these mirrored fields: exactly the values checked. */
  readonly mirroredHeaders: Readonly<Record<string, string>>;
  /** `params.name` / `params.uri` of a named method, for routing decisions (tasks: `params.taskId`). */
  readonly method: string;
}

/**
 * Checks one modern message against its headers. `version` is the `MCP-Protocol-Version` the era
 * classification accepted. Throws ERR_HEADER_MISMATCH on any disagreement or malformed value, and
 * ERR_REQUEST_INVALID for a message a modern client never sends (a JSON-RPC response).
 */
export function checkModernRequest(
  headers: DistinctHeaders,
  message: JsonRpcMessage,
  version: string,
): CheckedModernRequest {
  if (message.kind === "response") {
    // 2026-07-28 Streamable HTTP, Sending Messages: "The client MUST NOT send JSON-RPC responses".
    throw new GateError("ERR_REQUEST_INVALID", "response sent to a modern endpoint", {
      detail: "modern-response",
    });
  }
  const mirrored: Record<string, string> = {};
  const params = isObject(message.params) ? message.params : undefined;

  // The version in the body's _meta must be the header's (Request Metadata, Protocol Version Header).
  // A notification carries no such requirement in this revision; when it does carry _meta, it must agree.
  const meta = params && isObject(params["_meta"]) ? params["_meta"] : undefined;
  const bodyVersion = meta?.[PROTOCOL_VERSION_META_KEY];
  if (message.kind === "request" || bodyVersion !== undefined) {
    if (bodyVersion !== version) throw mismatch("protocol-version-meta");
  }

  const methodHeader = single(headers, "mcp-method");
  if (message.kind === "request" && methodHeader === undefined) throw mismatch("mcp-method-missing");
  if (methodHeader !== undefined) {
    if (methodHeader !== message.method) throw mismatch("mcp-method");
    mirrored["mcp-method"] = methodHeader;
  }

  const nameField = NAMED_METHODS.get(message.method);
  const nameHeader = single(headers, "mcp-name");
  if (nameField !== undefined) {
    const bodyName = params?.[nameField];
    if (typeof bodyName !== "string") {
      // The method needs the field; without it the upstream refuses the request anyway, and the
      // gateway must not forward a header it could not check.
      throw mismatch("mcp-name-source-missing");
    }
    if (nameHeader === undefined) throw mismatch("mcp-name-missing");
    if (decodeMirrored(nameHeader) !== bodyName) throw mismatch("mcp-name");
    mirrored["mcp-name"] = nameHeader;
  } else if (nameHeader !== undefined) {
    // Other methods may carry Mcp-Name (tasks: the task id); its value is checked where the method's
    // policy reads it (task ownership), and it must at least be a well-formed mirrored value.
    if (decodeMirrored(nameHeader) === null) throw mismatch("mcp-name");
    mirrored["mcp-name"] = nameHeader;
  }

  // Mcp-Param-{Name}: which argument a name mirrors is declared in the tool's inputSchema
  // (x-mcp-header), which the gateway does not hold; the upstream, which processes the body, must
  // compare them (Server Behavior for Custom Headers). The gateway checks what it can without the
  // schema (well-formed names and values) and forwards exactly those values; it never decides on them.
  for (const [name, values] of Object.entries(headers)) {
    if (!name.startsWith("mcp-param-") || values === undefined) continue;
    if (!PARAM_HEADER.test(name) || values.length !== 1) throw mismatch("mcp-param");
    const [value] = values;
    if (value === undefined || decodeMirrored(value) === null) throw mismatch("mcp-param");
    mirrored[name] = value;
  }
  return { mirroredHeaders: mirrored, method: message.method };
}

/**
 * A mirrored value as the body would hold it: plain visible ASCII as it is, or the UTF-8 text of a
 * `=?base64?…?=` sentinel (Value Encoding). Null for anything malformed: control characters, invalid
 * base64 or UTF-8, or a plain value that looks like a sentinel.
 */
export function decodeMirrored(value: string): string | null {
  if (value.length === 0 || value.length > MAX_MIRRORED_VALUE_LENGTH) return null;
  const sentinel = BASE64_SENTINEL.exec(value);
  if (sentinel) {
    const encoded = sentinel[1] ?? "";
    const bytes = Buffer.from(encoded, "base64");
    // Canonical only: one value, one encoding (a second spelling is a second thing to disagree on).
    if (bytes.toString("base64") !== encoded) return null;
    try {
      return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
    } catch {
      return null;
    }
  }
  if (value.startsWith("=?base64?")) return null;
  return PLAIN_VALUE.test(value) ? value : null;
}

/** A value as a mirrored header carries it: plain when it is safe visible ASCII, else the base64 sentinel. */
export function encodeMirrored(value: string): string {
  if (PLAIN_VALUE.test(value) && !value.startsWith("=?base64?")) return value;
  return `=?base64?${Buffer.from(value, "utf8").toString("base64")}?=`;
}

function single(headers: DistinctHeaders, name: string): string | undefined {
  const values = headers[name];
  if (values === undefined || values.length === 0) return undefined;
  if (values.length !== 1) throw mismatch(`${name}-repeated`);
  return values[0];
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function mismatch(detail: string): GateError {
  return new GateError("ERR_HEADER_MISMATCH", "header mismatch", { detail });
}
