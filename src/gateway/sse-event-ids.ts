import { createHmac, timingSafeEqual } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import { GateError, invalidArgument } from "../errors.ts";

export interface EventIdCodec {
  /** The id the client sees for the upstream's event id `upstreamId` (non-empty, at most 512 UTF-8 bytes). */
  wrap(upstreamId: string): string;
  /** The upstream's event id behind a client's `Last-Event-ID`, or null when it is not this session's. */
  unwrap(gatewayId: string): string | null;
}

/** Smallest key accepted: a 256-bit purpose key from the keyring. */
export const MIN_EVENT_ID_KEY_BYTES = 32;
/** Longest upstream event id wrapped; its wrapped form (about 706 chars) stays under the unwrap cap. */
export const MAX_UPSTREAM_EVENT_ID_BYTES = 512;
/** Longest `Last-Event-ID` value unwrap reads; anything longer is not one of ours. */
export const MAX_GATEWAY_EVENT_ID_LENGTH = 1024;
/** Longest line the stream rewriter holds in memory while deciding or rewriting it. */
export const MAX_HELD_LINE_BYTES = 1024 * 1024;

const TAG_BYTES = 16;
const TAG_CHARS = 22; // base64url of 16 bytes, unpadded
const GATEWAY_ID = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{22})$/;
const UTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Event ids bound to one session (THREATS S12): a client presenting another session's event id in
 * `Last-Event-ID` gets `null` here, the same as for garbage, and the caller forwards no
 * `Last-Event-ID` at all, so nothing of the other session's stream is replayed.
 *
 * The wrapped id is `base64url(upstreamId) "." base64url(tag)`, the tag being the first 16 bytes of
 * HMAC-SHA256(key, len(sessionDigest) sessionDigest len(upstreamId) upstreamId) with 4-byte
 * big-endian lengths (so no two (session, id) pairs share an input). The upstream id travels in
 * clear, not sealed: the client already holds the stream whose position it names, and a stateless
 * codec needs no store round trip per event. `key` should be a purpose key used for nothing else;
 * it is copied, so a caller zeroing its buffer later changes nothing. `sessionDigest` is the
 * session's stored digest, never the raw id (that would put the session id into every MAC input the
 * caller might log).
 *
 * Output is visible ASCII only (base64url and a dot), safe in a header and an SSE line.
 */
export function createEventIdCodec(key: Uint8Array, sessionDigest: string): EventIdCodec {
  if (!(key instanceof Uint8Array) || key.length < MIN_EVENT_ID_KEY_BYTES) {
    throw invalidArgument("key", `must be at least ${MIN_EVENT_ID_KEY_BYTES} bytes`);
  }
  if (typeof sessionDigest !== "string" || sessionDigest.length === 0) {
    throw invalidArgument("sessionDigest", "must be a non-empty string");
  }
  const ownKey = Buffer.from(key);
  const session = Buffer.from(sessionDigest, "utf8");

  const tag = (upstream: Buffer): Buffer =>
    createHmac("sha256", ownKey)
      .update(lengthPrefix(session.length))
      .update(session)
      .update(lengthPrefix(upstream.length))
      .update(upstream)
      .digest()
      .subarray(0, TAG_BYTES);

  return {
    wrap(upstreamId: string): string {
      if (typeof upstreamId !== "string" || upstreamId.length === 0) {
        throw invalidArgument("upstreamId", "must be a non-empty string");
      }
      const upstream = Buffer.from(upstreamId, "utf8");
      // Refused rather than passed through or truncated: a raw upstream id would reach the client,
      // and a truncated one would resume somewhere else.
      if (upstream.length > MAX_UPSTREAM_EVENT_ID_BYTES) {
        throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "upstream unavailable", {
          detail: "upstream event id too long",
        });
      }
      return `${upstream.toString("base64url")}.${tag(upstream).toString("base64url")}`;
    },

    unwrap(gatewayId: string): string | null {
      if (typeof gatewayId !== "string" || gatewayId.length > MAX_GATEWAY_EVENT_ID_LENGTH) return null;
      const match = GATEWAY_ID.exec(gatewayId);
      if (match === null) return null;
      const [, encodedId, encodedTag] = match as unknown as [string, string, string];
      const upstream = Buffer.from(encodedId, "base64url");
      const presented = Buffer.from(encodedTag, "base64url");
      // Only the canonical encoding is accepted, so each upstream id has exactly one wrapped form
      // (Node's decoder ignores stray trailing bits and accepts impossible lengths).
      if (upstream.toString("base64url") !== encodedId || presented.length !== TAG_BYTES) return null;
      if (encodedTag.length !== TAG_CHARS || presented.toString("base64url") !== encodedTag) return null;
      if (upstream.length > MAX_UPSTREAM_EVENT_ID_BYTES) return null;
      if (!timingSafeEqual(tag(upstream), presented)) return null;
      try {
        return UTF8.decode(upstream);
      } catch {
        return null; // unreachable for ids this codec wrapped: wrap encodes a JS string as UTF-8
      }
    },
  };
}

function lengthPrefix(length: number): Buffer {
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(length);
  return prefix;
}

const CR = 0x0d;
const LF = 0x0a;
const SPACE = 0x20;
const BOM = Buffer.from([0xef, 0xbb, 0xbf]);
const ID_FIELD = Buffer.from("id:");
// Replacement, not refusal, for invalid UTF-8 in an id: the SSE spec decodes the stream that way
// (HTML, "server-sent events", parsing), so this is the id a browser client would see as well.
const LENIENT_UTF8 = new TextDecoder("utf-8");

// Where the rewriter is within the current line.
const LINE_START = 0; // nothing of the line seen, or too little to know whether it is an `id` field
const ID_LINE = 1; // an `id:` field: held until its line ends, then rewritten
const PASS = 2; // any other line: streamed through byte for byte until its line ends

type LineMode = typeof LINE_START | typeof ID_LINE | typeof PASS;

/**
 * A Transform over a `text/event-stream` body that replaces the value of every `id` field with
 * `codec.wrap(value)` and passes every other byte through unchanged, so the client only ever sees
 * session-bound ids (THREATS S12).
 *
 * Line ends are CRLF, LF or CR (HTML, "server-sent events", parsing), each kept as it came; a CRLF
 * split across chunks stays one line end. Work is on bytes, so a UTF-8 sequence split across chunks
 * is never decoded half. Only a line that is, or may still become, an `id` field is held back (at
 * most `BOM "id"` before that is known); every other line streams through as its bytes arrive, so
 * long `data:` lines cost no memory and events are never delayed. A held line longer than
 * MAX_HELD_LINE_BYTES errors the stream with ERR_UPSTREAM_UNAVAILABLE.
 *
 * Per the spec's field rules: `id` with an empty value (`id`, `id:`, `id: `) resets the client's last
 * event id and passes unchanged; an `id` whose value contains NUL is ignored by clients, so the line
 * (and its line end) is dropped here rather than wrapped. A field named `id` only matches exactly
 * (`ID:` and ` id:` are other fields and pass). A leading BOM, which clients strip, is looked past on
 * the first line so `BOM id: x` is rewritten too. An unterminated line at the end of the stream is
 * one clients discard; if it could be an `id` field it is dropped, so no raw upstream id escapes.
 */
export function rewriteSseEventIds(codec: EventIdCodec): Transform {
  if (typeof codec?.wrap !== "function") throw invalidArgument("codec", "must be an event id codec");

  let mode: LineMode = LINE_START;
  let held: Buffer[] = [];
  let heldBytes = 0;
  let firstLine = true;
  // The previous chunk ended with CR: an LF starting the next chunk belongs to that line end.
  let afterCR = false;
  // Whether that LF is written: not when the line it ends was dropped.
  let writeLFAfterCR = true;

  const hold = (bytes: Buffer): void => {
    if (bytes.length === 0) return;
    held.push(bytes);
    heldBytes += bytes.length;
  };
  const takeHeld = (): Buffer => {
    const line = held.length === 1 ? held[0]! : Buffer.concat(held, heldBytes);
    held = [];
    heldBytes = 0;
    return line;
  };

  return new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
      const out: Buffer[] = [];
      const lineEnds = new LineEnds(chunk);
      let index = 0;
      // Bytes from `runStart` to the current position are written unchanged: one slice per run of
      // untouched lines, not one per line.
      let runStart = 0;
      const endRun = (at: number): void => {
        if (at > runStart) out.push(chunk.subarray(runStart, at));
        runStart = at;
      };

      if (afterCR && chunk.length > 0) {
        afterCR = false;
        if (chunk[0] === LF) {
          index = 1;
          if (!writeLFAfterCR) runStart = 1;
        }
      }

      try {
        while (index < chunk.length) {
          const end = lineEnds.next(index);
          const stop = end === -1 ? chunk.length : end;

          if (mode === PASS) {
            index = stop;
          } else if (mode === ID_LINE) {
            endRun(index);
            hold(chunk.subarray(index, stop));
            index = runStart = stop;
          } else if (heldBytes === 0 && !firstLine && (stop === index || chunk[index] !== 0x69) /* i */) {
            // The common case, decided without a probe: a blank line or one that cannot start `id:`.
            mode = PASS;
            continue;
          } else {
            // Decide with at most BOM + "id:" bytes: the held start of the line plus a few more.
            const next = chunk.subarray(index, Math.min(stop, index + 6));
            const kind = classify(heldBytes === 0 ? next : Buffer.concat([...held, next]), firstLine);
            if (kind === "other") {
              if (heldBytes > 0) {
                endRun(index);
                out.push(takeHeld());
              }
              mode = PASS;
              continue;
            }
            endRun(index);
            hold(chunk.subarray(index, stop));
            index = runStart = stop;
            if (kind === "id") {
              mode = ID_LINE;
            } else if (end !== -1) {
              // "undecided" means the probe held the whole rest of the line, so this line never became
              // more than `BOM? i? d?`: an empty-valued `id` field, a field `i`, or a blank line. All
              // pass unchanged.
              if (heldBytes > 0) out.push(takeHeld());
              mode = PASS;
            }
          }

          if (heldBytes > MAX_HELD_LINE_BYTES) {
            throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "upstream unavailable", {
              detail: "event stream line too long",
            });
          }
          if (end === -1) break;

          // The line ends at `end`: CRLF, LF, or CR (perhaps the first half of a split CRLF).
          let terminatorLength = 1;
          let pendingCR = false;
          if (chunk[end] === CR) {
            if (end + 1 < chunk.length) {
              if (chunk[end + 1] === LF) terminatorLength = 2;
            } else {
              pendingCR = true;
            }
          }
          index = end + terminatorLength;
          let keep = true;
          if (mode === ID_LINE) {
            // The run restarts at `end`, so the line end follows the rewritten line unchanged.
            const rewritten = rewriteIdLine(takeHeld(), firstLine, codec);
            if (rewritten === null) {
              keep = false;
              runStart = index;
            } else {
              out.push(rewritten);
            }
          }
          if (pendingCR) {
            afterCR = true;
            writeLFAfterCR = keep;
          }
          mode = LINE_START;
          firstLine = false;
        }
        endRun(index);
      } catch (error) {
        callback(error as Error);
        return;
      }
      const output = out.length === 1 ? out[0]! : Buffer.concat(out);
      callback(null, output.length > 0 ? output : undefined);
    },

    flush(callback: TransformCallback): void {
      // An unterminated last line: clients discard it (the spec processes only complete lines), and
      // one still held may be an `id` field with a raw upstream id in it. Dropped.
      held = [];
      heldBytes = 0;
      callback();
    },
  });
}

/**
 * The next CR or LF in a chunk. Each kind's position is remembered until passed, so a chunk of many
 * LF-ended lines and no CR is scanned once, not once per line.
 */
class LineEnds {
  private readonly chunk: Buffer;
  // -2: not searched yet; -1: none left in the chunk.
  private nextCR = -2;
  private nextLF = -2;

  constructor(chunk: Buffer) {
    this.chunk = chunk;
  }

  /** Index of the first CR or LF at or after `from`, or -1. */
  next(from: number): number {
    if (this.nextCR !== -1 && this.nextCR < from) this.nextCR = this.chunk.indexOf(CR, from);
    if (this.nextLF !== -1 && this.nextLF < from) this.nextLF = this.chunk.indexOf(LF, from);
    if (this.nextCR === -1) return this.nextLF;
    if (this.nextLF === -1) return this.nextCR;
    return Math.min(this.nextCR, this.nextLF);
  }
}

/** Whether a line starting with `start` is an `id` field with a value, is not one, or may still be. */
function classify(start: Buffer, firstLine: boolean): "id" | "other" | "undecided" {
  let rest = start;
  if (firstLine) {
    const bomPart = Math.min(rest.length, BOM.length);
    if (rest.subarray(0, bomPart).equals(BOM.subarray(0, bomPart))) {
      if (bomPart < BOM.length) return "undecided";
      rest = rest.subarray(BOM.length);
    }
  }
  const idPart = Math.min(rest.length, ID_FIELD.length);
  if (!rest.subarray(0, idPart).equals(ID_FIELD.subarray(0, idPart))) return "other";
  return idPart === ID_FIELD.length ? "id" : "undecided";
}

/** The `id:` line with its value wrapped, the line unchanged when the value is empty, or null to drop it. */
function rewriteIdLine(line: Buffer, firstLine: boolean, codec: EventIdCodec): Buffer | null {
  let valueStart = ID_FIELD.length;
  if (firstLine && line.subarray(0, BOM.length).equals(BOM)) valueStart += BOM.length;
  if (line[valueStart] === SPACE) valueStart++;
  const value = line.subarray(valueStart);
  if (value.length === 0) return line;
  if (value.includes(0)) return null;
  const wrapped = codec.wrap(LENIENT_UTF8.decode(value));
  return Buffer.concat([line.subarray(0, valueStart), Buffer.from(wrapped, "latin1")]);
}
