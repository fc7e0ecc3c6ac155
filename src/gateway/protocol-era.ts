import { invalidArgument } from "../errors.ts";

/** The version a request without `MCP-Protocol-Version` speaks (2025-06-18 transports, "backwards compatibility"). */
export const DEFAULT_PROTOCOL_VERSION = "2025-03-26";

/** The versions the gateway can police, by era (DESIGN "MCP specifics"). */
export const GATEWAY_PROTOCOL_VERSIONS = Object.freeze({
  legacy: Object.freeze(["2025-03-26", "2025-06-18", "2025-11-25"] as const),
  modern: Object.freeze(["2026-07-28"] as const),
});

/** `UnsupportedProtocolVersionError`'s code (MCP 2026-07-28 basic/versioning). */
export const UNSUPPORTED_PROTOCOL_VERSION_CODE = -32022;
/** The HTTP status that error is answered with on Streamable HTTP. */
export const UNSUPPORTED_PROTOCOL_VERSION_STATUS = 400;

export interface SupportedVersions {
  readonly legacy: readonly string[];
  readonly modern: readonly string[];
}

export type ProtocolEra =
  | { readonly era: "legacy" | "modern"; readonly version: string }
  | {
      readonly era: "unsupported";
      /** Every supported version, newest first: what the error's `data.supported` lists. */
      readonly supported: string[];
      /**
       * The version the request named when it was one well-formed `YYYY-MM-DD` value, else "" (the
       * spec requires `data.requested`; a malformed or repeated header names no version).
       */
      readonly requested: string;
    };

const VERSION_SHAPE = /^\d{4}-\d{2}-\d{2}$/;

/**
 * Which era a request belongs to, from every occurrence of its `MCP-Protocol-Version` header
 * (`request.headersDistinct["mcp-protocol-version"]`).
 *
 * Absent means 2025-03-26, as the transport spec requires of servers. Present but empty, repeated,
 * or not exactly `YYYY-MM-DD` is unsupported rather than defaulted: a header the gateway cannot read
 * must never be policed as some other version the upstream may read differently. Versions are
 * compared exactly (no trimming beyond what Node's parser does, no case folding: digits have none).
 */
export function classifyProtocolVersion(
  headerValues: readonly string[] | undefined,
  supported: SupportedVersions,
): ProtocolEra {
  const legacy = versionList(supported?.legacy, "supported.legacy");
  const modern = versionList(supported?.modern, "supported.modern");
  if (legacy.some((version) => modern.includes(version))) {
    throw invalidArgument("supported", "must not list a version as both legacy and modern");
  }

  if (headerValues === undefined || (Array.isArray(headerValues) && headerValues.length === 0)) {
    // Absent: the default version, which is supported only if the caller's legacy list has it.
    return legacy.includes(DEFAULT_PROTOCOL_VERSION)
      ? { era: "legacy", version: DEFAULT_PROTOCOL_VERSION }
      : unsupported(legacy, modern, DEFAULT_PROTOCOL_VERSION);
  }
  if (!Array.isArray(headerValues)) {
    throw invalidArgument("headerValues", "must be the header's values from request.headersDistinct");
  }
  const [value] = headerValues;
  if (headerValues.length !== 1 || typeof value !== "string" || !VERSION_SHAPE.test(value)) {
    return unsupported(legacy, modern, "");
  }
  if (modern.includes(value)) return { era: "modern", version: value };
  if (legacy.includes(value)) return { era: "legacy", version: value };
  return unsupported(legacy, modern, value);
}

export interface UnsupportedVersionErrorBody {
  readonly jsonrpc: "2.0";
  readonly id: string | number | null;
  readonly error: {
    readonly code: typeof UNSUPPORTED_PROTOCOL_VERSION_CODE;
    readonly message: "Unsupported protocol version";
    readonly data: { readonly supported: readonly string[]; readonly requested: string };
  };
}

/**
 * The JSON-RPC error the gateway answers an unsupported version with (HTTP 400). `id` is the
 * request's JSON-RPC id, or null when it had none or could not be read.
 *
 * `data.requested` is required by the 2026-07-28 schema; pass the classification's `requested`,
 * which is only ever a well-formed date or "", so nothing the client wrote beyond that is echoed.
 * A modern client that sees this error knows the gateway is modern and retries with a listed
 * version; a legacy-only upstream is reached by listing only legacy versions here.
 */
export function unsupportedVersionError(
  id: string | number | null | undefined,
  supported: readonly string[],
  requested = "",
): UnsupportedVersionErrorBody {
  if (id !== undefined && id !== null && typeof id !== "string" && !Number.isFinite(id)) {
    throw invalidArgument("id", "must be a JSON-RPC id (string, finite number or null)");
  }
  const list = versionList(supported, "supported");
  if (list.length === 0) throw invalidArgument("supported", "must list at least one version");
  if (requested !== "" && !VERSION_SHAPE.test(requested)) {
    throw invalidArgument("requested", "must be a YYYY-MM-DD version or empty");
  }
  return {
    jsonrpc: "2.0",
    id: id ?? null,
    error: {
      code: UNSUPPORTED_PROTOCOL_VERSION_CODE,
      message: "Unsupported protocol version",
      data: { supported: [...list], requested },
    },
  };
}

function unsupported(legacy: readonly string[], modern: readonly string[], requested: string): ProtocolEra {
  // Newest first (the date format sorts as text): a client retrying picks from the front.
  const supported = [...new Set([...modern, ...legacy])].sort().reverse();
  return { era: "unsupported", supported, requested };
}

function versionList(values: readonly string[] | undefined, name: string): readonly string[] {
  if (
    !Array.isArray(values) ||
    !values.every((value) => typeof value === "string" && VERSION_SHAPE.test(value))
  ) {
    throw invalidArgument(name, "must be a list of YYYY-MM-DD versions");
  }
  return values;
}
