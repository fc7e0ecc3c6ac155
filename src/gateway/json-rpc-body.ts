import type { IncomingMessage } from "node:http";
import { GateError, invalidArgument } from "../errors.ts";

/** A JSON-RPC id as MCP allows it: a string or an integer, never null on a request (MCP basic). */
export type JsonRpcId = string | number;

export type JsonRpcMessage =
  | { readonly kind: "request"; readonly id: JsonRpcId; readonly method: string; readonly params: unknown }
  | { readonly kind: "notification"; readonly method: string; readonly params: unknown }
  | { readonly kind: "response"; readonly id: JsonRpcId | null };

export interface JsonRpcPayload {
  /** Whether the body was a JSON array (a 2025-03-26 batch), even of one message. */
  readonly batch: boolean;
  readonly messages: readonly JsonRpcMessage[];
}

export interface ParseJsonRpcOptions {
  /** Most messages one batch may carry; a longer batch is ERR_BATCH_REFUSED. */
  readonly maxBatchSize: number;
  /** Batches exist only in 2025-03-26; every later version refuses them. */
  readonly allowBatch: boolean;
}

/** Longest method name accepted: far above any MCP method, short enough to log and compare cheaply. */
/** The `detail` of the refusal of a body with a repeated object key (the modern era answers it -32020). */
export const DUPLICATE_KEY_DETAIL = "duplicate object key";

export const MAX_METHOD_LENGTH = 256;
/** Longest string id accepted (UTF-16 code units). Ids are echoed in error bodies and used as map keys. */
export const MAX_STRING_ID_LENGTH = 256;

/**
 * The request body, whole, as bytes, refusing it as soon as it is known to exceed `maxBytes`.
 *
 * A declared `Content-Length` above the limit is refused before a byte is read; a body that streams
 * past the limit (chunked, or a lying length Node has not caught yet) is refused at the chunk that
 * crosses it, and nothing more is buffered. The promise settles exactly once, and every listener this
 * function added is removed when it does.
 *
 * On refusal the request is paused, not destroyed: whether to answer 413 and close the connection, or
 * drain it to keep the socket, is the caller's choice (draining lets a client read the answer; it
 * also lets it keep sending). Aborted or failed uploads are ERR_REQUEST_INVALID; Node's own error
 * (its text) is kept as `cause` only, never in the message.
 *
 * Call it before anything else reads the body: a body already read, or read as text, is refused as a
 * wiring mistake (ERR_ARGUMENT_INVALID).
 */
export function readRequestBody(request: IncomingMessage, maxBytes: number): Promise<Buffer> {
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
    return Promise.reject(invalidArgument("maxBytes", "must be a non-negative safe integer"));
  }
  if (typeof request !== "object" || request === null || typeof request.on !== "function") {
    return Promise.reject(invalidArgument("request", "must be an IncomingMessage"));
  }
  if (request.readableDidRead || request.readableEnded) {
    return Promise.reject(invalidArgument("request", "must not have had its body read"));
  }
  if (request.readableEncoding !== null) {
    return Promise.reject(invalidArgument("request", "must not have an encoding set"));
  }
  if (request.destroyed) return Promise.reject(invalidRequest("request already closed"));

  const declared = request.headers["content-length"];
  if (declared !== undefined) {
    // Node's parser already refuses a malformed or conflicting Content-Length; this guards a
    // request object built some other way, where a value we cannot read must not mean "no limit".
    if (!/^\d{1,16}$/.test(declared)) return Promise.reject(invalidRequest("content-length malformed"));
    if (Number(declared) > maxBytes) return Promise.reject(tooLarge("declared content-length"));
  }

  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    let settled = false;

    const cleanup = (): void => {
      settled = true;
      request.off("data", onData);
      request.off("end", onEnd);
      request.off("error", onError);
      request.off("close", onClose);
      chunks.length = 0;
    };
    const fail = (error: GateError): void => {
      if (settled) return;
      cleanup();
      request.pause();
      reject(error);
    };
    const onData = (chunk: unknown): void => {
      if (settled) return;
      if (!Buffer.isBuffer(chunk)) {
        fail(invalidArgument("request", "must not have an encoding set"));
        return;
      }
      received += chunk.length;
      if (received > maxBytes) {
        fail(tooLarge("streamed body"));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      if (settled) return;
      const body = Buffer.concat(chunks, received);
      cleanup();
      resolve(body);
    };
    const onError = (error: unknown): void => {
      if (settled) return;
      const refusal = new GateError("ERR_REQUEST_INVALID", "invalid request", {
        detail: "request body failed",
        cause: error,
      });
      fail(refusal);
    };
    // `close` before `end` is an aborted upload (Node emits `error` only when someone listens for it,
    // and only on some paths): both land here, whichever comes first.
    const onClose = (): void => fail(invalidRequest("request closed before its body ended"));

    request.on("data", onData);
    request.on("end", onEnd);
    request.on("error", onError);
    request.on("close", onClose);
    // Adding a `data` listener resumes a paused-by-default stream; make it explicit for a caller that
    // paused it earlier.
    request.resume();
  });
}

// Decoding is strict: an invalid byte sequence is a malformed body, never silently replaced (a
// replacement character would make the gateway check a different string than the upstream reads).
// `ignoreBOM: true` keeps a BOM in the output so the check below sees it instead of it vanishing.
const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * The JSON-RPC messages of a POST body, checked element by element. Anything not exactly one
 * well-formed message, or (when `allowBatch`) a non-empty array of them, is refused as a whole:
 * ERR_BATCH_REFUSED for a batch the options forbid, ERR_REQUEST_INVALID for everything else. `detail`
 * names the flaw in general terms and never a value from the body.
 *
 * Beyond JSON-RPC 2.0 itself it refuses, on purpose:
 * - a byte-order mark (RFC 8259 section 8.1: senders MUST NOT add one), and invalid UTF-8;
 * - duplicate keys in any object, at any depth: JSON.parse keeps the last, other parsers keep the
 *   first or fail, and the gateway must decide on exactly what the upstream will read (DESIGN,
 *   modern requests; THREATS M3);
 * - a `null` request id (MCP basic: ids MUST NOT be null), non-integer or unsafe-integer numeric ids
 *   (they do not survive a round trip through JSON unchanged), and two requests with one id in a
 *   batch (answers are matched by id, so the second would be ambiguous).
 *
 * `params` is the parsed value itself, not a copy: JSON.parse defines `__proto__` as an own property
 * and nothing here spreads or merges objects, so no key can reach a prototype.
 */
export function parseJsonRpcBody(body: Buffer, options: ParseJsonRpcOptions): JsonRpcPayload {
  if (!(body instanceof Uint8Array)) throw invalidArgument("body", "must be a Buffer");
  const maxBatchSize = options?.maxBatchSize;
  if (!Number.isSafeInteger(maxBatchSize) || maxBatchSize < 1) {
    throw invalidArgument("maxBatchSize", "must be a positive integer");
  }
  if (typeof options.allowBatch !== "boolean") throw invalidArgument("allowBatch", "must be a boolean");

  if (body.length >= 3 && body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf) {
    throw invalidRequest("body starts with a byte-order mark");
  }
  let text: string;
  try {
    text = UTF8.decode(body);
  } catch {
    throw invalidRequest("body is not UTF-8");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    // The SyntaxError is not kept even as `cause`: V8 quotes the input around the error position.
    throw invalidRequest("body is not JSON");
  }
  if (hasDuplicateKey(text)) throw invalidRequest(DUPLICATE_KEY_DETAIL);

  if (Array.isArray(value)) {
    if (!options.allowBatch) {
      throw new GateError("ERR_BATCH_REFUSED", "batch refused", { detail: "batches not allowed" });
    }
    // JSON-RPC 2.0 section 6: an empty array is an invalid request, not an empty batch.
    if (value.length === 0) throw invalidRequest("empty batch");
    if (value.length > maxBatchSize) {
      throw new GateError("ERR_BATCH_REFUSED", "batch refused", { detail: "batch too long" });
    }
    const messages = value.map(toMessage);
    const seen = new Set<string>();
    for (const message of messages) {
      if (message.kind !== "request") continue;
      const key = `${typeof message.id}:${message.id}`;
      if (seen.has(key)) throw invalidRequest("request id repeated in batch");
      seen.add(key);
    }
    return Object.freeze({ batch: true, messages: Object.freeze(messages) });
  }
  return Object.freeze({ batch: false, messages: Object.freeze([toMessage(value)]) });
}

/** The id of the first request in the payload, for the `id` of an error answering it; else null. */
export function firstRequestId(payload: JsonRpcPayload): JsonRpcId | null {
  for (const message of payload?.messages ?? []) {
    if (message.kind === "request") return message.id;
  }
  return null;
}

function toMessage(value: unknown): JsonRpcMessage {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalidRequest("message is not an object");
  }
  const message = value as Record<string, unknown>;
  if (own(message, "jsonrpc") !== "2.0") throw invalidRequest("jsonrpc member missing or not 2.0");

  const hasParams = Object.hasOwn(message, "params");
  const params = own(message, "params");
  const hasResult = Object.hasOwn(message, "result");
  const hasError = Object.hasOwn(message, "error");

  if (Object.hasOwn(message, "method")) {
    const method = own(message, "method");
    if (typeof method !== "string") throw invalidRequest("method not a string");
    if (method.length === 0 || method.length > MAX_METHOD_LENGTH) throw invalidRequest("method length");
    // Control characters have no place in a method name and would break a log line later.
    // biome-ignore lint/suspicious/noControlCharactersInRegex: the point is to find them.
    if (/[\u0000-\u001f\u007f-\u009f]/.test(method)) throw invalidRequest("method has control characters");
    if (hasResult || hasError) throw invalidRequest("message is both a call and a response");
    if (hasParams && (typeof params !== "object" || params === null)) {
      throw invalidRequest("params not an object or array");
    }
    if (!Object.hasOwn(message, "id")) return { kind: "notification", method, params };
    return { kind: "request", id: readId(own(message, "id")), method, params };
  }

  // A response (to a server-initiated request such as sampling or elicitation).
  if (hasParams) throw invalidRequest("response has params");
  if (hasResult === hasError) throw invalidRequest("response needs exactly one of result and error");
  if (!Object.hasOwn(message, "id")) throw invalidRequest("response without id");
  const id = own(message, "id");
  if (hasError) {
    const error = own(message, "error");
    if (typeof error !== "object" || error === null || Array.isArray(error)) {
      throw invalidRequest("error not an object");
    }
    if (!Number.isSafeInteger(own(error, "code")) || typeof own(error, "message") !== "string") {
      throw invalidRequest("error shape");
    }
    // JSON-RPC 2.0 section 5: a null id only when the request's id could not be read, i.e. on an error.
    if (id === null) return { kind: "response", id: null };
  }
  return { kind: "response", id: readId(id) };
}

function readId(id: unknown): JsonRpcId {
  if (typeof id === "string") {
    if (id.length > MAX_STRING_ID_LENGTH) throw invalidRequest("id too long");
    return id;
  }
  if (typeof id === "number") {
    if (!Number.isSafeInteger(id)) throw invalidRequest("id not an integer");
    return id;
  }
  throw invalidRequest("id not a string or integer");
}

/** An own property's value, or undefined: never a value inherited from Object.prototype. */
function own(object: object, key: string): unknown {
  return Object.hasOwn(object, key) ? (object as Record<string, unknown>)[key] : undefined;
}

/**
 * Whether any object in `text` (already known to be valid JSON) has two members with the same name
 * after unescaping (`"a"` and `"\u0061"` are one name). One pass, an explicit stack: no recursion,
 * so nesting depth cannot overflow the call stack.
 */
function hasDuplicateKey(text: string): boolean {
  // One entry per open container: the names seen so far for an object, null for an array.
  const stack: (Set<string> | null)[] = [];
  let expectKey = false;
  let index = 0;
  while (index < text.length) {
    const char = text.charCodeAt(index);
    if (char === 0x22 /* " */) {
      const end = endOfString(text, index);
      const keys = stack[stack.length - 1];
      if (expectKey && keys) {
        const raw = text.slice(index, end + 1);
        // Parse only strings that contain an escape; the rest are their own value.
        const name = raw.includes("\\") ? (JSON.parse(raw) as string) : raw.slice(1, -1);
        if (keys.has(name)) return true;
        keys.add(name);
        expectKey = false;
      }
      index = end + 1;
      continue;
    }
    if (char === 0x7b /* { */) {
      stack.push(new Set());
      expectKey = true;
    } else if (char === 0x5b /* [ */) {
      stack.push(null);
    } else if (char === 0x7d /* } */ || char === 0x5d /* ] */) {
      stack.pop();
      expectKey = false;
    } else if (char === 0x2c /* , */) {
      expectKey = stack.at(-1) instanceof Set;
    }
    index++;
  }
  return false;
}

/** Index of the quote that closes the string opening at `start`. */
function endOfString(text: string, start: number): number {
  let index = start + 1;
  while (index < text.length) {
    const char = text.charCodeAt(index);
    if (char === 0x5c /* \ */) index += 2;
    else if (char === 0x22) return index;
    else index++;
  }
  return index;
}

function invalidRequest(detail: string): GateError {
  return new GateError("ERR_REQUEST_INVALID", "invalid request", { detail });
}

function tooLarge(detail: string): GateError {
  return new GateError("ERR_BODY_TOO_LARGE", "request too large", { detail });
}
