import type { ServerResponse } from "node:http";
import { GateError, type GateErrorCode, toWire } from "../errors.ts";

/** A JSON-RPC id as it may be echoed: what the request carried, or null when it had none. */
export type EchoedId = string | number | null;

/**
 * JSON-RPC error codes for the gateway's own refusals. The HTTP status and the `data.code` string
 * carry the meaning; the JSON-RPC code only tells a client which family the refusal is in.
 */
function jsonRpcCodeOf(code: GateErrorCode): number {
  switch (code) {
    case "ERR_REQUEST_INVALID":
    case "ERR_BATCH_REFUSED":
      return -32600; // Invalid Request
    case "ERR_SESSION_NOT_FOUND":
      return -32001; // what MCP servers answer for an unknown session (SDK convention)
    case "ERR_HEADER_MISMATCH":
      return -32020; // HeaderMismatch (MCP 2026-07-28)
    case "ERR_TASK_NOT_FOUND":
      return -32602; // Invalid params, what an unknown task id gets
    case "ERR_METHOD_NOT_FOUND":
      return -32601;
    default:
      return -32000; // implementation-defined server error
  }
}

/**
 * Headers on every answer the gateway writes itself. `no-store`: an error or metadata document must
 * not be cached by an intermediary and replayed to someone else. `nosniff`: a JSON body is never
 * reinterpreted as HTML by a browser that reached the gateway.
 */
const COMMON_HEADERS = Object.freeze({
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
});

export function sendJson(
  response: ServerResponse,
  status: number,
  body: unknown,
  headers: Readonly<Record<string, string>> = {},
): void {
  if (response.headersSent || response.destroyed) {
    response.destroy();
    return;
  }
  const text = JSON.stringify(body);
  response.writeHead(status, {
    ...COMMON_HEADERS,
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    // An answer given before the request's body was read to its end (413, a refusal that never
    // needed the body) closes the connection: the rest of an oversized upload is never read.
    ...(response.req?.complete === false ? { connection: "close" } : {}),
    ...headers,
  });
  response.end(text);
}

/**
 * The gateway's refusal: status and a JSON-RPC error body built from the error's code only
 * (`toWire`), so no message, detail or cause of the error reaches the client, and two refusals with
 * the same code are byte-identical apart from the echoed JSON-RPC id (THREATS "generic").
 */
export function sendError(
  response: ServerResponse,
  error: GateError | GateErrorCode,
  options: { readonly id?: EchoedId; readonly headers?: Readonly<Record<string, string>> } = {},
): void {
  const wire = toWire(typeof error === "string" ? error : error.code);
  sendJson(
    response,
    wire.status,
    {
      jsonrpc: "2.0",
      id: options.id ?? null,
      error: {
        code: jsonRpcCodeOf(wire.code),
        message: wire.message,
        data: {
          code: wire.code,
          // The one refusal that names something: the vault entry to enroll (a configured name).
          ...(typeof error !== "string" &&
          error.credential !== undefined &&
          wire.code === "ERR_CREDENTIAL_REQUIRED"
            ? { credential: error.credential }
            : {}),
        },
      },
    },
    options.headers,
  );
}

/** Any thrown value as a GateError: unknown failures become ERR_INTERNAL, keeping the original as cause. */
export function asGateError(error: unknown): GateError {
  if (error instanceof GateError) return error;
  return new GateError("ERR_INTERNAL", "unexpected failure", { cause: error });
}

/** A Content-Type's media type, lower-cased, without parameters (RFC 9110 section 8.3.1). */
export function mediaTypeOf(contentType: string | undefined): string | undefined {
  return contentType?.split(";")[0]?.trim().toLowerCase();
}
