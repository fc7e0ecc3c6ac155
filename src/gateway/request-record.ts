import type { IncomingMessage, ServerResponse } from "node:http";
import type { GateErrorCode } from "../errors.ts";
import type { JsonRpcPayload } from "./json-rpc-body.ts";

/**
 * What the gateway learned about one request, filled in along the pipeline and handed once, when
 * the response finished or the connection closed, to `GatewayDependencies.onRequestDone` (the access
 * log, metrics).
 *
 * Identifiers here are raw (an address, a principal, a session digest): whoever writes the record
 * anywhere tags them first, as the security events do. Nothing here is client text the gateway did
 * not recognise: the path only when it names an endpoint the gateway serves (a client may put a
 * secret in a path: some MCP clients embed API keys in their server URL), never a query string, and
 * the MCP method only from a closed list.
 */
export interface RequestRecord {
  /** The HTTP method (Node's parser accepts a fixed set of them). */
  readonly httpMethod: string;
  /** The request path without its query, only when it is an endpoint of this gateway. */
  readonly path: string | undefined;
  /** The upstream's configured name, once routed. */
  readonly upstream: string | undefined;
  /** The era `MCP-Protocol-Version` placed the request in (`unsupported`: answered with -32022). */
  readonly era: "legacy" | "modern" | "unsupported" | undefined;
  /** From the checked body: a known MCP method, `(other)`, `(batch)` or `(response)`. */
  readonly mcpMethod: string | undefined;
  /** The status sent; undefined when the connection closed before a response head was written. */
  readonly status: number | undefined;
  /** The code of the gateway's own refusal, when it refused. */
  readonly errorCode: GateErrorCode | undefined;
  /** From the request's arrival to the response's end (or the connection's close). */
  readonly durationMs: number;
  /**
   * Bytes written to the connection for this response, head included. A client pipelining requests
   * on one connection can shift bytes between neighbouring records.
   */
  readonly bytesOut: number;
  /** The connection closed before the response was finished (the client left, or a stream was cut). */
  readonly aborted: boolean;
  /** Raw: tag before writing. The address per-IP limits use. */
  readonly clientAddress: string | undefined;
  /** Raw: tag before writing. The authenticated principal (or anonymous session's owner). */
  readonly principal: RecordPrincipal | undefined;
  /** The session id's digest (never the id). Tag before writing. */
  readonly sessionDigest: string | undefined;
}

export interface RecordPrincipal {
  readonly issuer: string;
  readonly tenant: string;
  readonly subject: string;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** The record while its request is in flight: the pipeline sets fields as it learns them. */
export type RequestRecordDraft = Mutable<
  Omit<RequestRecord, "durationMs" | "bytesOut" | "aborted" | "status" | "principal">
> & {
  principal: RecordPrincipal | undefined;
};

export interface RequestTracker {
  readonly draft: RequestRecordDraft;
  /** The finished record; the first call decides it, later calls return undefined. */
  finish(response: ServerResponse): RequestRecord | undefined;
}

export function trackRequest(request: IncomingMessage): RequestTracker {
  const startedAt = performance.now();
  const socket = request.socket;
  const bytesBefore = socket.bytesWritten;
  const draft: RequestRecordDraft = {
    httpMethod: request.method ?? "",
    path: undefined,
    upstream: undefined,
    era: undefined,
    mcpMethod: undefined,
    errorCode: undefined,
    clientAddress: undefined,
    principal: undefined,
    sessionDigest: undefined,
  };
  let done = false;
  return {
    draft,
    finish(response) {
      if (done) return undefined;
      done = true;
      return Object.freeze({
        ...draft,
        principal:
          draft.principal === undefined
            ? undefined
            : Object.freeze({
                issuer: draft.principal.issuer,
                tenant: draft.principal.tenant,
                subject: draft.principal.subject,
              }),
        status: response.headersSent ? response.statusCode : undefined,
        durationMs: Math.round((performance.now() - startedAt) * 1000) / 1000,
        bytesOut: Math.max(0, socket.bytesWritten - bytesBefore),
        aborted: !response.writableFinished,
      });
    },
  };
}

/**
 * MCP methods by name (2025-03-26 .. 2026-07-28, the tasks extension included). A method outside the
 * list is written as `(other)`: the name is client text, and a label set must stay bounded.
 */
const MCP_METHODS: ReadonlySet<string> = new Set([
  "initialize",
  "ping",
  "server/discover",
  "tools/list",
  "tools/call",
  "resources/list",
  "resources/templates/list",
  "resources/read",
  "resources/subscribe",
  "resources/unsubscribe",
  "prompts/list",
  "prompts/get",
  "completion/complete",
  "logging/setLevel",
  "sampling/createMessage",
  "elicitation/create",
  "roots/list",
  "subscriptions/listen",
  "tasks/get",
  "tasks/result",
  "tasks/cancel",
  "tasks/list",
  "tasks/update",
  "notifications/initialized",
  "notifications/cancelled",
  "notifications/progress",
  "notifications/message",
  "notifications/roots/list_changed",
  "notifications/resources/list_changed",
  "notifications/resources/updated",
  "notifications/tools/list_changed",
  "notifications/prompts/list_changed",
  "notifications/elicitation/complete",
  "notifications/tasks/status",
]);

/** The MCP method a checked payload is written as. */
export function mcpMethodOf(payload: JsonRpcPayload): string {
  if (payload.batch) return "(batch)";
  const [message] = payload.messages;
  if (message === undefined) return "(other)";
  if (message.kind === "response") return "(response)";
  return MCP_METHODS.has(message.method) ? message.method : "(other)";
}
