import {
  createHash,
  createHmac,
  createSecretKey,
  type KeyObject,
  randomBytes,
  timingSafeEqual,
} from "node:crypto";
import { createReadStream } from "node:fs";
import { constants, type FileHandle, lstat, open, readdir, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { Keyring } from "../crypto/keyring.ts";
import { GateError, invalidArgument, isGateError } from "../errors.ts";
import type { SecurityEventRecord, SecurityEventSink } from "./security-events.ts";
import { acquireWriterLock, readSmallFile } from "./writer-lock.ts";

/**
 * The tamper-evident audit trail (DESIGN invariant 9, THREATS E2): a JSON-lines file in which every
 * line is chained to the one before it by a keyed MAC, with the head checkpointed beside it.
 *
 * Format (version 1), one JSON object per line, keys in exactly this order, nothing else:
 *
 *   {"seq":N,"prev":"<mac of line N-1>","record":{...},"mac":"<mac of this line>"}
 *
 * - `seq` counts lines from 0, across restarts and across rotated files (one chain per trail).
 * - `mac` = base64url HMAC-SHA256 under `keyring.purposeKey("audit-chain", keyId)` of
 *   `"tenantgate/audit-chain/v1\n" + seq + "\n" + prev + "\n" + <record JSON, byte for byte as
 *   written>`. seq is digits and prev is base64url, so the encoding is unambiguous; the record is
 *   MACed as the exact text in the line (cut out between the fixed prefix and the fixed-length
 *   suffix), never re-serialised, so no canonical JSON is needed.
 * - `prev` of a file's line 0 is the genesis value SHA-256("tenantgate/audit-chain/v1/genesis\n" +
 *   fileId), base64url, from line 0's own header; every other line's is the previous line's mac.
 * - Line 0 is a header record `{"type":"audit.start","time","version":1,"fileId","keyId"}`. Every
 *   start of the sink on an existing file appends another header (a new segment: fresh `fileId`, the
 *   active `keyId`, `resumed: "clean" | "unclean"` after an `audit.stop` or not) chained to the old
 *   last line. A header's `keyId` names the master key that MACs it and every line up to the next
 *   header, so key rotation needs no re-keying and a verifier needs every key the file names. Key ids
 *   never return to one the chain has left (the verifier refuses it: decision 86).
 * - File rotation (`maxFileBytes`): the full file's last line is `{"type":"audit.end","reason":
 *   "rotated","next":{"file":<the configured name>,"fileId":<the successor's>}}`, MACed like every
 *   line, so the file is sealed; it is then moved to `<name>.<YYYYMMDDTHHMMSS.mmmZ>-<end seq>` and a
 *   fresh file at the configured name starts with a header whose `seq` and `prev` carry the chain on
 *   (end seq + 1, the end line's mac) and which names it: `"continues":{"file","seq","mac"}`, with
 *   the `fileId` the end record announced. Nothing may follow an end record in its file.
 * - Other records are `SecurityEventRecord`s, `audit.dropped` ({count}: events refused while the
 *   queue was full) and `audit.stop` ({dropped}: the segment's total) written by `close()`. Headers
 *   may also carry `tornBytes` (a torn last line cut at start) and `modeTightened` (the mode an
 *   existing file had before the sink restricted it to 0600).
 *
 * The checkpoint `<path>.head` holds `{"seq":N,"mac":"..."}` of the last line known on disk,
 * replaced atomically after every flush; mid-rotation it is the end line's, plus `"archive"`: the
 * name the sealed file is being moved to, so a crash after the move still finds it. A head string
 * (`N:mac`, what `tenantgate audit verify` prints) kept elsewhere is the stronger anchor: whoever can
 * rewrite the file can rewrite the checkpoint beside it to an older head, though never forge a line.
 * `<path>.lock` (pid, host, random token) keeps a second writer off the file.
 */

export const AUDIT_CHAIN_VERSION = 1;
/** The keyring purpose the chain's MAC keys derive from. */
export const AUDIT_CHAIN_PURPOSE = "audit-chain";
export const CHECKPOINT_SUFFIX = ".head";
/** `maxFileBytes` when none is given: 128 MiB. */
export const DEFAULT_MAX_FILE_BYTES = 128 * 1024 * 1024;
/** The smallest `maxFileBytes` the library takes (the gateway's config asks for at least 1 MiB). */
export const MIN_MAX_FILE_BYTES = 1024;

const MAC_DOMAIN = "tenantgate/audit-chain/v1\n";
const GENESIS_DOMAIN = "tenantgate/audit-chain/v1/genesis\n";
/** No line the sink writes comes near this; anything longer is not one of ours. */
const MAX_LINE_BYTES = 64 * 1024;
const READ_CHUNK_BYTES = 64 * 1024;
const DEFAULT_MAX_QUEUE = 10_000;
const DEFAULT_RETRY_MS = 1_000;
const MAC_TEXT = "[A-Za-z0-9_-]{43}";
const LINE = new RegExp(
  `^\\{"seq":(0|[1-9][0-9]{0,15}),"prev":"(${MAC_TEXT})","record":(.*),"mac":"(${MAC_TEXT})"\\}$`,
  "s",
);
const HEAD = new RegExp(`^(0|[1-9][0-9]{0,15}):(${MAC_TEXT})$`);
const MAC_ONLY = new RegExp(`^${MAC_TEXT}$`);
const FILE_ID = /^[A-Za-z0-9_-]{22}$/;
const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/;

/** The last line of a chain: its sequence number and mac. */
export interface ChainHead {
  readonly seq: number;
  readonly mac: string;
}

/** `N:mac`, the form printed by `tenantgate audit verify` and taken by `--expect-head`. */
export function formatHead(head: ChainHead): string {
  return `${head.seq}:${head.mac}`;
}

export function parseHead(text: string): ChainHead {
  const match = HEAD.exec(typeof text === "string" ? text.trim() : "");
  const seq = Number(match?.[1]);
  if (!match || !Number.isSafeInteger(seq))
    throw invalidArgument("head", "must be SEQ:MAC as printed by audit verify");
  return { seq, mac: match[2] as string };
}

function genesis(fileId: string): string {
  return createHash("sha256").update(GENESIS_DOMAIN).update(fileId).digest("base64url");
}

/** The chain key for `keyId`, as a KeyObject: HMAC with one is several times faster than with bytes. */
function chainKey(keyring: Keyring, keyId: string): KeyObject {
  return createSecretKey(keyring.purposeKey(AUDIT_CHAIN_PURPOSE, keyId));
}

function lineMac(key: KeyObject, seq: number, prev: string, recordJson: string): string {
  return createHmac("sha256", key)
    .update(`${MAC_DOMAIN}${seq}\n${prev}\n`)
    .update(recordJson)
    .digest("base64url");
}

/**
 * Compares the mac text, not its decoded bytes: 43 base64url characters have two spare bits, so
 * four spellings decode alike, and accepting another spelling would let a line's bytes change.
 */
function sameMac(a: string, b: string): boolean {
  const left = Buffer.from(a, "utf8");
  const right = Buffer.from(b, "utf8");
  return left.byteLength === right.byteLength && timingSafeEqual(left, right);
}

interface ParsedLine {
  readonly seq: number;
  readonly prev: string;
  readonly recordJson: string;
  readonly record: Readonly<Record<string, unknown>>;
  readonly mac: string;
}

/** A line in the exact v1 layout, or the reason it is not one. */
function parseLine(text: string): ParsedLine | string {
  const match = LINE.exec(text);
  if (!match) return "not an audit chain line";
  const seq = Number(match[1]);
  if (!Number.isSafeInteger(seq)) return "not an audit chain line";
  const recordJson = match[3] as string;
  let record: unknown;
  try {
    record = JSON.parse(recordJson);
  } catch {
    return "not an audit chain line";
  }
  if (typeof record !== "object" || record === null || Array.isArray(record)) {
    return "not an audit chain line";
  }
  return {
    seq,
    prev: match[2] as string,
    recordJson,
    record: record as Record<string, unknown>,
    mac: match[4] as string,
  };
}

/** A plain file name (no directory part): what headers, end records and checkpoints name. */
function isFileName(value: unknown): value is string {
  return (
    typeof value === "string" &&
    value.length > 0 &&
    Buffer.byteLength(value) <= 255 &&
    value !== "." &&
    value !== ".." &&
    !/[/\\\0]/.test(value)
  );
}

interface Header {
  readonly keyId: string;
  readonly fileId: string;
  /** A rotated file's successor: the archived predecessor and its sealing end line. */
  readonly continues?: { readonly file: string; readonly seq: number; readonly mac: string };
}

/** The key id, file id and continuation of a header record, or the reason it is not a valid header. */
function headerOf(record: Readonly<Record<string, unknown>>): Header | string {
  const { version, keyId, fileId, continues } = record;
  if (version !== AUDIT_CHAIN_VERSION) return "audit.start header of an unknown version";
  if (
    typeof keyId !== "string" ||
    !KEY_ID.test(keyId) ||
    typeof fileId !== "string" ||
    !FILE_ID.test(fileId)
  ) {
    return "malformed audit.start header";
  }
  if (continues === undefined) return { keyId, fileId };
  if (typeof continues !== "object" || continues === null || Array.isArray(continues)) {
    return "malformed continuation in audit.start header";
  }
  const { file, seq, mac } = continues as Record<string, unknown>;
  if (
    !isFileName(file) ||
    typeof seq !== "number" ||
    !Number.isSafeInteger(seq) ||
    seq < 0 ||
    typeof mac !== "string" ||
    !MAC_ONLY.test(mac)
  ) {
    return "malformed continuation in audit.start header";
  }
  return { keyId, fileId, continues: { file, seq, mac } };
}

/** The successor's file id an `audit.end` record names, or the reason it is not a valid one. */
function endOf(record: Readonly<Record<string, unknown>>): { nextFileId: string } | string {
  const { reason, next } = record;
  if (reason !== "rotated" || typeof next !== "object" || next === null || Array.isArray(next)) {
    return "malformed audit.end record";
  }
  const { file, fileId } = next as Record<string, unknown>;
  if (!isFileName(file) || typeof fileId !== "string" || !FILE_ID.test(fileId)) {
    return "malformed audit.end record";
  }
  return { nextFileId: fileId };
}

// --- reading -------------------------------------------------------------------------------------

const utf8 = new TextDecoder("utf-8", { fatal: true });

type ReadLine = { readonly text: string } | { readonly problem: string };

/**
 * The file's lines, split on "\n" only (a "\r" is part of a line, so it fails the layout), each
 * decoded as strict UTF-8. A last line without its "\n" and an overlong line are problems, not lines.
 */
async function* readLines(path: string): AsyncGenerator<ReadLine> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const decode = (bytes: Buffer): ReadLine => {
    try {
      return { text: utf8.decode(bytes) };
    } catch {
      return { problem: "not valid UTF-8" };
    }
  };
  for await (const chunk of createReadStream(path, {
    highWaterMark: READ_CHUNK_BYTES,
  }) as AsyncIterable<Buffer>) {
    let start = 0;
    for (let end = chunk.indexOf(10, start); end !== -1; end = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, end);
      const line = pendingBytes === 0 ? piece : Buffer.concat([...pending, piece]);
      pending = [];
      pendingBytes = 0;
      yield line.byteLength > MAX_LINE_BYTES ? { problem: "line too long" } : decode(line);
      start = end + 1;
    }
    if (start < chunk.byteLength) {
      pending.push(chunk.subarray(start));
      pendingBytes += chunk.byteLength - start;
      if (pendingBytes > MAX_LINE_BYTES) {
        yield { problem: "line too long" };
        return;
      }
    }
  }
  if (pendingBytes > 0) yield { problem: "incomplete last line (no newline)" };
}

/**
 * Lines of `handle` before byte `end`, last first (`end` is just past a line's text, before its
 * "\n"). Yields the first line of the file last, even when it is empty.
 */
async function* linesBackward(handle: FileHandle, end: number): AsyncGenerator<string> {
  let position = end;
  let rest = Buffer.alloc(0);
  while (position > 0) {
    const size = Math.min(READ_CHUNK_BYTES, position);
    position -= size;
    const chunk = Buffer.alloc(size);
    await readExactly(handle, chunk, position);
    const buffer = Buffer.concat([chunk, rest]);
    let lineEnd = buffer.byteLength;
    for (let at = buffer.lastIndexOf(10, lineEnd - 1); lineEnd > 0 && at !== -1; ) {
      yield utf8.decode(buffer.subarray(at + 1, lineEnd));
      lineEnd = at;
      at = lineEnd > 0 ? buffer.lastIndexOf(10, lineEnd - 1) : -1;
    }
    rest = buffer.subarray(0, lineEnd);
    if (rest.byteLength > MAX_LINE_BYTES) throw new GateError("ERR_CONFIG_INVALID", "line too long");
  }
  yield utf8.decode(rest);
}

async function readExactly(handle: FileHandle, into: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < into.byteLength) {
    const { bytesRead } = await handle.read(into, done, into.byteLength - done, position + done);
    if (bytesRead === 0) throw new GateError("ERR_CONFIG_INVALID", "file shrank while being read");
    done += bytesRead;
  }
}

/** A checkpoint: the head of the last line known on disk and, mid-rotation, the archive it ends. */
interface Checkpoint {
  readonly head: ChainHead;
  /** Set while a rotation is under way: the name (beside the file) the full file is moved to. */
  readonly archive?: string;
}

/** Opens a file the sink only reads: never through a symlink, never blocking on a FIFO. */
async function openForReading(path: string): Promise<FileHandle> {
  return open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
}

/** The checkpoint beside `path`: its head, null when there is none, or a problem. */
async function readCheckpoint(path: string): Promise<Checkpoint | null | { problem: string }> {
  const checkpointPath = `${path}${CHECKPOINT_SUFFIX}`;
  let text: string | null;
  try {
    text = await readSmallFile(checkpointPath, 4096);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return null;
    if (code === "ELOOP") return { problem: `checkpoint ${checkpointPath} is a symbolic link: refused` };
    return { problem: `checkpoint ${checkpointPath} cannot be read` };
  }
  try {
    if (text === null) throw invalidArgument("checkpoint", "must be a small regular file");
    const { seq, mac, archive } = JSON.parse(text) as { seq?: unknown; mac?: unknown; archive?: unknown };
    const head = parseHead(`${seq}:${mac}`);
    if (archive === undefined) return { head };
    if (!isFileName(archive)) throw invalidArgument("archive", "must be a file name");
    return { head, archive };
  } catch {
    return { problem: `checkpoint ${checkpointPath} is malformed` };
  }
}

// --- verification --------------------------------------------------------------------------------

export interface VerifyAuditFileOptions {
  /** Every master key the files' headers name (rotation: old and new). */
  readonly keyring: Keyring;
  /**
   * The head the (last) file must reach (`N:mac`, from a previous verify or an external record).
   * Default: the checkpoint `<path>.head` beside the last file when present; without either,
   * truncation cannot be detected (unless the last file ends with its sealed `audit.end`).
   */
  readonly expectHead?: string | ChainHead;
}

export type AuditVerification =
  | {
      readonly ok: true;
      /** Files verified (one for `verifyAuditFile`). */
      readonly files: number;
      /** Lines in all of them. */
      readonly lines: number;
      /** The last line's head (`N:mac`). */
      readonly head: string;
      /**
       * What truncation of the last file was checked against: an expected head, the checkpoint, the
       * file's own `audit.end` record (a rotated-out file is sealed), or nothing at all.
       */
      readonly checkedAgainst: "expect-head" | "checkpoint" | "end-record" | "nothing";
      /** The key id of the last segment: one that is not the active key deserves a look. */
      readonly lastKeyId: string;
      /**
       * The last file ends with its `audit.end` record: it was rotated out, so a file continued it
       * and that file was not given. Never the state of a current file after a clean run; the newest
       * archive renamed back over a deleted current file looks exactly like this.
       */
      readonly sealed: boolean;
    }
  | {
      readonly ok: false;
      /** The file at fault, as given. */
      readonly file: string;
      /**
       * The first bad line, 1-based. For a truncated file, the first missing line (one past the end);
       * 0 when the problem is the checkpoint file itself.
       */
      readonly line: number;
      readonly reason: string;
    };

interface EndOfFile {
  readonly seq: number;
  readonly mac: string;
  /** The `fileId` the successor's header must carry. */
  readonly nextFileId: string;
}

/**
 * Verifies a whole audit file: every line's layout and mac under the key its segment's header
 * names, the sequence (a deleted, inserted or moved line breaks it), the chain of `prev` values, and
 * that the file still reaches the expected head (truncation). Names the first bad line. Reads the
 * file as a stream; memory does not grow with its size.
 */
export async function verifyAuditFile(
  path: string,
  options: VerifyAuditFileOptions,
): Promise<AuditVerification> {
  return verifyAuditSeries([path], options);
}

/**
 * Verifies files written one after the other by rotation, oldest first: each alone (as
 * `verifyAuditFile`), and that every file but the last ends with its `audit.end` record and is
 * exactly the file the next one's header continues (sequence, mac and the successor's `fileId`), so
 * a missing, extra, reordered or cut file is named at its first line that cannot be right. The first
 * file may itself continue an older one that is not given (archives past retention).
 */
export async function verifyAuditSeries(
  paths: readonly string[],
  options: VerifyAuditFileOptions,
): Promise<AuditVerification> {
  if (
    !Array.isArray(paths) ||
    paths.length === 0 ||
    !paths.every((path) => typeof path === "string" && path.length > 0)
  ) {
    throw invalidArgument("paths", "must be one or more file paths");
  }
  const keyring = options?.keyring;
  if (typeof keyring?.purposeKey !== "function") throw invalidArgument("keyring", "must be a Keyring");
  const lastPath = paths.at(-1) as string;
  let expected: ChainHead | null;
  let checkedAgainst: "expect-head" | "checkpoint" | "nothing";
  if (options.expectHead !== undefined) {
    expected =
      typeof options.expectHead === "string"
        ? parseHead(options.expectHead)
        : parseHead(formatHead(options.expectHead));
    checkedAgainst = "expect-head";
  } else {
    const checkpoint = await readCheckpoint(lastPath);
    if (checkpoint !== null && "problem" in checkpoint)
      return { ok: false, file: lastPath, line: 0, reason: checkpoint.problem };
    expected = checkpoint?.head ?? null;
    checkedAgainst = checkpoint === null ? "nothing" : "checkpoint";
  }

  const keys = new Map<string, KeyObject>();
  let key: KeyObject | undefined;
  let previous: ChainHead | undefined;
  let totalLines = 0;
  // Key ids in the order the segments used them: a later segment may not go back to one the chain
  // has left (decision 86), or a holder of a retired key could append a segment of its own.
  let currentKeyId: string | undefined;
  const leftKeyIds = new Set<string>();
  let predecessor: { readonly file: string; readonly end: EndOfFile } | undefined;
  let lastEnd: EndOfFile | undefined;
  let lastLineNumber = 0;
  let lastFirstSeq = 0;
  let macAtExpected: string | undefined;

  for (const [index, path] of paths.entries()) {
    const isLast = index === paths.length - 1;
    const fail = (line: number, reason: string): AuditVerification => ({
      ok: false,
      file: path,
      line,
      reason,
    });
    let lineNumber = 0;
    let end: EndOfFile | undefined;
    try {
      for await (const read of readLines(path)) {
        lineNumber += 1;
        if ("problem" in read) return fail(lineNumber, read.problem);
        if (end !== undefined) {
          return fail(
            lineNumber,
            "follows the file's audit.end record (an end record is its file's last line)",
          );
        }
        const line = parseLine(read.text);
        if (typeof line === "string") return fail(lineNumber, line);
        let lineKey = key;
        let header: Header | undefined;
        if (line.record["type"] === "audit.start") {
          const parsed = headerOf(line.record);
          if (typeof parsed === "string") return fail(lineNumber, parsed);
          if (!keyring.hasKey(parsed.keyId)) {
            return fail(lineNumber, `written under key id ${parsed.keyId}, which is not loaded`);
          }
          lineKey = keys.get(parsed.keyId) ?? chainKey(keyring, parsed.keyId);
          keys.set(parsed.keyId, lineKey);
          header = parsed;
        } else if (lineNumber === 1) {
          return fail(lineNumber, "does not start with an audit.start header");
        }
        // The mac first: an edited or forged line is named as such, whatever else it changed.
        if (
          lineKey === undefined ||
          !sameMac(lineMac(lineKey, line.seq, line.prev, line.recordJson), line.mac)
        ) {
          return fail(lineNumber, "mac does not verify (edited, forged, or written under another key)");
        }
        const continues = header?.continues;
        if (continues !== undefined && lineNumber !== 1) {
          return fail(lineNumber, "a header that continues another file must be its file's first line");
        }
        let expectedSeq: number;
        let expectedPrev: string;
        if (lineNumber === 1 && continues !== undefined) {
          expectedSeq = continues.seq + 1;
          expectedPrev = continues.mac;
        } else if (lineNumber === 1) {
          expectedSeq = 0;
          expectedPrev = genesis((header as Header).fileId);
        } else {
          expectedSeq = (previous as ChainHead).seq + 1;
          expectedPrev = (previous as ChainHead).mac;
        }
        if (line.seq !== expectedSeq) {
          return fail(
            lineNumber,
            `sequence ${line.seq} where ${expectedSeq} was expected (a line deleted, inserted or moved)`,
          );
        }
        if (line.prev !== expectedPrev) {
          return fail(
            lineNumber,
            continues === undefined
              ? "does not chain to the line before it"
              : "does not chain to the line its header says it continues",
          );
        }
        if (lineNumber === 1 && predecessor !== undefined) {
          if (continues === undefined) {
            return fail(lineNumber, `starts a new chain, so it does not continue ${predecessor.file}`);
          }
          if (
            (header as Header).fileId !== predecessor.end.nextFileId ||
            continues.seq !== predecessor.end.seq ||
            !sameMac(continues.mac, predecessor.end.mac)
          ) {
            return fail(
              lineNumber,
              `does not continue ${predecessor.file} (a file between them is missing, or the files are out of order)`,
            );
          }
        }
        if (header !== undefined && header.keyId !== currentKeyId) {
          if (leftKeyIds.has(header.keyId)) {
            return fail(
              lineNumber,
              `returns to key id ${header.keyId}, which an earlier segment already left (a retired key does not write again)`,
            );
          }
          if (currentKeyId !== undefined) leftKeyIds.add(currentKeyId);
          currentKeyId = header.keyId;
        }
        if (line.record["type"] === "audit.end") {
          const parsed = endOf(line.record);
          if (typeof parsed === "string") return fail(lineNumber, parsed);
          end = { seq: line.seq, mac: line.mac, nextFileId: parsed.nextFileId };
        }
        key = lineKey;
        previous = { seq: line.seq, mac: line.mac };
        if (isLast && expected !== null) {
          if (line.seq === expected.seq) macAtExpected = line.mac;
          else if (continues !== undefined && continues.seq === expected.seq) macAtExpected = continues.mac;
        }
        if (lineNumber === 1) lastFirstSeq = line.seq;
      }
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (isGateError(error)) throw error;
      throw new GateError("ERR_ARGUMENT_INVALID", `audit file ${path} cannot be read (${code ?? "error"})`, {
        cause: error,
      });
    }
    if (lineNumber === 0) return fail(1, "empty file: no audit.start header");
    totalLines += lineNumber;
    if (!isLast) {
      if (end === undefined) {
        return fail(
          lineNumber + 1,
          `ends without its audit.end record (truncated, or ${paths[index + 1]} does not follow it)`,
        );
      }
      predecessor = { file: path, end };
    } else {
      lastEnd = end;
      lastLineNumber = lineNumber;
    }
  }

  const last = previous as ChainHead;
  const fail = (line: number, reason: string): AuditVerification => ({
    ok: false,
    file: lastPath,
    line,
    reason,
  });
  if (expected !== null) {
    if (expected.seq > last.seq) {
      return fail(
        lastLineNumber + 1,
        `truncated: the file ends at sequence ${last.seq}, the expected head is ${expected.seq}`,
      );
    }
    if (macAtExpected === undefined || !sameMac(macAtExpected, expected.mac)) {
      return fail(
        Math.max(1, expected.seq - lastFirstSeq + 1),
        "does not match the expected head (the file was replaced or rewritten)",
      );
    }
  }
  return {
    ok: true,
    files: paths.length,
    lines: totalLines,
    head: formatHead(last),
    checkedAgainst: expected === null && lastEnd !== undefined ? "end-record" : checkedAgainst,
    lastKeyId: currentKeyId as string,
    sealed: lastEnd !== undefined,
  };
}

// --- the sink ------------------------------------------------------------------------------------

export interface ChainedFileSinkOptions {
  /**
   * The audit file: created with mode 0600 (an existing one is tightened to 0600), only ever appended
   * to, locked by `<path>.lock` while the sink is open. Rotated-out files are moved beside it.
   */
  readonly path: string;
  /** The active key MACs the lines this sink writes. */
  readonly keyring: Keyring;
  /** Replace `<path>.head` after every flush, and check it when continuing a file. Default: true. */
  readonly checkpoint?: boolean;
  /**
   * Lines waiting for the disk beyond which new events are refused and counted (one `audit.dropped`
   * line records them once there is room). Default 10,000.
   */
  readonly maxQueue?: number;
  /**
   * The size past which the file is rotated: sealed with `audit.end`, moved to
   * `<name>.<UTC time>-<seq>` and continued in a fresh file at `path`. A file holds at least its
   * header and one line, so a single line longer than this makes one file larger. Default 128 MiB.
   */
  readonly maxFileBytes?: number;
  /** Each failed write or checkpoint, for the operator's log; the sink retries by itself. */
  readonly onError?: (error: unknown) => void;
  /** Delay before retrying a failed write. Default 1 s. */
  readonly retryMs?: number;
  /** Clock (epoch ms), for tests. */
  readonly now?: () => number;
}

export interface ChainedFileSinkStats {
  /** Lines on disk that this sink wrote (headers and its own records included). */
  readonly written: number;
  /** Events refused because the queue was full, since the sink opened. */
  readonly dropped: number;
  /** Failed writes, syncs, checkpoints and rotation steps. */
  readonly errors: number;
  /** Files this sink rotated out (a rotation a crash interrupted, completed at start, included). */
  readonly rotations: number;
}

export interface ChainedFileSink extends SecurityEventSink {
  /**
   * Queues the record as the next chained line; returns at once. Throws (the emitter counts it as a
   * failed delivery) when the sink is closed or the queue is full; a refused event is also counted
   * into the next `audit.dropped` line.
   */
  write(record: SecurityEventRecord): void;
  /** Resolves once every line queued so far is on disk and checkpointed; rejects if writing fails. */
  flush(): Promise<void>;
  /** The head of the last line on disk. */
  head(): ChainHead;
  stats(): ChainedFileSinkStats;
  /** Refuses new events, writes `audit.stop`, flushes, checkpoints, closes the file, drops the lock. */
  close(): Promise<void>;
}

/** A rotation under way: the file is sealed by `end` and is to be moved aside and replaced. */
interface Rotation {
  readonly end: EndOfFile;
  /** The end record's time: the archived name is made from it, so a restart finds the same name. */
  readonly endTime: string;
  archive?: string;
  checkpointed: boolean;
  /** Header fields a start that completes the rotation adds (resumed, tornBytes, modeTightened). */
  readonly extra: Readonly<Record<string, unknown>>;
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
/** Rotation appends `.<time>-<seq>` to the name; this leaves room under the usual 255-byte limit. */
const MAX_BASENAME_BYTES = 200;
/** Bytes a line takes beyond its record JSON and its sequence number's digits. */
const LINE_OVERHEAD = '{"seq":,"prev":"","record":,"mac":""}\n'.length + 2 * 43;
/** Room kept for the end record: its line is about 300 bytes plus the file's name. */
const END_RECORD_RESERVE = 512;

/**
 * Reserves the archived name for a file sealed at `endTime` / `seq` by creating it empty with
 * O_EXCL: `<base>.<YYYYMMDDTHHMMSS.mmmZ>-<seq>`, then `.1`, `.2`… if taken. An existing empty file
 * is taken as is: it is the reservation of a rotation a crash interrupted (there is nothing in it to
 * lose), and reusing it keeps the name a restart derives the same as the one first chosen.
 */
async function reserveArchiveName(
  directory: string,
  base: string,
  endTime: string,
  seq: number,
  now: () => number,
): Promise<string> {
  const time = ISO_TIME.test(endTime) ? endTime : new Date(now()).toISOString();
  const stem = `${base}.${time.replace(/[-:]/g, "")}-${seq}`;
  for (let suffix = 0; suffix < 100; suffix += 1) {
    const name = suffix === 0 ? stem : `${stem}.${suffix}`;
    try {
      const file = await open(
        join(directory, name),
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
      await file.close();
      return name;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const info = await lstat(join(directory, name)).catch(() => undefined);
      if (info?.isFile() && info.size === 0) return name;
    }
  }
  throw new GateError("ERR_INTERNAL", `no free archive name beside ${join(directory, base)}`);
}

/** Makes a rename or a new file in `directory` durable; a filesystem that cannot is let be. */
async function syncDirectory(directory: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(directory, constants.O_RDONLY | constants.O_DIRECTORY);
    await handle.sync();
  } catch {
    // Some platforms and filesystems refuse fsync on a directory; the rename itself has happened.
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/** Checkpoint temporaries a crash left behind (only the lock holder writes them). */
async function removeStrayTemporaries(directory: string, base: string): Promise<void> {
  const escaped = base.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const stray = new RegExp(`^${escaped}\\.head\\.[A-Za-z0-9_-]{16}\\.tmp$`);
  const names = await readdir(directory).catch(() => [] as string[]);
  for (const name of names) {
    if (stray.test(name)) await unlink(join(directory, name)).catch(() => undefined);
  }
}

/**
 * Opens (or creates) an audit file and returns the sink that appends to it. An existing file is
 * continued: its last line must verify under a loaded key and, when the checkpoint exists, the file
 * must still reach the checkpointed head; otherwise it is refused (ERR_CONFIG_INVALID), because
 * chaining on would overwrite the checkpoint that proves the damage. A torn last line (a crash
 * mid-write: bytes after the last "\n") is cut off and its length recorded in the new header. A
 * rotation a crash interrupted is completed first (see `continuation`).
 */
export async function createChainedFileSink(options: ChainedFileSinkOptions): Promise<ChainedFileSink> {
  const path = options?.path;
  if (typeof path !== "string" || path.length === 0) throw invalidArgument("path", "must be a file path");
  const directory = dirname(path);
  const base = basename(path);
  if (!isFileName(base) || Buffer.byteLength(base) > MAX_BASENAME_BYTES) {
    throw invalidArgument("path", `must end in a file name of at most ${MAX_BASENAME_BYTES} bytes`);
  }
  const keyring = options.keyring;
  if (typeof keyring?.purposeKey !== "function") throw invalidArgument("keyring", "must be a Keyring");
  const checkpoint = options.checkpoint ?? true;
  if (typeof checkpoint !== "boolean") throw invalidArgument("checkpoint", "must be a boolean");
  const maxQueue = options.maxQueue ?? DEFAULT_MAX_QUEUE;
  if (!Number.isSafeInteger(maxQueue) || maxQueue < 1)
    throw invalidArgument("maxQueue", "must be a positive integer");
  const maxFileBytes = options.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES;
  if (!Number.isSafeInteger(maxFileBytes) || maxFileBytes < MIN_MAX_FILE_BYTES) {
    throw invalidArgument("maxFileBytes", `must be an integer of at least ${MIN_MAX_FILE_BYTES}`);
  }
  const retryMs = options.retryMs ?? DEFAULT_RETRY_MS;
  if (!Number.isSafeInteger(retryMs) || retryMs < 1)
    throw invalidArgument("retryMs", "must be a positive integer");
  const onError = options.onError ?? (() => undefined);
  if (typeof onError !== "function") throw invalidArgument("onError", "must be a function");
  const now = options.now ?? Date.now;
  if (typeof now !== "function") throw invalidArgument("now", "must be a function");
  const refuse = (problem: string, cause?: unknown): GateError =>
    new GateError(
      "ERR_CONFIG_INVALID",
      `audit file ${path} ${problem}`,
      cause === undefined ? {} : { cause },
    );

  // Before anything reads or cuts the file: a second writer would interleave two chains.
  const lock = await acquireWriterLock(path, refuse);
  let handle: FileHandle;
  let start: StartState;
  let modeTightened: string | undefined;
  try {
    try {
      // O_NOFOLLOW: a symlink planted at the path must not redirect the trail.
      handle = await open(
        path,
        constants.O_RDWR | constants.O_CREAT | constants.O_APPEND | constants.O_NOFOLLOW,
        0o600,
      );
    } catch (cause) {
      throw refuse(`cannot be opened (${(cause as NodeJS.ErrnoException).code ?? "error"})`, cause);
    }
    try {
      start = await continuation(handle, path, keyring, checkpoint, refuse);
      // Tightened on the handle (no race with a rename of the path), and only once the start is
      // accepted: a refused start leaves the file as it found it. Decision 85.
      const mode = (await handle.stat()).mode & 0o777;
      if ((mode & 0o077) !== 0) {
        try {
          await handle.chmod(0o600);
        } catch (cause) {
          throw refuse("is open to group or others and cannot be restricted to mode 0600", cause);
        }
        modeTightened = mode.toString(8).padStart(4, "0");
      }
      await removeStrayTemporaries(directory, base);
    } catch (error) {
      await handle.close().catch(() => undefined);
      throw error;
    }
  } catch (error) {
    await lock.release().catch(() => undefined);
    throw error;
  }

  const keyId = keyring.activeKeyId;
  const key = chainKey(keyring, keyId);
  const checkpointPath = `${path}${CHECKPOINT_SUFFIX}`;
  const time = () => new Date(now()).toISOString();
  const endReserve = END_RECORD_RESERVE + Buffer.byteLength(base);

  /** The head of the last line chained (the chain runs ahead of the disk). */
  let seq: number;
  let prev: string;
  /** Record JSON waiting to be chained, in emission order; the writer chains them batch by batch. */
  let queue: string[] = [];
  let rotation: Rotation | null = null;
  /** The current file's size and line count, as written or being written. */
  let fileBytes = start.kind === "chain" ? start.size : 0;
  let fileLines = fileBytes > 0 ? 1 : 0;
  let droppedPending = 0;
  let droppedTotal = 0;
  let written = 0;
  let errors = 0;
  let rotations = 0;
  /** A batch taken from the queue and not yet wholly on disk, with its head, lines and size. */
  let carry: { bytes: Buffer; head: ChainHead; lines: number; size: number } | null = null;
  let running: Promise<void> | null = null;
  let retryTimer: NodeJS.Timeout | null = null;
  let lastError: unknown;
  let closed = false;
  let closing: Promise<void> | undefined;

  const startFields: Record<string, unknown> = {};
  if (start.resumed !== undefined) startFields["resumed"] = start.resumed;
  if (start.tornBytes !== undefined) startFields["tornBytes"] = start.tornBytes;
  if (modeTightened !== undefined) startFields["modeTightened"] = modeTightened;
  const header = (fileId: string, extra: Readonly<Record<string, unknown>>): string =>
    JSON.stringify({
      time: time(),
      type: "audit.start",
      version: AUDIT_CHAIN_VERSION,
      fileId,
      keyId,
      ...extra,
    });

  if (start.kind === "chain") {
    const fileId = randomBytes(16).toString("base64url");
    seq = start.seq - 1;
    prev = start.seq === 0 ? genesis(fileId) : start.prev;
    queue.push(header(fileId, startFields));
  } else {
    seq = start.end.seq;
    prev = start.end.mac;
    if (start.kind === "rotate") {
      rotation = { end: start.end, endTime: start.endTime, checkpointed: false, extra: startFields };
    } else {
      // The file was moved aside before the crash: the empty file at the path is its successor.
      queue.push(
        header(start.end.nextFileId, { continues: continuesOf(start.archive, start.end), ...startFields }),
      );
    }
  }
  let durable: ChainHead = { seq, mac: prev };

  const chain = (recordJson: string): string => {
    seq += 1;
    const mac = lineMac(key, seq, prev, recordJson);
    const line = `{"seq":${seq},"prev":"${prev}","record":${recordJson},"mac":"${mac}"}\n`;
    prev = mac;
    return line;
  };
  const droppedRecord = (): string => {
    const json = JSON.stringify({ time: time(), type: "audit.dropped", count: droppedPending });
    droppedPending = 0;
    return json;
  };

  const failed = (error: unknown): void => {
    errors += 1;
    lastError = error;
    try {
      onError(error);
    } catch {
      // The operator's hook must not stop the writer.
    }
  };

  async function writeCheckpoint(head: ChainHead, archive?: string): Promise<void> {
    // A unique name created with O_EXCL: a file or symlink planted under a predictable name is
    // never written through.
    const temporary = `${checkpointPath}.${randomBytes(12).toString("base64url")}.tmp`;
    const file = await open(
      temporary,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
    let renamed = false;
    try {
      try {
        const value =
          archive === undefined
            ? { seq: head.seq, mac: head.mac }
            : { seq: head.seq, mac: head.mac, archive };
        await file.writeFile(`${JSON.stringify(value)}\n`);
        await file.sync();
      } finally {
        await file.close();
      }
      await rename(temporary, checkpointPath);
      renamed = true;
    } finally {
      if (!renamed) await unlink(temporary).catch(() => undefined);
    }
  }

  /**
   * Moves the sealed file aside and opens its successor, each step once even across retries: reserve
   * the archived name, checkpoint the end with that name (so a crash after the move still finds the
   * file), rename, then create the new file with O_EXCL (a file someone else put at the path is never
   * appended to). The successor's header is queued first, ahead of every waiting record.
   */
  async function completeRotation(current: Rotation): Promise<void> {
    if (current.archive === undefined) {
      current.archive = await reserveArchiveName(directory, base, current.endTime, current.end.seq, now);
    }
    if (!current.checkpointed) {
      if (checkpoint) await writeCheckpoint(current.end, current.archive);
      current.checkpointed = true;
    }
    const sealed = handle;
    const info = await sealed.stat();
    // Renamed only while the path is still the sealed file (a retry after the rename finds it gone).
    const atPath = await lstat(path).catch(() => undefined);
    if (atPath !== undefined && atPath.ino === info.ino && atPath.dev === info.dev) {
      await rename(path, join(directory, current.archive));
      await syncDirectory(directory);
    }
    const fresh = await open(
      path,
      constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_APPEND | constants.O_NOFOLLOW,
      0o600,
    );
    await syncDirectory(directory);
    handle = fresh;
    await sealed.close().catch(() => undefined);
    fileBytes = 0;
    fileLines = 0;
    rotations += 1;
    rotation = null;
    queue.unshift(
      header(current.end.nextFileId, {
        continues: continuesOf(current.archive, current.end),
        ...current.extra,
      }),
    );
  }

  /**
   * Chains the waiting records into one batch. When a line would take the file past maxFileBytes
   * (and the file holds more than its first line), the batch ends with the sealing `audit.end`
   * instead, and the rest waits for the successor: rotation falls between batches, inside the one
   * writer, so the chain's order is the emission order across files too.
   */
  function takeBatch(): { bytes: Buffer; head: ChainHead; lines: number; size: number } {
    const take = queue;
    queue = [];
    // Room again: the refused events are recorded right after the lines that filled the queue.
    if (droppedPending > 0) take.push(droppedRecord());
    const lines: string[] = [];
    let size = 0;
    for (let index = 0; index < take.length; index += 1) {
      const recordJson = take[index] as string;
      const lineBytes = LINE_OVERHEAD + String(seq + 1).length + Buffer.byteLength(recordJson);
      if (fileLines + lines.length >= 2 && fileBytes + size + lineBytes + endReserve > maxFileBytes) {
        const endTime = time();
        const nextFileId = randomBytes(16).toString("base64url");
        const line = chain(
          JSON.stringify({
            time: endTime,
            type: "audit.end",
            reason: "rotated",
            next: { file: base, fileId: nextFileId },
          }),
        );
        lines.push(line);
        size += Buffer.byteLength(line);
        rotation = { end: { seq, mac: prev, nextFileId }, endTime, checkpointed: false, extra: {} };
        queue = take.slice(index);
        break;
      }
      lines.push(chain(recordJson));
      size += lineBytes;
    }
    return { bytes: Buffer.from(lines.join("")), head: { seq, mac: prev }, lines: lines.length, size };
  }

  function scheduleRetry(): void {
    retryTimer = setTimeout(() => {
      retryTimer = null;
      kick();
    }, retryMs);
    retryTimer.unref();
  }

  /** Writes until the queue is empty, or until a step fails (then a retry is scheduled). */
  async function drain(): Promise<void> {
    for (;;) {
      if (carry === null && rotation !== null) {
        try {
          await completeRotation(rotation);
        } catch (error) {
          failed(error);
          scheduleRetry();
          return;
        }
        continue;
      }
      if (carry === null) {
        if (queue.length === 0 && droppedPending === 0) return;
        carry = takeBatch();
      }
      try {
        while (carry.bytes.byteLength > 0) {
          const { bytesWritten } = await handle.write(carry.bytes, 0, carry.bytes.byteLength);
          // A short write resumes from the exact byte: the chain on disk stays byte for byte.
          carry.bytes = carry.bytes.subarray(bytesWritten);
        }
      } catch (error) {
        failed(error);
        scheduleRetry();
        return;
      }
      written += carry.lines;
      fileBytes += carry.size;
      fileLines += carry.lines;
      const head = carry.head;
      carry = null;
      try {
        // On disk before the checkpoint names it: a checkpoint ahead of the file reads as truncation.
        await handle.datasync();
        durable = head;
        // A batch that ends in audit.end is checkpointed by the rotation, with the archived name.
        if (checkpoint && rotation === null) await writeCheckpoint(head);
      } catch (error) {
        failed(error);
      }
    }
  }

  function kick(): void {
    if (running !== null || retryTimer !== null) return;
    running = drain().finally(() => {
      running = null;
    });
  }

  async function flush(): Promise<void> {
    for (;;) {
      if (running !== null) {
        await running;
        continue;
      }
      if (carry === null && rotation === null && queue.length === 0 && droppedPending === 0) return;
      if (retryTimer !== null) {
        clearTimeout(retryTimer);
        retryTimer = null;
      }
      kick();
      await running;
      if (retryTimer !== null) {
        throw new GateError("ERR_INTERNAL", `audit file ${path} cannot be written`, { cause: lastError });
      }
    }
  }

  const release = async (): Promise<void> => {
    if (retryTimer !== null) clearTimeout(retryTimer);
    await handle.close().catch(() => undefined);
    await lock.release().catch(() => undefined);
  };
  try {
    await flush();
  } catch (error) {
    await release();
    throw refuse("cannot be written", error);
  }

  return {
    write(record: SecurityEventRecord): void {
      if (closed) throw new GateError("ERR_SHUTTING_DOWN", "the audit file sink is closed");
      if (queue.length >= maxQueue) {
        droppedPending += 1;
        droppedTotal += 1;
        throw new GateError("ERR_INTERNAL", "audit queue full: event dropped (counted in audit.dropped)");
      }
      // The chain's own types are written by the sink alone: a record posing as a header would
      // switch the verifier's key, one posing as an end record would seal the file.
      const type: unknown = record?.type;
      if (typeof type === "string" && type.startsWith("audit.")) {
        throw invalidArgument("record", "must not use a type reserved for the audit chain");
      }
      // JSON.stringify escapes line breaks, so one record is always one line.
      queue.push(JSON.stringify(record));
      kick();
    },
    flush,
    head: () => durable,
    stats: () => ({ written, dropped: droppedTotal, errors, rotations }),
    close(): Promise<void> {
      closing ??= (async () => {
        closed = true;
        if (droppedPending > 0) queue.push(droppedRecord());
        queue.push(JSON.stringify({ time: time(), type: "audit.stop", dropped: droppedTotal }));
        try {
          await flush();
        } finally {
          await release();
        }
      })();
      return closing;
    },
  };
}

function continuesOf(archive: string, end: EndOfFile): { file: string; seq: number; mac: string } {
  return { file: archive, seq: end.seq, mac: end.mac };
}

/** How a sink starts on the file it opened. */
type StartState =
  | {
      /** Chain on: a fresh file (seq 0) or a new segment after the last line. */
      readonly kind: "chain";
      readonly seq: number;
      readonly prev: string;
      /** The file's size once a torn line is cut. */
      readonly size: number;
      readonly resumed?: "clean" | "unclean";
      readonly tornBytes?: number;
    }
  | {
      /** The file ends with audit.end: a crash stopped its rotation before the move; finish it. */
      readonly kind: "rotate";
      readonly end: EndOfFile;
      readonly endTime: string;
      readonly resumed: "unclean";
      readonly tornBytes?: number;
    }
  | {
      /** The file is empty and the checkpoint names the archive a crash moved it to: continue that. */
      readonly kind: "successor";
      readonly end: EndOfFile;
      readonly archive: string;
      readonly resumed: "unclean";
      readonly tornBytes?: number;
    };

/** The last line of a key-verified file: it must be an audit.end record. */
async function sealedEnd(path: string, keyring: Keyring): Promise<EndOfFile | string> {
  let handle: FileHandle;
  try {
    handle = await openForReading(path);
  } catch (error) {
    return `cannot be opened (${(error as NodeJS.ErrnoException).code ?? "error"})`;
  }
  try {
    const info = await handle.stat();
    if (!info.isFile() || info.size === 0) return "is empty or not a regular file";
    const last = Buffer.alloc(1);
    await readExactly(handle, last, info.size - 1);
    if (last[0] !== 10) return "does not end with a whole line";
    const lines = linesBackward(handle, info.size - 1);
    const first = await lines.next();
    await lines.return(undefined);
    const line = first.done ? "not an audit chain line" : parseLine(first.value);
    if (typeof line === "string") return `ends with a line that is ${line}`;
    if (!verifiesUnderLoadedKey(keyring, line)) return "ends with a line that does not verify";
    const end = line.record["type"] === "audit.end" ? endOf(line.record) : "does not end with audit.end";
    if (typeof end === "string") return end;
    return { seq: line.seq, mac: line.mac, nextFileId: end.nextFileId };
  } catch {
    return "cannot be read";
  } finally {
    await handle.close().catch(() => undefined);
  }
}

function verifiesUnderLoadedKey(keyring: Keyring, line: ParsedLine): boolean {
  return keyring.keyIds.some((id) =>
    sameMac(lineMac(chainKey(keyring, id), line.seq, line.prev, line.recordJson), line.mac),
  );
}

/**
 * Where a new segment starts in the file behind `handle`: sequence 0 for an empty file, otherwise
 * one past the last line, which must verify under a loaded key and reach the checkpoint. A rotation
 * a crash cut short is recognised in each window: the file ends with its audit.end (not yet moved:
 * "rotate"), or the file is empty and the checkpoint names the archive its end is in ("successor");
 * a successor whose header is written but not yet checkpointed continues like any file, its header's
 * `prev` standing for the checkpointed end.
 */
async function continuation(
  handle: FileHandle,
  path: string,
  keyring: Keyring,
  checkpoint: boolean,
  refuse: (problem: string, cause?: unknown) => GateError,
): Promise<StartState> {
  const info = await handle.stat();
  if (!info.isFile()) throw refuse("is not a regular file");
  let size = info.size;
  let tornBytes: number | undefined;
  if (size > 0) {
    const last = Buffer.alloc(1);
    await readExactly(handle, last, size - 1);
    if (last[0] !== 10) {
      // A write cut short by a crash: nothing after the last newline was ever a whole line, so it
      // never had a mac that verifies or a checkpoint that names it.
      const scanFrom = Math.max(0, size - MAX_LINE_BYTES - 1);
      const tail = Buffer.alloc(size - scanFrom);
      await readExactly(handle, tail, scanFrom);
      const newline = tail.lastIndexOf(10);
      if (newline === -1 && scanFrom > 0) throw refuse("ends in an overlong line: not an audit chain file");
      // A tail that is a whole line verifying under a loaded key lost only its newline: that is an
      // edit (or a write stopped one byte short), never a torn line to cut away.
      const torn = parseLine(tail.subarray(newline + 1).toString("utf8"));
      if (typeof torn !== "string" && verifiesUnderLoadedKey(keyring, torn)) {
        throw refuse(
          "cannot be continued: its last line is whole but has no newline; check it with tenantgate audit verify",
        );
      }
      const keep = newline === -1 ? 0 : scanFrom + newline + 1;
      tornBytes = size - keep;
      // Cut only once every check below has passed: a refused start leaves the file as it found it.
      size = keep;
    }
  }
  const cutTorn = async (): Promise<void> => {
    if (tornBytes !== undefined) await handle.truncate(size);
  };
  const torn = tornBytes === undefined ? {} : { tornBytes };
  const stored = checkpoint ? await readCheckpoint(path) : null;
  if (stored !== null && "problem" in stored) throw refuse(`cannot be continued: its ${stored.problem}`);
  const expected = stored?.head ?? null;
  if (size === 0) {
    if (stored !== null && stored.archive !== undefined) {
      const archive = stored.archive;
      const end = await sealedEnd(join(dirname(path), archive), keyring);
      if (typeof end !== "string" && end.seq === stored.head.seq && sameMac(end.mac, stored.head.mac)) {
        await cutTorn();
        return { kind: "successor", end, archive, resumed: "unclean", ...torn };
      }
      throw refuse(
        `is empty and its checkpoint names the end of ${archive}, which ${typeof end === "string" ? end : "ends elsewhere"} (tenantgate audit verify)`,
      );
    }
    if (expected !== null) {
      throw refuse(
        `is empty but its checkpoint names sequence ${expected.seq}: truncated? (tenantgate audit verify)`,
      );
    }
    await cutTorn();
    return { kind: "chain", seq: 0, prev: "", size: 0, ...torn };
  }

  const lines = linesBackward(handle, size - 1);
  let last: ParsedLine | string = "not an audit chain line";
  try {
    const first = await lines.next();
    if (!first.done) last = parseLine(first.value);
  } catch (cause) {
    throw refuse("cannot be continued: its last line is not an audit chain line", cause);
  }
  if (typeof last === "string") {
    throw refuse("cannot be continued: its last line is not an audit chain line (tenantgate audit verify)");
  }
  const lastLine = last;
  if (!verifiesUnderLoadedKey(keyring, lastLine)) {
    throw refuse(
      "cannot be continued: its last line does not verify under any loaded key (tampered, or written under a key no longer configured); check it with tenantgate audit verify and move it aside",
    );
  }
  if (expected !== null) {
    if (expected.seq > lastLine.seq) {
      throw refuse(
        `ends at sequence ${lastLine.seq} but its checkpoint names ${expected.seq}: truncated? (tenantgate audit verify)`,
      );
    }
    // The checkpoint lags the file by at most the batch being written when the process stopped; the
    // line after it carries its mac as `prev` (the only witness when that line is a successor's
    // header and the checkpoint names the archived end).
    let found: string | undefined = lastLine.seq === expected.seq ? lastLine.mac : undefined;
    let after: string | undefined = lastLine.seq === expected.seq + 1 ? lastLine.prev : undefined;
    try {
      for (let next = await lines.next(); found === undefined && !next.done; next = await lines.next()) {
        const line = parseLine(next.value);
        if (typeof line === "string" || line.seq < expected.seq) break;
        if (line.seq === expected.seq) found = line.mac;
        if (line.seq === expected.seq + 1) after = line.prev;
      }
    } catch (cause) {
      throw refuse("cannot be continued: a line before its end is not an audit chain line", cause);
    } finally {
      await lines.return(undefined);
    }
    found ??= after;
    if (found === undefined || !sameMac(found, expected.mac)) {
      throw refuse(
        "does not match its checkpoint (rewritten or replaced?); check it with tenantgate audit verify",
      );
    }
  } else {
    await lines.return(undefined);
  }
  if (lastLine.record["type"] === "audit.end") {
    const end = endOf(lastLine.record);
    if (typeof end === "string") throw refuse(`cannot be continued: its last line is a ${end}`);
    await cutTorn();
    const endTime = lastLine.record["time"];
    return {
      kind: "rotate",
      end: { seq: lastLine.seq, mac: lastLine.mac, nextFileId: end.nextFileId },
      endTime: typeof endTime === "string" ? endTime : "",
      resumed: "unclean",
      ...torn,
    };
  }
  await cutTorn();
  return {
    kind: "chain",
    seq: lastLine.seq + 1,
    prev: lastLine.mac,
    size,
    resumed: lastLine.record["type"] === "audit.stop" ? "clean" : "unclean",
    ...torn,
  };
}
