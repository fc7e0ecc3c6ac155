import type { Readable } from "node:stream";
import { GateError } from "../errors.ts";
import type { EchoedId } from "./http-responses.ts";

export interface InitializeAnswer {
  /** The upstream's body, exactly as received: what the client is sent (event ids rewritten). */
  readonly raw: Buffer;
  /**
   * `result.protocolVersion` of the JSON-RPC response answering the initialize request, or null when
   * the answer is a JSON-RPC error or holds no such response: then no session is created.
   */
  readonly protocolVersion: string | null;
}

export interface ReadInitializeOptions {
  readonly contentType: string | undefined;
  /** The initialize request's id: only the response with this id counts. */
  readonly id: EchoedId;
  readonly maxBytes: number;
  readonly timeoutMs: number;
}

const VERSION_SHAPE = /^\d{4}-\d{2}-\d{2}$/;

/**
 * Reads an upstream's answer to `initialize` whole, bounded in size and time, and finds the
 * negotiated protocol version in it (JSON, or the `data` of the SSE events of a stream that ends
 * after the response, as MCP servers send it). The gateway needs it before the client sees the
 * session id: the session is locked to that version (DESIGN, legacy sessions).
 */
export async function readInitializeResult(
  body: Readable,
  options: ReadInitializeOptions,
): Promise<InitializeAnswer> {
  const { raw, message } = await readJsonRpcAnswer(body, options);
  if (message === null || "error" in message) return { raw, protocolVersion: null };
  const result = message["result"];
  if (typeof result !== "object" || result === null) return { raw, protocolVersion: null };
  const version = (result as Record<string, unknown>)["protocolVersion"];
  return {
    raw,
    protocolVersion: typeof version === "string" && VERSION_SHAPE.test(version) ? version : null,
  };
}

/**
 * Reads an upstream's answer whole (bounded in size and time) and finds the JSON-RPC response whose
 * id is `options.id`, in a JSON body or in the `data` of an SSE stream's events. `message` is null
 * when there is none.
 */
export async function readJsonRpcAnswer(
  body: Readable,
  options: ReadInitializeOptions,
): Promise<{ raw: Buffer; message: Record<string, unknown> | null }> {
  const raw = await readBounded(body, options.maxBytes, options.timeoutMs);
  const text = raw.toString("utf8");
  const media = options.contentType?.split(";")[0]?.trim().toLowerCase();
  const payloads = media === "text/event-stream" ? sseDataPayloads(text) : [text];
  for (const payload of payloads) {
    const message = responseFor(payload, options.id);
    if (message !== null) return { raw, message };
  }
  return { raw, message: null };
}

function responseFor(payload: string, id: EchoedId): Record<string, unknown> | null {
  let message: unknown;
  try {
    message = JSON.parse(payload);
  } catch {
    return null;
  }
  if (typeof message !== "object" || message === null || Array.isArray(message)) return null;
  const m = message as Record<string, unknown>;
  if (m["jsonrpc"] !== "2.0" || m["id"] !== id) return null;
  return m;
}

/** The `data` of each event (multi-line data joined by "\n", per the SSE processing model). */
function sseDataPayloads(text: string): string[] {
  const events: string[] = [];
  let data: string[] = [];
  for (const line of text.split(/\r\n|\r|\n/)) {
    if (line === "") {
      if (data.length > 0) events.push(data.join("\n"));
      data = [];
      continue;
    }
    if (line.startsWith("data:")) data.push(line.slice(line[5] === " " ? 6 : 5));
  }
  if (data.length > 0) events.push(data.join("\n"));
  return events;
}

function readBounded(body: Readable, maxBytes: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const finish = (error: GateError | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error) {
        body.destroy();
        reject(error);
      } else resolve(Buffer.concat(chunks));
    };
    const timer = setTimeout(() => finish(unavailable("initialize-response-timeout")), timeoutMs);
    body.on("data", (chunk: Buffer) => {
      size += chunk.byteLength;
      if (size > maxBytes) return finish(unavailable("initialize-response-too-large"));
      chunks.push(chunk);
    });
    body.once("end", () => finish(null));
    body.once("error", () => finish(unavailable("initialize-response-broken")));
    body.once("close", () => finish(unavailable("initialize-response-broken")));
  });
}

function unavailable(detail: string): GateError {
  return new GateError("ERR_UPSTREAM_UNAVAILABLE", "upstream initialize answer unusable", { detail });
}
