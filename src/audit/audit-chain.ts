import {
  createHash,
  createHmac,
  createSecretKey,
  type KeyObject,
  randomBytes,
  timingSafeEqual,
} from "node:crypto";
import { createReadStream } from "node:fs";
import { constants, type FileHandle, open, readFile, rename } from "node:fs/promises";
import type { Keyring } from "../crypto/keyring.ts";
import { GateError, invalidArgument, isGateError } from "../errors.ts";
import type { SecurityEventRecord, SecurityEventSink } from "./security-events.ts";

/**
 * The tamper-evident audit trail (DESIGN invariant 9, THREATS E2): a JSON-lines file in which every
 * line is chained to the one before it by a keyed MAC, with the head checkpointed beside it.
 *
 * Format (version 1), one JSON object per line, keys in exactly this order, nothing else:
 *
 *   {"seq":N,"prev":"<mac of line N-1>","record":{...},"mac":"<mac of this line>"}
 *
 * - `seq` counts lines from 0 per file, across restarts.
 * - `mac` = base64url HMAC-SHA256 under `keyring.purposeKey("audit-chain", keyId)` of
 *   `"tenantgate/audit-chain/v1\n" + seq + "\n" + prev + "\n" + <record JSON, byte for byte as
 *   written>`. seq is digits and prev is base64url, so the encoding is unambiguous; the record is
 *   MACed as the exact text in the line (cut out between the fixed prefix and the fixed-length
 *   suffix), never re-serialised, so no canonical JSON is needed.
 * - `prev` of line 0 is the genesis value SHA-256("tenantgate/audit-chain/v1/genesis\n" + fileId),
 *   base64url, from line 0's own header; every other line's is the previous line's mac.
 * - Line 0 is a header record `{"type":"audit.start","time","version":1,"fileId","keyId"}`. Every
 *   start of the sink on an existing file appends another header (a new segment: fresh `fileId`, the
 *   active `keyId`, `resumed: "clean" | "unclean"` after an `audit.stop` or not) chained to the old
 *   last line. A header's `keyId` names the master key that MACs it and every line up to the next
 *   header, so rotation needs no re-keying and a verifier needs every key the file names.
 * - Other records are `SecurityEventRecord`s, `audit.dropped` ({count}: events refused while the
 *   queue was full) and `audit.stop` ({dropped}: the segment's total) written by `close()`.
 *
 * The checkpoint `<path>.head` holds `{"seq":N,"mac":"..."}` of the last line known on disk,
 * replaced atomically after every flush. A head string (`N:mac`, what `tenantgate audit verify`
 * prints) kept elsewhere is the stronger anchor: whoever can rewrite the file can rewrite the
 * checkpoint beside it to an older head, though never forge a line.
 */

export const AUDIT_CHAIN_VERSION = 1;
/** The keyring purpose the chain's MAC keys derive from. */
export const AUDIT_CHAIN_PURPOSE = "audit-chain";
export const CHECKPOINT_SUFFIX = ".head";

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

/** The key id and file id of a header record, or the reason it is not a valid header. */
function headerOf(record: Readonly<Record<string, unknown>>): { keyId: string; fileId: string } | string {
  const { version, keyId, fileId } = record;
  if (version !== AUDIT_CHAIN_VERSION) return "audit.start header of an unknown version";
  if (
    typeof keyId !== "string" ||
    !KEY_ID.test(keyId) ||
    typeof fileId !== "string" ||
    !FILE_ID.test(fileId)
  ) {
    return "malformed audit.start header";
  }
  return { keyId, fileId };
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

/** The checkpoint beside `path`: its head, null when there is none, or a problem. */
async function readCheckpoint(path: string): Promise<ChainHead | null | { problem: string }> {
  let text: string;
  try {
    text = await readFile(`${path}${CHECKPOINT_SUFFIX}`, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    return { problem: `checkpoint ${path}${CHECKPOINT_SUFFIX} cannot be read` };
  }
  try {
    const { seq, mac } = JSON.parse(text) as { seq?: unknown; mac?: unknown };
    return parseHead(`${seq}:${mac}`);
  } catch {
    return { problem: `checkpoint ${path}${CHECKPOINT_SUFFIX} is malformed` };
  }
}

// --- verification --------------------------------------------------------------------------------

export interface VerifyAuditFileOptions {
  /** Every master key the file's headers name (rotation: old and new). */
  readonly keyring: Keyring;
  /**
   * The head the file must reach (`N:mac`, from a previous verify or an external record). Default:
   * the checkpoint `<path>.head` when present; without either, truncation cannot be detected.
   */
  readonly expectHead?: string | ChainHead;
}

export type AuditVerification =
  | {
      readonly ok: true;
      /** Lines in the file. */
      readonly lines: number;
      /** The last line's head (`N:mac`). */
      readonly head: string;
      /** What truncation was checked against. */
      readonly checkedAgainst: "expect-head" | "checkpoint" | "nothing";
    }
  | {
      readonly ok: false;
      /**
       * The first bad line, 1-based. For a truncated file, the first missing line (one past the end);
       * 0 when the problem is the checkpoint file itself.
       */
      readonly line: number;
      readonly reason: string;
    };

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
  const keyring = options?.keyring;
  if (typeof keyring?.purposeKey !== "function") throw invalidArgument("keyring", "must be a Keyring");
  let expected: ChainHead | null;
  let checkedAgainst: "expect-head" | "checkpoint" | "nothing";
  if (options.expectHead !== undefined) {
    expected =
      typeof options.expectHead === "string"
        ? parseHead(options.expectHead)
        : parseHead(formatHead(options.expectHead));
    checkedAgainst = "expect-head";
  } else {
    const checkpoint = await readCheckpoint(path);
    if (checkpoint !== null && "problem" in checkpoint)
      return { ok: false, line: 0, reason: checkpoint.problem };
    expected = checkpoint;
    checkedAgainst = checkpoint === null ? "nothing" : "checkpoint";
  }

  const keys = new Map<string, KeyObject>();
  let key: KeyObject | undefined;
  let lineNumber = 0;
  let previous: ChainHead | undefined;
  let macAtExpected: string | undefined;
  const fail = (line: number, reason: string): AuditVerification => ({ ok: false, line, reason });

  try {
    for await (const read of readLines(path)) {
      lineNumber += 1;
      if ("problem" in read) return fail(lineNumber, read.problem);
      const line = parseLine(read.text);
      if (typeof line === "string") return fail(lineNumber, line);
      let lineKey = key;
      let fileId: string | undefined;
      if (line.record["type"] === "audit.start") {
        const header = headerOf(line.record);
        if (typeof header === "string") return fail(lineNumber, header);
        if (!keyring.hasKey(header.keyId)) {
          return fail(lineNumber, `written under key id ${header.keyId}, which is not loaded`);
        }
        lineKey = keys.get(header.keyId) ?? chainKey(keyring, header.keyId);
        keys.set(header.keyId, lineKey);
        fileId = header.fileId;
      } else if (previous === undefined) {
        return fail(lineNumber, "does not start with an audit.start header");
      }
      // The mac first: an edited or forged line is named as such, whatever else it changed.
      if (
        lineKey === undefined ||
        !sameMac(lineMac(lineKey, line.seq, line.prev, line.recordJson), line.mac)
      ) {
        return fail(lineNumber, "mac does not verify (edited, forged, or written under another key)");
      }
      const expectedSeq = previous === undefined ? 0 : previous.seq + 1;
      if (line.seq !== expectedSeq) {
        return fail(
          lineNumber,
          `sequence ${line.seq} where ${expectedSeq} was expected (a line deleted, inserted or moved)`,
        );
      }
      const expectedPrev = previous === undefined ? genesis(fileId as string) : previous.mac;
      if (line.prev !== expectedPrev) return fail(lineNumber, "does not chain to the line before it");
      key = lineKey;
      previous = { seq: line.seq, mac: line.mac };
      if (expected !== null && line.seq === expected.seq) macAtExpected = line.mac;
    }
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (isGateError(error)) throw error;
    throw new GateError("ERR_ARGUMENT_INVALID", `audit file ${path} cannot be read (${code ?? "error"})`, {
      cause: error,
    });
  }
  if (previous === undefined) return fail(1, "empty file: no audit.start header");
  if (expected !== null) {
    if (expected.seq > previous.seq) {
      return fail(
        lineNumber + 1,
        `truncated: the file ends at sequence ${previous.seq}, the expected head is ${expected.seq}`,
      );
    }
    if (macAtExpected === undefined || !sameMac(macAtExpected, expected.mac)) {
      return fail(expected.seq + 1, "does not match the expected head (the file was replaced or rewritten)");
    }
  }
  return { ok: true, lines: lineNumber, head: formatHead(previous), checkedAgainst };
}

// --- the sink ------------------------------------------------------------------------------------

export interface ChainedFileSinkOptions {
  /** The audit file: created with mode 0600, only ever appended to. One writer per file. */
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
  /** Failed writes, syncs and checkpoints. */
  readonly errors: number;
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
  /** Refuses new events, writes `audit.stop`, flushes, checkpoints and closes the file. */
  close(): Promise<void>;
}

/**
 * Opens (or creates) an audit file and returns the sink that appends to it. An existing file is
 * continued: its last line must verify under a loaded key and, when the checkpoint exists, the file
 * must still reach the checkpointed head; otherwise it is refused (ERR_CONFIG_INVALID), because
 * chaining on would overwrite the checkpoint that proves the damage. A torn last line (a crash
 * mid-write: bytes after the last "\n") is cut off and its length recorded in the new header.
 */
export async function createChainedFileSink(options: ChainedFileSinkOptions): Promise<ChainedFileSink> {
  const path = options?.path;
  if (typeof path !== "string" || path.length === 0) throw invalidArgument("path", "must be a file path");
  const keyring = options.keyring;
  if (typeof keyring?.purposeKey !== "function") throw invalidArgument("keyring", "must be a Keyring");
  const checkpoint = options.checkpoint ?? true;
  if (typeof checkpoint !== "boolean") throw invalidArgument("checkpoint", "must be a boolean");
  const maxQueue = options.maxQueue ?? DEFAULT_MAX_QUEUE;
  if (!Number.isSafeInteger(maxQueue) || maxQueue < 1)
    throw invalidArgument("maxQueue", "must be a positive integer");
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

  let handle: FileHandle;
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

  let start: { seq: number; prev: string; resumed?: "clean" | "unclean"; tornBytes?: number };
  try {
    start = await continuation(handle, path, keyring, checkpoint, refuse);
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw error;
  }

  const keyId = keyring.activeKeyId;
  const key = chainKey(keyring, keyId);
  const checkpointPath = `${path}${CHECKPOINT_SUFFIX}`;
  const time = () => new Date(now()).toISOString();

  /** The head of the last line queued (the chain runs ahead of the disk). */
  let seq = start.seq - 1;
  let prev = start.prev;
  let durable: ChainHead = { seq: start.seq - 1, mac: start.prev };
  let queue: string[] = [];
  let droppedPending = 0;
  let droppedTotal = 0;
  let written = 0;
  let errors = 0;
  /** A batch taken from the queue and not yet wholly on disk, with its head and line count. */
  let carry: { bytes: Buffer; head: ChainHead; lines: number } | null = null;
  let running: Promise<void> | null = null;
  let retryTimer: NodeJS.Timeout | null = null;
  let lastError: unknown;
  let closed = false;
  let closing: Promise<void> | undefined;

  const chain = (recordJson: string): string => {
    seq += 1;
    const mac = lineMac(key, seq, prev, recordJson);
    const line = `{"seq":${seq},"prev":"${prev}","record":${recordJson},"mac":"${mac}"}\n`;
    prev = mac;
    return line;
  };
  const chainDropped = (into: string[]): void => {
    if (droppedPending === 0) return;
    into.push(chain(JSON.stringify({ time: time(), type: "audit.dropped", count: droppedPending })));
    droppedPending = 0;
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

  async function writeCheckpoint(head: ChainHead): Promise<void> {
    const temporary = `${checkpointPath}.tmp`;
    const file = await open(
      temporary,
      constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
      0o600,
    );
    try {
      await file.writeFile(`${JSON.stringify({ seq: head.seq, mac: head.mac })}\n`);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, checkpointPath);
  }

  /** Writes until the queue is empty, or until a write fails (then a retry is scheduled). */
  async function drain(): Promise<void> {
    for (;;) {
      if (carry === null) {
        if (queue.length === 0 && droppedPending === 0) return;
        const batch = queue;
        queue = [];
        // Room again: the refused events are recorded right after the lines that filled the queue.
        chainDropped(batch);
        carry = { bytes: Buffer.from(batch.join("")), head: { seq, mac: prev }, lines: batch.length };
      }
      try {
        while (carry.bytes.byteLength > 0) {
          const { bytesWritten } = await handle.write(carry.bytes, 0, carry.bytes.byteLength);
          // A short write resumes from the exact byte: the chain on disk stays byte for byte.
          carry.bytes = carry.bytes.subarray(bytesWritten);
        }
      } catch (error) {
        failed(error);
        retryTimer = setTimeout(() => {
          retryTimer = null;
          kick();
        }, retryMs);
        retryTimer.unref();
        return;
      }
      written += carry.lines;
      const head = carry.head;
      carry = null;
      try {
        // On disk before the checkpoint names it: a checkpoint ahead of the file reads as truncation.
        await handle.datasync();
        durable = head;
        if (checkpoint) await writeCheckpoint(head);
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
      if (carry === null && queue.length === 0 && droppedPending === 0) return;
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

  const header: Record<string, unknown> = {
    time: time(),
    type: "audit.start",
    version: AUDIT_CHAIN_VERSION,
    fileId: randomBytes(16).toString("base64url"),
    keyId,
  };
  if (start.resumed !== undefined) header["resumed"] = start.resumed;
  if (start.tornBytes !== undefined) header["tornBytes"] = start.tornBytes;
  if (start.seq === 0) prev = genesis(header["fileId"] as string);
  queue.push(chain(JSON.stringify(header)));
  try {
    await flush();
  } catch (error) {
    if (retryTimer !== null) clearTimeout(retryTimer);
    await handle.close().catch(() => undefined);
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
      // switch the verifier's key.
      const type: unknown = record?.type;
      if (typeof type === "string" && type.startsWith("audit.")) {
        throw invalidArgument("record", "must not use a type reserved for the audit chain");
      }
      // JSON.stringify escapes line breaks, so one record is always one line.
      queue.push(chain(JSON.stringify(record)));
      kick();
    },
    flush,
    head: () => durable,
    stats: () => ({ written, dropped: droppedTotal, errors }),
    close(): Promise<void> {
      closing ??= (async () => {
        closed = true;
        chainDropped(queue);
        queue.push(chain(JSON.stringify({ time: time(), type: "audit.stop", dropped: droppedTotal })));
        try {
          await flush();
        } finally {
          if (retryTimer !== null) clearTimeout(retryTimer);
          await handle.close();
        }
      })();
      return closing;
    },
  };
}

/**
 * Where a new segment starts in the file behind `handle`: sequence 0 for an empty file, otherwise
 * one past the last line, which must verify under a loaded key and reach the checkpoint.
 */
async function continuation(
  handle: FileHandle,
  path: string,
  keyring: Keyring,
  checkpoint: boolean,
  refuse: (problem: string, cause?: unknown) => GateError,
): Promise<{ seq: number; prev: string; resumed?: "clean" | "unclean"; tornBytes?: number }> {
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
      if (
        typeof torn !== "string" &&
        keyring.keyIds.some((id) =>
          sameMac(lineMac(chainKey(keyring, id), torn.seq, torn.prev, torn.recordJson), torn.mac),
        )
      ) {
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
  const expected = checkpoint ? await readCheckpoint(path) : null;
  if (expected !== null && "problem" in expected)
    throw refuse(`cannot be continued: its ${expected.problem}`);
  if (size === 0) {
    if (expected !== null) {
      throw refuse(
        `is empty but its checkpoint names sequence ${expected.seq}: truncated? (tenantgate audit verify)`,
      );
    }
    await cutTorn();
    return { seq: 0, prev: "", ...torn };
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
  const verifies = keyring.keyIds.some((id) =>
    sameMac(lineMac(chainKey(keyring, id), lastLine.seq, lastLine.prev, lastLine.recordJson), lastLine.mac),
  );
  if (!verifies) {
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
    // The checkpoint lags the file by at most the batch being written when the process stopped.
    let found: string | undefined = lastLine.seq === expected.seq ? lastLine.mac : undefined;
    try {
      for (let next = await lines.next(); found === undefined && !next.done; next = await lines.next()) {
        const line = parseLine(next.value);
        if (typeof line === "string" || line.seq < expected.seq) break;
        if (line.seq === expected.seq) found = line.mac;
      }
    } catch (cause) {
      throw refuse("cannot be continued: a line before its end is not an audit chain line", cause);
    } finally {
      await lines.return(undefined);
    }
    if (found === undefined || !sameMac(found, expected.mac)) {
      throw refuse(
        "does not match its checkpoint (rewritten or replaced?); check it with tenantgate audit verify",
      );
    }
  } else {
    await lines.return(undefined);
  }
  await cutTorn();
  return {
    seq: lastLine.seq + 1,
    prev: lastLine.mac,
    resumed: lastLine.record["type"] === "audit.stop" ? "clean" : "unclean",
    ...torn,
  };
}
