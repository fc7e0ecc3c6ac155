import type { AssertionSigner } from "../crypto/assertion-signer.ts";
import { anonymousPrincipal } from "../identity/anonymous.ts";
import { readJsonRpcAnswer } from "./initialize-result.ts";
import { PROTOCOL_VERSION_META_KEY } from "./modern-request.ts";
import { GATEWAY_PROTOCOL_VERSIONS, type SupportedVersions } from "./protocol-era.ts";
import type { UpstreamClient } from "./upstream-client.ts";

const DISCOVERY_TIMEOUT_MS = 5_000;
const MAX_DISCOVERY_ANSWER_BYTES = 256 * 1024;
const VERSION_SHAPE = /^\d{4}-\d{2}-\d{2}$/;

export interface Discovery {
  readonly versions: SupportedVersions;
  /** How the answer was reached, for the start-up log line. */
  readonly how: "discover" | "unsupported-version-list" | "legacy-fallback" | "unreachable";
}

/**
 * The versions an upstream without `protocolVersions` speaks, learned at start the way a 2026-07-28
 * client learns them (Versioning, backward compatibility): a `server/discover` request. A result
 * lists its `supportedVersions`; a -32022 answer lists `data.supported`; any other answer means a
 * server from before the modern era, which speaks every legacy version the gateway serves. An
 * upstream that cannot be reached is treated the same way and reported, so the operator can declare
 * its versions instead of relying on discovery.
 *
 * The request carries an assertion for a throwaway anonymous principal: discovery acts for nobody.
 */
export async function discoverUpstreamVersions(
  client: UpstreamClient,
  signer: AssertionSigner,
  audience: string,
): Promise<Discovery> {
  const [modernVersion] = GATEWAY_PROTOCOL_VERSIONS.modern;
  const legacyOnly: SupportedVersions = { legacy: [...GATEWAY_PROTOCOL_VERSIONS.legacy], modern: [] };
  if (modernVersion === undefined) return { versions: legacyOnly, how: "legacy-fallback" };
  const id = 1;
  const body = Buffer.from(
    JSON.stringify({
      jsonrpc: "2.0",
      id,
      method: "server/discover",
      params: {
        _meta: {
          [PROTOCOL_VERSION_META_KEY]: modernVersion,
          "io.modelcontextprotocol/clientInfo": { name: "tenantgate", version: "discovery" },
          "io.modelcontextprotocol/clientCapabilities": {},
        },
      },
    }),
  );
  try {
    const answer = await client.request({
      method: "POST",
      body,
      headers: {
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
        "mcp-protocol-version": modernVersion,
        "mcp-method": "server/discover",
        "tenantgate-assertion": await signer.sign(anonymousPrincipal(), { audience }),
      },
      signal: AbortSignal.timeout(DISCOVERY_TIMEOUT_MS),
    });
    const contentType = answer.headers["content-type"];
    const { message } = await readJsonRpcAnswer(answer.body, {
      contentType: Array.isArray(contentType) ? contentType[0] : contentType,
      id,
      maxBytes: MAX_DISCOVERY_ANSWER_BYTES,
      timeoutMs: DISCOVERY_TIMEOUT_MS,
    });
    const result = record(message?.["result"]);
    const listed = result ? versionList(result["supportedVersions"]) : undefined;
    if (answer.status === 200 && listed) return { versions: servable(listed), how: "discover" };
    const error = record(message?.["error"]);
    const supported =
      error?.["code"] === -32022 ? versionList(record(error["data"])?.["supported"]) : undefined;
    if (supported) return { versions: servable(supported), how: "unsupported-version-list" };
    return { versions: legacyOnly, how: "legacy-fallback" };
  } catch {
    return { versions: legacyOnly, how: "unreachable" };
  }
}

function servable(listed: readonly string[]): SupportedVersions {
  return {
    legacy: GATEWAY_PROTOCOL_VERSIONS.legacy.filter((v) => listed.includes(v)),
    modern: GATEWAY_PROTOCOL_VERSIONS.modern.filter((v) => listed.includes(v)),
  };
}

function record(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

function versionList(value: unknown): string[] | undefined {
  if (!Array.isArray(value) || value.length === 0 || value.length > 64) return undefined;
  return value.every((v) => typeof v === "string" && VERSION_SHAPE.test(v)) ? (value as string[]) : undefined;
}
