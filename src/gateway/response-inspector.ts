import { Transform, type TransformCallback } from "node:stream";
import { GateError } from "../errors.ts";

/**
 * Looks at every JSON-RPC message an upstream sends back, before the client sees it, so the gateway
 * can claim what the upstream minted (task ids) and withhold what the caller may not have. The hook
 * returns `undefined` to pass a message unchanged, or a replacement message to send instead.
 *
 * Two shapes, as Streamable HTTP answers a request:
 * - a JSON body: read whole (bounded), inspected, written;
 * - an SSE stream: split into events as they arrive; each event is held only while its hook runs,
 *   so a CreateTaskResult's event reaches the client after its owner record exists, and every other
 *   event passes at once. Comments, ids and other fields are kept byte for byte; only the `data` of
 *   a replaced message changes.
 */
export type MessageHook = (
  message: Record<string, unknown>,
) => Promise<Record<string, unknown> | undefined | typeof DROP>;

/** What a hook returns to withhold a message entirely (an SSE event is left out of the stream). */
export const DROP: unique symbol = Symbol("drop");

/** An event longer than this is not inspected but refused (an upstream failure, not a client one). */
const MAX_EVENT_BYTES = 8 * 1024 * 1024;
const CR = 0x0d;
const LF = 0x0a;

export async function inspectJson(body: Buffer, hook: MessageHook): Promise<Buffer> {
  let message: unknown;
  try {
    message = JSON.parse(body.toString("utf8"));
  } catch {
    return body; // not JSON: nothing the gateway could claim or withhold (the client cannot use it either)
  }
  const replacement = await inspectMessage(message, hook);
  // A JSON body is one message answering the request; withholding it leaves nothing to send, so a
  // dropped one becomes an empty object the client cannot mistake for an answer.
  if (replacement === DROP) return Buffer.from("{}");
  return replacement === undefined ? body : Buffer.from(JSON.stringify(replacement));
}

/**
 * One message, or a 2025-03-26 batch of them (an array answering a batch request): each element is
 * judged on its own, so a batch answer is claimed and filtered exactly as single answers are.
 * Undefined when nothing changed.
 */
async function inspectMessage(message: unknown, hook: MessageHook): Promise<unknown> {
  if (isRecord(message)) return hook(message);
  if (!Array.isArray(message)) return undefined;
  let changed = false;
  const elements: unknown[] = [];
  for (const element of message) {
    const replacement = isRecord(element) ? await hook(element) : undefined;
    if (replacement !== undefined) changed = true;
    // A withheld element leaves the batch; the rest of it still goes to the client.
    if (replacement !== DROP) elements.push(replacement ?? element);
  }
  if (changed && elements.length === 0) return DROP;
  return changed ? elements : undefined;
}

/** An SSE transform running `hook` on every event whose data is one JSON-RPC message. */
export function inspectSse(hook: MessageHook): Transform {
  let pending: Buffer = Buffer.alloc(0);
  // Where the scan for the end of the pending event resumes, and the line state there. The event
  // stream grammar (HTML, Server-sent events): a line ends with CRLF, LF or CR, and an empty line
  // ends the event. Any mix of the three is legal ("\n\r\n", "\r\n\r"), so the gateway splits
  // exactly as the client's parser does; otherwise two events would be read as one and neither
  // inspected.
  let scanned = 0;
  let atLineStart = true;
  /** The last line ended with a CR: an LF right after it is part of that line ending. */
  let afterCr = false;

  /** The length of the first complete event in `pending`, or -1 when it is not complete yet. */
  function eventEnd(): number {
    for (; scanned < pending.length; scanned++) {
      const byte = pending[scanned];
      if (afterCr) {
        afterCr = false;
        if (byte === LF) continue;
      }
      if (byte !== CR && byte !== LF) {
        atLineStart = false;
        continue;
      }
      afterCr = byte === CR;
      if (!atLineStart) {
        atLineStart = true;
        continue;
      }
      // An empty line: the event ends with it (its LF too, when a CRLF's LF has arrived).
      let end = scanned + 1;
      if (afterCr && pending[end] === LF) {
        afterCr = false;
        end += 1;
      }
      scanned = 0;
      return end;
    }
    return -1;
  }

  async function processEvent(event: Buffer, transform: Transform): Promise<void> {
    // A byte order mark is skipped by the client's parser; it must not hide a data line here.
    const text = event.toString("utf8").replace(/^\uFEFF/, "");
    const lines = text.split(/\r\n|\n|\r/);
    const data = lines
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(line[5] === " " ? 6 : 5));
    if (data.length === 0) {
      transform.push(event);
      return;
    }
    let message: unknown;
    try {
      message = JSON.parse(data.join("\n"));
    } catch {
      transform.push(event);
      return;
    }
    const replacement = await inspectMessage(message, hook);
    if (replacement === DROP) return;
    if (replacement === undefined) {
      transform.push(event);
      return;
    }
    // The event keeps its other fields (id, event, retry, comments); its data becomes the replacement.
    const kept = lines.filter((line) => !line.startsWith("data:") && line !== "");
    const terminator = text.match(/(\r\n|\n|\r)+$/)?.[0] ?? "\n\n";
    transform.push(`${[...kept, `data: ${JSON.stringify(replacement)}`].join("\n")}${terminator}`);
  }

  return new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      const run = async () => {
        for (;;) {
          // The separators are ASCII, so a chunk split inside a multi-byte character is never at
          // an event boundary.
          const end = eventEnd();
          if (end < 0) break;
          const event = pending.subarray(0, end);
          pending = pending.subarray(end);
          await processEvent(Buffer.from(event), this);
        }
        if (pending.length > MAX_EVENT_BYTES) {
          throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "upstream event too large", {
            detail: "sse-event-too-large",
          });
        }
      };
      run().then(() => callback(), callback);
    },
    flush(callback: TransformCallback) {
      if (pending.length === 0) return callback();
      // A final event without its blank line: inspected like any other.
      const last = pending;
      pending = Buffer.alloc(0);
      processEvent(last, this).then(() => callback(), callback);
    },
  });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
