import { close, constants, fstat, open, type Stats } from "node:fs";
import pino from "pino";
import { GateError, isGateError } from "../errors.ts";
import { DEFAULT_LOG_LEVEL, LOG_LEVELS, type LogLevel } from "./log-level.ts";

/**
 * The gateway's log (DESIGN invariant 8): pino, one JSON object per line, `level` as its name and
 * `time` in ISO 8601 like the audit records.
 *
 * The primary rule is upstream of this file: callers never hand the logger a raw header, query
 * string, body, token, session id or email; identifiers arrive as keyed tags. What is here is the
 * second line, for the day someone forgets: `redact` censors every field named like a credential,
 * a session header, a body or a query, on the line and in the header and request objects a careless
 * call would pass, and errors are reduced to their code (an error's message or stack can quote the
 * input that caused it).
 */

/** Header names whose values are credentials or session handles (lower-case and as usually written). */
const SENSITIVE_HEADERS = [
  "authorization",
  "proxy-authorization",
  "cookie",
  "set-cookie",
  "tenantgate-assertion",
  "mcp-session-id",
  "last-event-id",
] as const;

/** Other field names that, if they ever reach a log call, hold what must never be written. */
const SENSITIVE_FIELDS = [
  "rawHeaders",
  "token",
  "accessToken",
  "access_token",
  "refreshToken",
  "refresh_token",
  "idToken",
  "id_token",
  "apiKey",
  "password",
  "secret",
  "sessionId",
  "email",
  "query",
  "querystring",
  "url",
  "body",
] as const;

/**
 * Where such fields are looked for: the line itself, and the header and request objects a careless
 * call would most likely pass (`{ headers }`, `{ req }`, `{ request }`, an answer's headers). Named
 * paths only: pino's wildcard paths cost 50-300 µs a line, named ones a few µs, and the access line
 * is written for every request.
 */
const HEADER_CONTAINERS = [
  "",
  "headers.",
  "req.headers.",
  "request.headers.",
  "res.headers.",
  "response.headers.",
];
const FIELD_CONTAINERS = ["", "req.", "request.", "res.", "response."];

/** What a censored value is replaced with. */
export const REDACTED = "[redacted]";

function titleCase(name: string): string {
  return name.replace(/(^|-)([a-z])/g, (_, dash: string, letter: string) => dash + letter.toUpperCase());
}

function redactPaths(): string[] {
  const headers = new Set<string>();
  for (const header of SENSITIVE_HEADERS) {
    headers.add(header);
    headers.add(titleCase(header));
  }
  headers.add("Last-Event-ID");
  headers.add("MCP-Session-Id");
  const paths = new Set<string>();
  for (const container of HEADER_CONTAINERS) {
    for (const header of headers) paths.add(`${container.slice(0, -1)}["${header}"]`);
  }
  for (const container of FIELD_CONTAINERS) {
    for (const field of SENSITIVE_FIELDS) paths.add(`${container.slice(0, -1)}["${field}"]`);
  }
  return [...paths];
}

/** Every path `redact` censors. */
const REDACT_PATHS: readonly string[] = Object.freeze(redactPaths());

/** Codes Node and its libraries put on system errors (`ECONNREFUSED`, `UND_ERR_CONNECT_TIMEOUT`). */
const SYSTEM_ERROR_CODE = /^[A-Z][A-Z0-9_]{1,63}$/;

/**
 * What a log line may say about an error: its code, nothing else. A GateError's code is from the
 * closed union; a system error's code is a fixed word chosen by Node or a library; anything else
 * (a parser's error quoting the input, a thrown string) is `ERR_INTERNAL`.
 */
export function errorCodeOf(error: unknown): string {
  if (isGateError(error)) return error.code;
  const code = typeof error === "object" && error !== null ? (error as { code?: unknown }).code : undefined;
  return typeof code === "string" && SYSTEM_ERROR_CODE.test(code) ? code : "ERR_INTERNAL";
}

/** The serializer for `err` and `error` fields: `{ code }` only, never `message`, `stack` or `cause`. */
export function serializeError(error: unknown): { code: string } {
  return { code: errorCodeOf(error) };
}

export interface GatewayLoggerOptions {
  /** Default `info`. */
  readonly level?: LogLevel;
  /**
   * An absolute path: lines are appended; the file is created with mode 0600, and an existing one
   * that group or others can access is refused (as key files are). Default: stderr.
   */
  readonly file?: string;
  /** Each line (JSON, without its newline) is handed here instead (tests, embedders). */
  readonly lines?: (line: string) => void;
  /** Where a failing log file is reported (once). Default: stderr. */
  readonly onFileError?: (code: string) => void;
}

export type OperatorLevel = "info" | "warn" | "error";

export interface GatewayLogger {
  /**
   * The pino logger, for structured lines. Give it tags, codes, names and numbers only: never a
   * header, query string, body or token, whatever `redact` would catch.
   */
  readonly pino: pino.Logger;
  /** An operator message (start-up notes, the exposure warning, sink failures) as the line's `msg`. */
  operator(level: OperatorLevel, message: string): void;
  /** Writes what is buffered and releases a log file (stderr and a line sink stay open). */
  close(): Promise<void>;
}

/** A log file's write buffer: beyond it lines are dropped rather than held while the disk stalls. */
const MAX_BUFFERED_BYTES = 16 * 1024 * 1024;

export async function createGatewayLogger(options: GatewayLoggerOptions = {}): Promise<GatewayLogger> {
  const level = options.level ?? DEFAULT_LOG_LEVEL;
  if (!LOG_LEVELS.includes(level)) throw new GateError("ERR_CONFIG_INVALID", "log.level is not a level");
  const onFileError =
    options.onFileError ??
    ((code: string) => process.stderr.write(`tenantgate: log.file: cannot write (${code})\n`));

  let destination: pino.DestinationStream;
  let release: () => Promise<void> = async () => undefined;
  if (options.lines !== undefined) {
    const lines = options.lines;
    destination = {
      write(chunk: string) {
        try {
          lines(chunk.endsWith("\n") ? chunk.slice(0, -1) : chunk);
        } catch {
          // A failing sink must not turn a log call into a failed request.
        }
      },
    };
  } else if (options.file !== undefined) {
    const fd = await openLogFile(options.file);
    const file = pino.destination({ fd, sync: false, maxLength: MAX_BUFFERED_BYTES });
    let reported = false;
    file.on("error", (error: unknown) => {
      if (reported) return;
      reported = true;
      onFileError(errorCodeOf(error));
    });
    destination = file;
    release = () =>
      new Promise<void>((resolve) => {
        file.once("close", () => resolve());
        file.once("error", () => resolve());
        file.end();
      });
  } else {
    destination = process.stderr;
  }

  const logger = pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: [...REDACT_PATHS], censor: REDACTED },
      serializers: { err: serializeError, error: serializeError },
      hooks: {
        // pino would take an error passed first as the line's `msg` (its message, which may quote
        // input): it goes under `err`, reduced to its code, and the message is ours or "error".
        logMethod(args, method) {
          const [first, ...rest] = args as unknown[];
          if (first instanceof Error) {
            const message = typeof rest[0] === "string" ? rest[0] : "error";
            return method.apply(this, [{ err: first }, message] as Parameters<typeof method>);
          }
          return method.apply(this, args);
        },
      },
    },
    destination,
  );

  let closed: Promise<void> | undefined;
  return {
    pino: logger,
    operator(operatorLevel, message) {
      try {
        logger[operatorLevel](message);
      } catch {
        // A log closed at shutdown (a late sink error): the message has nowhere left to go.
      }
    },
    close() {
      closed ??= release();
      return closed;
    },
  };
}

/**
 * Opens (or creates, 0600) a log file for appending, then checks the opened file itself: a regular
 * file, owned by this user (or root), with no access for group or others. An existing file looser
 * than that is refused, not tightened: who could read it already has, and changing its mode
 * behind a log shipper's back is the operator's decision.
 */
async function openLogFile(path: string): Promise<number> {
  const refuse = (problem: string, cause?: unknown): GateError =>
    new GateError("ERR_CONFIG_INVALID", `log.file ${path} ${problem}`, cause === undefined ? {} : { cause });
  let fd: number;
  try {
    fd = await new Promise<number>((resolve, reject) => {
      // O_NOFOLLOW: a symlink planted at the path must not send the log elsewhere.
      open(
        path,
        constants.O_WRONLY |
          constants.O_CREAT |
          constants.O_APPEND |
          constants.O_NOFOLLOW |
          constants.O_NONBLOCK,
        0o600,
        (error, opened) => (error ? reject(error) : resolve(opened)),
      );
    });
  } catch (cause) {
    throw refuse(`cannot be opened (${errorCodeOf(cause)})`, cause);
  }
  try {
    const info = await new Promise<Stats>((resolve, reject) =>
      fstat(fd, (error, stats) => (error ? reject(error) : resolve(stats))),
    );
    if (!info.isFile()) throw refuse("is not a regular file");
    if ((info.mode & 0o077) !== 0) {
      throw refuse(`is open to group or others (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`);
    }
    const uid = process.geteuid?.();
    if (uid !== undefined && info.uid !== uid && info.uid !== 0) throw refuse("is owned by another user");
    return fd;
  } catch (error) {
    close(fd, () => undefined);
    throw isGateError(error) ? error : refuse(`cannot be checked (${errorCodeOf(error)})`, error);
  }
}
