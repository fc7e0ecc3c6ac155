/**
 * stdio upstreams: MCP servers that speak only stdio, run as one child process per legacy session and
 * bridged to the HTTP-shaped `UpstreamClient` the gateway already calls (issue 6).
 *
 * One process per session, never reused. A stdio server accepts exactly one `initialize` (MCP
 * lifecycle), and many keep the credentials of the user they act for in memory, in their environment
 * or under their home directory. A process handed to a second caller would be the incident in
 * INCIDENTS.md where a server gave the previous user's Google credentials to whoever connected next.
 * So a process is started by one principal's `initialize`, answers only that principal, and ends with
 * its session (DELETE, idle timeout, crash, misbehaviour, shutdown), its directories with it. A new
 * session, even of the same principal, gets a new process.
 *
 * Revocation. The gateway binds each process to the session it recorded for it (`bindSession`) and
 * hands the bridge every revocation this replica hears (`applyRevocation`): a revoked session, a
 * revoked principal, the kill switch, a session the per-principal cap evicted. The process ends at
 * once rather than at the idle timeout, since until it ends it holds the principal's credentials and
 * a cap slot for a session nobody may use any more.
 *
 * Processes live on the replica that started them. The session id minted here (the gateway stores it
 * sealed; the client never sees it) is known only to this replica's bridge: on another replica it
 * answers 404 and the gateway ends the session as "upstream gone". A deployment with more than one
 * replica therefore needs session affinity for stdio upstreams (route on the client's
 * `Mcp-Session-Id`).
 *
 * Isolation (THREATS C4). The child's environment is built from nothing: a fixed PATH (only
 * `upstream.env.PATH` replaces it), HOME, TMPDIR/TMP/TEMP, LANG, and the upstream's configured `env`
 * with each `vault:NAME` value replaced by the caller's own vault entry. Never `process.env`: the
 * master key, the admin token and other principals' secrets stay in the gateway. Each process gets a
 * fresh 0700 directory with `home/`, `tmp/` and `work/` (its cwd), removed when it ends. With
 * `runAs: "distinct-uid"` (the gateway must run as root) each live process also gets a uid of its
 * own from `uidRange`, so one server cannot read another's files even if it learns their path; when
 * it ends, every process left with that uid is killed before the uid is handed out again.
 *
 * Wire mapping (Streamable HTTP 2025-11-25 on one side, stdio on the other):
 * - POST initialize without a session id: spawn, write the message, answer 200 JSON with the
 *   server's answer and a fresh `mcp-session-id` (>= 128 bits).
 * - POST with a session id: requests are answered 200 JSON once every response has arrived (matched
 *   by the client's ids, per process); notifications and responses alone are answered 202.
 * - Everything else the server writes (notifications, its own requests such as sampling or
 *   elicitation, progress and log messages) goes to the session's one GET stream, or waits for it in
 *   a bounded buffer. Progress of a pending request therefore arrives on the GET stream, not on the
 *   POST's answer; MCP clients route progress by token, not by stream.
 * - A process that ends answers its pending POSTs by throwing ERR_UPSTREAM_UNAVAILABLE (the gateway
 *   answers 502, as for an HTTP upstream that dropped the connection), ends its GET stream, and its id
 *   answers 404 from then on, as an HTTP server answers a session it no longer has.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { once } from "node:events";
import { chmodSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { chmod, chown, lstat, mkdir, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { PassThrough, Readable } from "node:stream";
import type { StdioUpstreamConfig } from "../config/gateway-config.ts";
import { mintId } from "../crypto/ids.ts";
import { GateError, invalidArgument } from "../errors.ts";
import { type JsonRpcId, parseJsonRpcBody } from "../gateway/json-rpc-body.ts";
import { GATEWAY_PROTOCOL_VERSIONS } from "../gateway/protocol-era.ts";
import type {
  UpstreamClient,
  UpstreamRequest,
  UpstreamResponse,
  UpstreamSessionBinding,
} from "../gateway/upstream-client.ts";
import { ownerScope, type Principal, samePrincipal } from "../identity/principal.ts";
import { principalDigest, type RevocationNotice, type RevocationSignal } from "../sessions/revocation-bus.ts";
import type { OwnerScope } from "../store/keys.ts";
import { environmentVaultReference } from "../vault/injection.ts";
import { VAULT_ENTRY_NAME, type Vault } from "../vault/vault.ts";
import {
  answerServerRequest,
  bridgeInitialize,
  clientAnswer,
  clientProgress,
  discoverAnswer,
  INITIALIZED_NOTIFICATION,
  progressTokenOf,
  readServerDescription,
  type StdioServerDescription,
  serverRequest,
} from "./stdio-modern.ts";

export interface StdioUpstreamOptions {
  /** Where `vault:NAME` values of `upstream.env` are read, always for the calling principal. */
  readonly vault?: Vault;
  /**
   * The directory the per-process directories are made in; created if absent (it must then be a
   * directory of the gateway's user that is not a symbolic link), removed by `close()`.
   * Default `<os tmpdir>/tenantgate-stdio-<gateway pid>`.
   */
  readonly workRoot?: string;
  /** "gateway" (default): children run as the gateway's user. "distinct-uid": see `uidRange`. */
  readonly runAs?: "gateway" | "distinct-uid";
  /**
   * distinct-uid only: the uids (inclusive) handed to children, one per live process, gid = uid. They
   * must belong to no account and to no other gateway on the host; uid 0 is refused.
   */
  readonly uidRange?: readonly [number, number];
  /** Live processes of this upstream, all principals (default 64). Beyond: ERR_OVERLOADED. */
  readonly maxProcesses?: number;
  /** Live processes of one principal (default 4). Beyond: ERR_CONNECTION_LIMIT. */
  readonly maxProcessesPerPrincipal?: number;
  /**
   * Live processes of one tenant (issuer, tenant), all its principals together (default: no tenant
   * cap). Beyond: ERR_CONNECTION_LIMIT. Without it, one tenant's principals can take every process
   * slot of a shared upstream.
   */
  readonly maxProcessesPerTenant?: number;
  /** How long a new process may take to answer `initialize` (default 10 s). */
  readonly startTimeoutMs?: number;
  /** A process with no request in flight and no open GET stream for this long is ended (default 15 min). */
  readonly idleTimeoutMs?: number;
  /**
   * How long a POST waits for the server's answers (default 300 s, as `headersTimeoutMs` for HTTP
   * upstreams). Then it fails with ERR_UPSTREAM_UNAVAILABLE and the server is sent
   * `notifications/cancelled`; the session lives on.
   */
  readonly requestTimeoutMs?: number;
  /** Between SIGTERM and SIGKILL when a process is ended (default 2 s). */
  readonly killGraceMs?: number;
  /** Longest stdout line (one message) accepted; a longer one ends the process (default 4 MiB). */
  readonly maxMessageBytes?: number;
  /** Messages kept for a session's GET stream while none is open (default 1,000; oldest dropped). */
  readonly maxQueuedMessages?: number;
  /**
   * Each stderr line of a child, with every vault value injected into that child replaced by
   * `[redacted]`, control characters replaced, and at most 8 KiB long. Without a sink stderr is
   * read and discarded (never copied to the gateway's own stderr).
   */
  readonly onStderr?: (line: string, context: StdioProcessContext) => void;
  /** Lifecycle events, for logs and metrics. */
  readonly onEvent?: (event: StdioProcessEvent) => void;
  /**
   * "off" (default): modern (2026-07-28) requests are refused with -32022. "per-principal": each
   * principal's modern requests are served by one process of its own, which the bridge initializes
   * itself (src/upstreams/stdio-modern.ts); it is never shared with anyone else.
   */
  readonly modern?: "off" | "per-principal";
}

/**
 * Names a process in logs. `processRef` is random and unrelated to the session id and to the
 * principal: it joins the lines of one process and reveals nothing else.
 */
export interface StdioProcessContext {
  readonly upstream: string;
  readonly processRef: string;
}

export type StdioEndReason =
  | "deleted"
  /** A principal's modern process whose vault entries changed (or were deleted) since it started. */
  | "credentials-changed"
  /** An anonymous caller's modern process: a throwaway principal, so one request, then the end. */
  | "answered"
  | "idle"
  | "exited"
  | "misbehaved"
  | "start-timeout"
  | "start-failed"
  | "initialize-refused"
  /** A revocation named it: its session, its principal, the kill switch, or a failed re-check. */
  | "revoked"
  /** Its session reached its absolute timeout (`sessions.absoluteTimeout`). */
  | "expired"
  | "closed";

export type StdioProcessEvent =
  | (StdioProcessContext & { readonly type: "process.started"; readonly pid: number })
  | (StdioProcessContext & {
      readonly type: "process.ended";
      readonly reason: StdioEndReason;
      readonly exitCode: number | null;
      readonly signal: string | null;
    })
  /** A message for the GET stream was dropped (buffer full); `dropped` counts them for the process. */
  | (StdioProcessContext & { readonly type: "message.dropped"; readonly dropped: number })
  /** Processes of this uid survived SIGKILL: the uid is not handed out again until `close()`. */
  | (StdioProcessContext & { readonly type: "uid.quarantined"; readonly uid: number });

const SESSION_HEADER = "mcp-session-id";
const VERSION_HEADER = "mcp-protocol-version";
const MODERN_VERSIONS: readonly string[] = GATEWAY_PROTOCOL_VERSIONS.modern;
const LEGACY_VERSIONS: readonly string[] = GATEWAY_PROTOCOL_VERSIONS.legacy;
/** Sent as the bridge's clientInfo version when it initializes a principal's process. */
const BRIDGE_VERSION = "1";
const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin";
/** The bridge sets these to the process's own directories; a config naming them is refused. */
const BRIDGE_ENVIRONMENT = new Set(["HOME", "TMPDIR", "TMP", "TEMP"]);
const REDACTED = "[redacted]";
/** Shorter values would redact common substrings without protecting anything. */
const MIN_SCRUBBED_LENGTH = 4;
const MAX_STDERR_LINE = 8192;
/** stderr lines per process that reach the sink: a sustained rate, and a burst above it. */
const STDERR_LINES_PER_SECOND = 100;
const STDERR_BURST_LINES = 500;
/** The GET buffer is bounded in bytes too: 1,000 messages of 4 MiB would be 4 GB. */
const MAX_QUEUED_BYTES = 16 * 1024 * 1024;
/** What may wait in the gateway for a process to read it from its stdin. */
const MAX_INPUT_BACKLOG_BYTES = 16 * 1024 * 1024;
const MAX_BATCH = 1024;
/** After the leader exits, how long its remaining output may take to be read before the pipes close. */
const DRAIN_AFTER_EXIT_MS = 500;
const SWEEP_ROUNDS = 10;
const SWEEP_PAUSE_MS = 100;
/**
 * Where a process can write outside its own directory on a usual host: world-writable places. What a
 * uid owns there is removed before the uid is handed out again (anywhere else is a container's job).
 */
const SHARED_WRITABLE_ROOTS = ["/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue"];
/** Entries looked at per removal; past it the uid is quarantined rather than handed out unchecked. */
const MAX_SHARED_ENTRIES_WALKED = 100_000;
/** The default work root is `<tmpdir>/tenantgate-stdio-<gateway pid>`. */
const DEFAULT_WORK_ROOT_PREFIX = "tenantgate-stdio-";
const DEFAULT_WORK_ROOT = /^tenantgate-stdio-(\d+)$/;
/** 128 random bits, hex: a process directory's name, unguessable by its siblings. */
const PROCESS_DIRECTORY_NAME = /^[0-9a-f]{32}$/;
/** After notices may have been lost: how often a session's re-check is tried, and the backoff step. */
const REVALIDATE_ATTEMPTS = 5;
const REVALIDATE_RETRY_MS = 250;

const DEFAULTS = {
  maxProcesses: 64,
  maxProcessesPerPrincipal: 4,
  startTimeoutMs: 10_000,
  idleTimeoutMs: 15 * 60_000,
  requestTimeoutMs: 300_000,
  killGraceMs: 2_000,
  maxMessageBytes: 4 * 1024 * 1024,
  maxQueuedMessages: 1_000,
} as const;

/**
 * uids held by live children of every bridge in this gateway process: two stdio upstreams with
 * overlapping ranges must still never give one uid to two processes.
 */
const uidsInUse = new Set<number>();

type ProcessState = "starting" | "running" | "ending" | "exited";

interface Exchange {
  /** Response keys awaited, in the order the answer lists them. */
  readonly keys: readonly string[];
  readonly answers: Map<string, string>;
  readonly batch: boolean;
  settled: boolean;
  resolve(body: string): void;
  reject(error: unknown): void;
}

/**
 * What a revocation can name a process by. Null fields describe a process no gateway session names:
 * no session notice matches it, every kill switch ends it, and a re-check after lost notices ends it.
 */
interface ProcessBinding {
  readonly sessionDigest: string | null;
  readonly killGeneration: number | null;
  readonly stillValid: (() => Promise<boolean>) | null;
}

const SESSIONLESS_BINDING: ProcessBinding = Object.freeze({
  sessionDigest: null,
  killGeneration: null,
  stillValid: null,
});

interface BridgedProcess {
  /**
   * "session": started by a legacy `initialize`, reached by its session id. "principal": the one
   * process serving a principal's modern requests, reached by the principal alone.
   */
  readonly kind: "session" | "principal";
  readonly sessionId: string;
  readonly context: StdioProcessContext;
  readonly owner: Principal;
  /** The owner as a principal revocation names it. */
  readonly principalDigest: string;
  /** Set once the gateway has recorded the session (`bindSession`); undefined until then. */
  binding: ProcessBinding | undefined;
  /** How many resyncs the bridge had heard when this process's initialize began. */
  readonly resyncsAtStart: number;
  /**
   * The newest kill-switch generation heard while the process was not bound yet (0: none), judged
   * at bind. Kept per process, not bridge-wide: a kill switch whose generation is unknown (it failed
   * in the store) is sent as the largest one, and must not end every session bound after it.
   */
  killSwitchBeforeBind: number;
  /**
   * A session notice was heard while the process was not bound yet: it may name the session being
   * recorded (evicted by a concurrent create before this one returned), so bindSession re-checks it.
   */
  sessionNoticeBeforeBind: boolean;
  readonly dir: string;
  readonly uid: number | undefined;
  /** Vault values injected into this process's env, longest first (scrubbed from its stderr). */
  readonly secrets: readonly string[];
  /** A keyed digest of those values: a principal's modern process is replaced when they change. */
  readonly credentialTag: string;
  /** The server's own `initialize` answer (principal processes, once running). */
  server: StdioServerDescription | undefined;
  /** The next JSON-RPC id the bridge writes to a principal process (its own ids, never a client's). */
  nextId: number;
  /** Principal processes: where the server's progress for each request goes, by the bridge's token. */
  readonly progress: Map<string, (params: Record<string, unknown>) => void>;
  readonly child: ChildProcess;
  state: ProcessState;
  endReason: StdioEndReason | undefined;
  readonly pending: Map<string, Exchange>;
  readonly queue: string[];
  queuedBytes: number;
  dropped: number;
  /** stderr lines the process may still send to the sink now (refilled over time), and those it lost. */
  stderrTokens: number;
  stderrRefilledAt: number;
  stderrDropped: number;
  stream: PassThrough | undefined;
  inFlight: number;
  idleTimer: NodeJS.Timeout | undefined;
  killTimer: NodeJS.Timeout | undefined;
  /** Ends the process when its session's absolute lifetime does (set at bind). */
  expiryTimer: NodeJS.Timeout | undefined;
  readonly finished: Promise<void>;
  finish(): void;
}

/** A principal's modern process: `proc` is set once it is running. */
interface PrincipalSlot {
  /** The credentialTag of the values it was started with. */
  readonly credentialTag: string;
  readonly ready: Promise<BridgedProcess>;
  proc: BridgedProcess | undefined;
}

/** A process's environment for one principal, as of one vault read. */
interface ProcessEnvironment {
  readonly env: Record<string, string>;
  readonly secrets: readonly string[];
  readonly credentialTag: string;
}

interface CredentialRead {
  /** Whose (principalKey). */
  readonly key: string;
  overtaken: boolean;
}

interface EnvironmentPlan {
  readonly literals: ReadonlyArray<readonly [string, string]>;
  /** [variable, vault entry]. */
  readonly references: ReadonlyArray<readonly [string, string]>;
  readonly entries: readonly string[];
}

export function createStdioUpstreamClient(
  upstream: StdioUpstreamConfig,
  options: StdioUpstreamOptions = {},
): UpstreamClient {
  const settings = checkOptions(options);
  const plan = planEnvironment(upstream, options.vault !== undefined);
  const versions = stdioVersions(upstream);
  const servesModern = options.modern === "per-principal";
  /** Never leaves the process: it only tells one set of credential values from another. */
  const credentialTagKey = randomBytes(32);
  const distinctUid = options.runAs === "distinct-uid";
  const uidRange = distinctUid ? checkUidRange(options.uidRange) : undefined;
  if (options.workRoot === undefined) removeStaleWorkRoots(tmpdir());
  const workRoot = resolve(options.workRoot ?? join(tmpdir(), `${DEFAULT_WORK_ROOT_PREFIX}${process.pid}`));
  // Children of other uids must traverse the root to reach their own directory, never list it.
  prepareWorkRoot(workRoot, distinctUid ? 0o711 : 0o700, distinctUid);

  const sessions = new Map<string, BridgedProcess>();
  /** Each principal's modern process, running or starting, by principal key. */
  const principals = new Map<string, PrincipalSlot>();
  /** Per principal key: the last turn to read the vault and decide on it (principalProcess). */
  const deciding = new Map<string, Promise<void>>();
  /**
   * Vault reads whose process `credentialsChanged` cannot reach yet (not in `live`, nor a principal's
   * slot): a change of their principal's credentials heard meanwhile marks them, as what they read may
   * be the replaced or removed value.
   */
  const reading = new Set<CredentialRead>();
  const live = new Set<BridgedProcess>();
  const perPrincipal = new Map<string, number>();
  const perTenant = new Map<string, number>();
  const maxPerTenant = checkTenantCap(options.maxProcessesPerTenant);
  let reserved = 0;
  let uidCursor = uidRange?.[0] ?? 0;
  let closed = false;
  let closing: Promise<void> | undefined;
  /** Resyncs heard so far (notices may have been lost each time). */
  let resyncs = 0;

  const emit = (event: StdioProcessEvent): void => {
    try {
      options.onEvent?.(event);
    } catch {
      // An observer's failure must not change what happens to a process.
    }
  };

  /** A cap slot, released exactly once whatever path the start takes. */
  function reserve(principal: Principal): () => void {
    const key = principalKey(principal);
    const tenant = tenantKey(principal);
    if (reserved >= settings.maxProcesses) {
      throw new GateError("ERR_OVERLOADED", "stdio upstream at capacity", { detail: "stdio-max-processes" });
    }
    const mine = perPrincipal.get(key) ?? 0;
    if (mine >= settings.maxProcessesPerPrincipal) {
      throw new GateError("ERR_CONNECTION_LIMIT", "too many stdio processes", {
        detail: "stdio-max-processes-per-principal",
      });
    }
    const tenants = perTenant.get(tenant) ?? 0;
    if (maxPerTenant !== undefined && tenants >= maxPerTenant) {
      throw new GateError("ERR_CONNECTION_LIMIT", "too many stdio processes", {
        detail: "stdio-max-processes-per-tenant",
      });
    }
    reserved++;
    perPrincipal.set(key, mine + 1);
    perTenant.set(tenant, tenants + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      reserved--;
      decrement(perPrincipal, key);
      decrement(perTenant, tenant);
    };
  }

  async function environmentFor(principal: Principal): Promise<ProcessEnvironment> {
    const env: Record<string, string> = { PATH: DEFAULT_PATH, LANG: "C.UTF-8" };
    for (const [name, value] of plan.literals) env[name] = value;
    const secrets: string[] = [];
    if (plan.entries.length > 0) {
      // Nothing in the request names whose entries are read: the owner is the verified principal.
      const vault = options.vault as Vault;
      const { values, missing } = await vault.reveal(ownerScope(principal), plan.entries);
      const [first] = missing;
      if (first !== undefined) {
        throw new GateError("ERR_CREDENTIAL_REQUIRED", "credential required", {
          credential: first,
          detail: "stdio-env",
        });
      }
      for (const [name, entry] of plan.references) {
        const value = values.get(entry);
        if (value === undefined) {
          throw new GateError("ERR_INTERNAL", "vault answered without an entry it did not report missing");
        }
        env[name] = value;
        if (value.length >= MIN_SCRUBBED_LENGTH) {
          // Also as servers commonly print it: inside a JSON string, or percent-encoded in a URL.
          secrets.push(value, JSON.stringify(value).slice(1, -1), encodeURIComponent(value));
        }
      }
    }
    // Longest first, so a value containing another is redacted whole.
    secrets.sort((a, b) => b.length - a.length);
    const tag = createHmac("sha256", credentialTagKey);
    for (const [name] of plan.references) tag.update(JSON.stringify([name, env[name]]));
    return { env, secrets: [...new Set(secrets)], credentialTag: tag.digest("base64url") };
  }

  async function allocateUid(): Promise<number> {
    const [min, max] = uidRange as readonly [number, number];
    // A uid some process already has (a survivor of an earlier gateway, or an account's process) is
    // skipped, never killed: only processes the bridge started are ever swept.
    const taken = await uidsOfRunningProcesses();
    const size = max - min + 1;
    for (let step = 0; step < size; step++) {
      const candidate = min + ((uidCursor - min + step) % size);
      if (uidsInUse.has(candidate) || taken.has(candidate)) continue;
      uidsInUse.add(candidate);
      uidCursor = candidate + 1 > max ? min : candidate + 1;
      // Files the uid owns from before this bridge knew it (a gateway that crashed, or was killed,
      // never cleaned up after its processes): no process has the uid, so none can race this. A uid
      // that cannot be cleaned stays held, never handed out.
      if (await removeFilesOfUid(candidate)) return candidate;
    }
    throw new GateError("ERR_OVERLOADED", "no free uid for a stdio process", {
      detail: "stdio-uid-range-full",
    });
  }

  async function makeProcessDirectory(uid: number | undefined): Promise<string> {
    const dir = join(workRoot, randomBytes(16).toString("hex"));
    await mkdir(dir, { mode: 0o700 });
    try {
      for (const sub of ["home", "tmp", "work"]) {
        await mkdir(join(dir, sub), { mode: 0o700 });
        // mkdir's mode passes through the umask; the mode is the point here, so it is set outright.
        await chmod(join(dir, sub), 0o700);
        if (uid !== undefined) await chown(join(dir, sub), uid, uid);
      }
      await chmod(dir, 0o700);
      if (uid !== undefined) await chown(dir, uid, uid);
    } catch (error) {
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      throw error;
    }
    return dir;
  }

  async function launch(
    principal: Principal,
    release: () => void,
    environment: ProcessEnvironment,
    kind: BridgedProcess["kind"],
    resyncsAtStart: number,
  ): Promise<BridgedProcess> {
    const { secrets, credentialTag } = environment;
    const env = { ...environment.env };
    const uid = distinctUid ? await allocateUid() : undefined;
    let dir: string;
    try {
      dir = await makeProcessDirectory(uid);
    } catch (cause) {
      if (uid !== undefined) uidsInUse.delete(uid);
      throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio process could not be prepared", {
        detail: "stdio-directory",
        cause,
      });
    }
    const tmp = join(dir, "tmp");
    Object.assign(env, { HOME: join(dir, "home"), TMPDIR: tmp, TMP: tmp, TEMP: tmp });
    if (closed) {
      // close() began while this start awaited: it has already ended every process it knew of, and
      // from here to `live.add` nothing awaits, so no process can start behind its back.
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      if (uid !== undefined) uidsInUse.delete(uid);
      throw new GateError("ERR_SHUTTING_DOWN", "stdio upstream closing");
    }

    let child: ChildProcess;
    try {
      child = spawn(upstream.command, [...upstream.args], {
        cwd: join(dir, "work"),
        env,
        stdio: ["pipe", "pipe", "pipe"],
        // Its own process group (setsid): ending the session signals whatever the server started too,
        // and a Ctrl+C aimed at the gateway's terminal does not reach it.
        detached: true,
        shell: false,
        windowsHide: true,
        ...(uid !== undefined ? { uid, gid: uid } : {}),
      });
    } catch (cause) {
      // spawn throws synchronously only on arguments it refuses (a NUL byte, a bad uid).
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      if (uid !== undefined) uidsInUse.delete(uid);
      throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio process could not be started", {
        detail: "stdio-spawn",
        cause,
      });
    }

    if (child.pid === undefined) {
      // Not started (ENOENT, EACCES): Node reports why on the next tick. Nothing runs, so everything
      // is given back before the caller hears of it.
      const [cause] = (await once(child, "error").catch((error: unknown) => [error])) as unknown[];
      child.stdin?.destroy();
      child.stdout?.destroy();
      child.stderr?.destroy();
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      if (uid !== undefined) uidsInUse.delete(uid);
      throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio process could not be started", {
        detail: "stdio-spawn",
        cause,
      });
    }

    let finish!: () => void;
    const finished = new Promise<void>((done) => {
      finish = done;
    });
    const proc: BridgedProcess = {
      kind,
      sessionId: mintId(),
      context: Object.freeze({ upstream: upstream.name, processRef: randomBytes(6).toString("hex") }),
      owner: principal,
      principalDigest: principalDigest(ownerScope(principal)),
      // A principal's modern process has no session: like the gateway's modern streams, every kill
      // switch and every re-check after lost notices ends it (its next request starts it afresh).
      binding: kind === "principal" ? SESSIONLESS_BINDING : undefined,
      resyncsAtStart,
      killSwitchBeforeBind: 0,
      sessionNoticeBeforeBind: false,
      dir,
      uid,
      secrets,
      credentialTag,
      server: undefined,
      nextId: 1,
      progress: new Map(),
      child,
      state: "starting",
      endReason: undefined,
      pending: new Map(),
      queue: [],
      queuedBytes: 0,
      dropped: 0,
      stderrTokens: STDERR_BURST_LINES,
      stderrRefilledAt: performance.now(),
      stderrDropped: 0,
      stream: undefined,
      inFlight: 0,
      idleTimer: undefined,
      killTimer: undefined,
      expiryTimer: undefined,
      finished,
      finish,
    };
    live.add(proc);
    attach(proc, release);
    emit({ type: "process.started", ...proc.context, pid: child.pid });
    return proc;
  }

  function attach(proc: BridgedProcess, release: () => void): void {
    const { child } = proc;
    let finalized = false;
    const finalize = (): void => {
      if (finalized) return;
      finalized = true;
      void cleanUp(proc, release);
    };
    child.stdin?.on("error", () => undefined);
    const readLine = lineReader(
      settings.maxMessageBytes,
      (line) => onServerLine(proc, line),
      () => {
        misbehaved(proc);
      },
    );
    child.stdout?.on("data", (chunk: Buffer) => {
      if (!finalized) readLine(chunk);
    });
    child.stdout?.on("error", () => undefined);
    const readStderr = stderrReader(MAX_STDERR_LINE, (text, truncated) =>
      onStderrLine(proc, text, truncated),
    );
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", readStderr.push);
    child.stderr?.on("end", readStderr.flush);
    child.stderr?.on("error", () => undefined);
    // A started child's `error` is a failed kill or write: its `exit` still decides its end.
    child.on("error", () => undefined);
    child.once("exit", () => {
      proc.state = "exited";
      forget(proc);
      clearTimeout(proc.killTimer);
      // The last answers may still be in the pipe: read them, but not for longer than a moment (a
      // grandchild holding the pipe open would otherwise keep the session's resources forever).
      const drained = setTimeout(finalize, DRAIN_AFTER_EXIT_MS);
      child.once("close", () => {
        clearTimeout(drained);
        finalize();
      });
    });
  }

  async function cleanUp(proc: BridgedProcess, release: () => void): Promise<void> {
    const { child } = proc;
    forget(proc);
    clearTimeout(proc.idleTimer);
    clearTimeout(proc.killTimer);
    clearTimeout(proc.expiryTimer);
    const gone = new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio process ended", {
      detail: `stdio-process-ended:${proc.endReason ?? "exited"}`,
    });
    for (const exchange of new Set(proc.pending.values())) settle(proc, exchange, gone);
    endStream(proc);
    proc.queue.length = 0;
    child.stdin?.destroy();
    child.stdout?.destroy();
    child.stderr?.destroy();
    reportDroppedStderr(proc);
    // Survivors first: one still running could write into the directory while it is removed.
    // Then what it left in the shared writable places (/tmp, /dev/shm, ...): the next process given
    // this uid, likely another principal's, could otherwise read it as its own.
    const swept =
      proc.uid === undefined ? true : (await sweepUid(proc.uid)) && (await removeFilesOfUid(proc.uid));
    await rm(proc.dir, { recursive: true, force: true }).catch(() => undefined);
    if (proc.uid !== undefined) {
      if (swept) uidsInUse.delete(proc.uid);
      else emit({ type: "uid.quarantined", ...proc.context, uid: proc.uid });
    }
    release();
    live.delete(proc);
    emit({
      type: "process.ended",
      ...proc.context,
      reason: proc.endReason ?? "exited",
      exitCode: child.exitCode,
      signal: child.signalCode,
    });
    proc.finish();
  }

  /** A process that is ending is reachable by nobody: its session id and its principal forget it. */
  function forget(proc: BridgedProcess): void {
    sessions.delete(proc.sessionId);
    if (proc.kind !== "principal") return;
    const key = principalKey(proc.owner);
    if (principals.get(key)?.proc === proc) principals.delete(key);
  }

  /** Ends a process: its id stops answering now; SIGTERM to its group, SIGKILL after the grace. */
  function terminate(proc: BridgedProcess, reason: StdioEndReason): void {
    forget(proc);
    if (proc.state === "ending" || proc.state === "exited") return;
    proc.state = "ending";
    proc.endReason ??= reason;
    clearTimeout(proc.idleTimer);
    clearTimeout(proc.expiryTimer);
    endStream(proc);
    // MCP lifecycle (stdio shutdown): close the server's input first; the signals follow.
    proc.child.stdin?.end();
    signalGroup(proc.child, "SIGTERM");
    proc.killTimer = setTimeout(() => signalGroup(proc.child, "SIGKILL"), settings.killGraceMs);
    proc.killTimer.unref();
  }

  function misbehaved(proc: BridgedProcess): void {
    terminate(proc, "misbehaved");
  }

  function onServerLine(proc: BridgedProcess, line: Buffer): void {
    // Once the bridge has ended the process nobody waits for its output; a process that exits by
    // itself still has its last lines read (a final answer may follow the exit in the pipe).
    if (proc.endReason !== undefined) return;
    let text: string;
    let value: unknown;
    try {
      text = UTF8.decode(line).replace(/\r$/, "");
      if (text.trim() === "") return;
      value = JSON.parse(text);
    } catch {
      // stdio transport: the server MUST NOT write anything to stdout that is not an MCP message.
      misbehaved(proc);
      return;
    }
    const messages = Array.isArray(value) ? value : [value];
    for (const message of messages) {
      if (proc.endReason !== undefined) return;
      if (typeof message !== "object" || message === null || Array.isArray(message)) {
        misbehaved(proc);
        return;
      }
      route(proc, message as Record<string, unknown>, Array.isArray(value) ? JSON.stringify(message) : text);
    }
  }

  function route(proc: BridgedProcess, message: Record<string, unknown>, json: string): void {
    const isResponse =
      !Object.hasOwn(message, "method") &&
      (Object.hasOwn(message, "result") || Object.hasOwn(message, "error"));
    if (isResponse) {
      const key = idKey(message["id"]);
      const exchange = key === undefined ? undefined : proc.pending.get(key);
      if (key !== undefined && exchange !== undefined) {
        proc.pending.delete(key);
        exchange.answers.set(key, json);
        if (exchange.answers.size === exchange.keys.length) {
          const parts = exchange.keys.map((k) => exchange.answers.get(k) as string);
          exchange.settled = true;
          exchange.resolve(exchange.batch ? `[${parts.join(",")}]` : (parts[0] as string));
        }
      }
      // A response nobody waits for (its POST was aborted, or an id the client never sent) has no
      // reader: Streamable HTTP forbids responses on the GET stream.
      return;
    }
    if (typeof message["method"] !== "string") {
      misbehaved(proc);
      return;
    }
    if (proc.kind === "principal") {
      // A modern caller has no GET stream and the bridge declared no client capabilities: a server
      // request is answered here (else the server would wait for ever), its notifications dropped.
      if (!Object.hasOwn(message, "id")) {
        // Progress of a request that asked for it reaches that request's answer; the rest is dropped.
        const params = message["params"];
        if (message["method"] === "notifications/progress" && typeof params === "object" && params !== null) {
          const token = idKey((params as Record<string, unknown>)["progressToken"]);
          if (token !== undefined) proc.progress.get(token)?.(params as Record<string, unknown>);
        }
        return;
      }
      // The answer waits in the gateway until the server reads it: a server that keeps asking without
      // reading its input would grow that backlog, in memory all principals share, without end.
      if ((proc.child.stdin?.writableLength ?? 0) > MAX_INPUT_BACKLOG_BYTES) {
        misbehaved(proc);
        return;
      }
      write(proc, [answerServerRequest(message)]);
      return;
    }
    deliver(proc, json);
  }

  function deliver(proc: BridgedProcess, json: string): void {
    const stream = proc.stream;
    if (stream !== undefined && proc.queue.length === 0 && !stream.writableNeedDrain) {
      stream.write(sseEvent(json));
      return;
    }
    proc.queue.push(json);
    proc.queuedBytes += json.length;
    while (proc.queue.length > settings.maxQueuedMessages || proc.queuedBytes > MAX_QUEUED_BYTES) {
      const oldest = proc.queue.shift() as string;
      proc.queuedBytes -= oldest.length;
      proc.dropped++;
      emit({ type: "message.dropped", ...proc.context, dropped: proc.dropped });
    }
  }

  function flush(proc: BridgedProcess): void {
    const stream = proc.stream;
    while (stream !== undefined && proc.queue.length > 0 && !stream.writableNeedDrain) {
      const next = proc.queue.shift() as string;
      proc.queuedBytes -= next.length;
      stream.write(sseEvent(next));
    }
  }

  function endStream(proc: BridgedProcess): void {
    const stream = proc.stream;
    if (stream === undefined) return;
    proc.stream = undefined;
    stream.end();
  }

  function onStderrLine(proc: BridgedProcess, text: string, truncated: boolean): void {
    if (options.onStderr === undefined) return;
    // The sink is the gateway's log, shared by every principal: a process that writes stderr as fast
    // as it can gets a bounded rate of lines into it (its own session's activity is not slowed), and
    // how many it lost is said once lines get through again.
    const now = performance.now();
    proc.stderrTokens = Math.min(
      STDERR_BURST_LINES,
      proc.stderrTokens + ((now - proc.stderrRefilledAt) / 1000) * STDERR_LINES_PER_SECOND,
    );
    proc.stderrRefilledAt = now;
    if (proc.stderrTokens < 1) {
      proc.stderrDropped++;
      return;
    }
    proc.stderrTokens--;
    reportDroppedStderr(proc);
    toStderrSink(proc, scrub(text, proc.secrets, truncated));
  }

  function reportDroppedStderr(proc: BridgedProcess): void {
    if (proc.stderrDropped === 0) return;
    toStderrSink(proc, `[${proc.stderrDropped} stderr lines dropped]`);
    proc.stderrDropped = 0;
  }

  function toStderrSink(proc: BridgedProcess, line: string): void {
    try {
      options.onStderr?.(line, proc.context);
    } catch {
      // The sink's failure is the sink's: the process and its session carry on.
    }
  }

  /** Counts as activity: restarts the idle clock unless something still keeps the process busy. */
  function touch(proc: BridgedProcess): void {
    if (proc.state !== "running") return;
    if (proc.inFlight > 0 || proc.stream !== undefined) return;
    if (proc.idleTimer === undefined) {
      proc.idleTimer = setTimeout(() => {
        // A request in flight or an open stream is activity; the clock restarts when they end.
        if (proc.inFlight === 0 && proc.stream === undefined) terminate(proc, "idle");
      }, settings.idleTimeoutMs);
      proc.idleTimer.unref();
    } else {
      proc.idleTimer.refresh();
    }
  }

  function expect(proc: BridgedProcess, keys: string[], batch: boolean): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const exchange: Exchange = { keys, answers: new Map(), batch, settled: false, resolve, reject };
      for (const key of keys) proc.pending.set(key, exchange);
    });
  }

  function settle(proc: BridgedProcess, exchange: Exchange, error: unknown): void {
    for (const key of exchange.keys) {
      if (proc.pending.get(key) === exchange) proc.pending.delete(key);
    }
    if (exchange.settled) return;
    exchange.settled = true;
    exchange.reject(error);
  }

  function write(proc: BridgedProcess, messages: readonly unknown[]): void {
    // stdio transport: one message per line, no embedded newline (JSON.stringify escapes them all).
    // A batch is written as its elements: answers are matched by id whatever order they come in.
    const stdin = proc.child.stdin;
    if (stdin === null || stdin.destroyed || messages.length === 0) return;
    stdin.write(messages.map((message) => `${JSON.stringify(message)}\n`).join(""));
  }

  /**
   * A server that does not read its input (blocked in a long call, or hostile) would otherwise have
   * every message a client sends kept in the gateway's memory, which all principals share: past the
   * bound the request is refused, unwritten, and the session lives on (the server may catch up).
   */
  function checkInputRoom(proc: BridgedProcess, body: Buffer | undefined): void {
    const waiting = proc.child.stdin?.writableLength ?? 0;
    if (waiting + (body?.length ?? 0) > MAX_INPUT_BACKLOG_BYTES) {
      throw new GateError("ERR_OVERLOADED", "stdio server is not reading its input", {
        detail: "stdio-input-backlog",
      });
    }
  }

  /** The process for `sessionId` if it exists and belongs to `principal`; else undefined (404). */
  function owned(sessionId: string, principal: Principal): BridgedProcess | undefined {
    const proc = sessions.get(sessionId);
    if (proc === undefined || proc.state !== "running") return undefined;
    // A foreign caller gets exactly what an unknown id gets (DESIGN invariant 3).
    return samePrincipal(proc.owner, principal) ? proc : undefined;
  }

  /** A cap slot and a started process for `principal`, or the reason there is none. */
  async function startProcess(
    principal: Principal,
    environment: ProcessEnvironment,
    kind: BridgedProcess["kind"],
    resyncsAtStart: number,
  ): Promise<BridgedProcess> {
    const release = reserve(principal);
    try {
      return await launch(principal, release, environment, kind, resyncsAtStart);
    } catch (error) {
      release();
      throw error;
    }
  }

  /**
   * Writes the `initialize` a new process must answer first and waits for its answer, at most the
   * start timeout. A process that does not answer, or ends meanwhile, is ended and the caller gets
   * ERR_UPSTREAM_UNAVAILABLE; the answer itself (a result or an error) is the caller's to judge.
   */
  async function awaitInitialized(proc: BridgedProcess, message: unknown, id: JsonRpcId): Promise<string> {
    const answer = expect(proc, [idKey(id) as string], false);
    write(proc, [message]);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio process did not answer initialize")),
        settings.startTimeoutMs,
      );
    });
    let text: string;
    try {
      text = await Promise.race([answer, timeout]);
    } catch (error) {
      const timedOut = proc.state === "starting";
      terminate(proc, timedOut ? "start-timeout" : "start-failed");
      for (const exchange of new Set(proc.pending.values())) settle(proc, exchange, error);
      throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio process did not start", {
        detail: timedOut ? "stdio-start-timeout" : "stdio-start-failed",
        cause: error,
      });
    } finally {
      clearTimeout(timer);
    }
    if (proc.state !== "starting") {
      throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio process ended while starting", {
        detail: "stdio-start-failed",
      });
    }
    return text;
  }

  async function initialize(principal: Principal, body: Buffer | undefined): Promise<UpstreamResponse> {
    const parsed = parseBody(body);
    const [message] = parsed.raw;
    const [first] = parsed.payload.messages;
    if (parsed.payload.batch || first?.kind !== "request" || first.method !== "initialize") {
      return sessionRequired();
    }
    const resyncsAtStart = resyncs;
    // Watched until the process is in `live`, where a later change reaches it.
    const read: CredentialRead = { key: principalKey(principal), overtaken: false };
    reading.add(read);
    let proc: BridgedProcess;
    try {
      proc = await startProcess(principal, await environmentFor(principal), "session", resyncsAtStart);
    } finally {
      reading.delete(read);
    }
    if (read.overtaken) {
      // Its environment may hold a value written over or removed since: a session must not keep it.
      terminate(proc, "credentials-changed");
      throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio process ended while starting", {
        detail: "stdio-start-failed",
      });
    }
    const text = await awaitInitialized(proc, message, first.id);
    if (!Object.hasOwn(JSON.parse(text) as object, "result")) {
      // The server refused to initialize: it holds no session, so it is ended and no id is minted;
      // its answer is relayed as it is.
      terminate(proc, "initialize-refused");
      return jsonAnswer(200, text);
    }
    proc.state = "running";
    sessions.set(proc.sessionId, proc);
    touch(proc);
    return jsonAnswer(200, text, { [SESSION_HEADER]: proc.sessionId });
  }

  async function post(proc: BridgedProcess, request: UpstreamRequest): Promise<UpstreamResponse> {
    const parsed = parseBody(request.body);
    checkInputRoom(proc, request.body);
    const ids: JsonRpcId[] = [];
    for (const message of parsed.payload.messages) {
      if (message.kind !== "request") continue;
      if (proc.pending.has(idKey(message.id) as string)) return duplicateId(message.id);
      ids.push(message.id);
    }
    if (ids.length === 0) {
      write(proc, parsed.raw);
      touch(proc);
      return emptyAnswer(202);
    }
    // An abort is the caller leaving, not a cancellation (2025-11-25 transports): the server is not
    // told, and its late answer is dropped.
    const text = await exchange(proc, parsed.raw, ids, parsed.payload.batch, request.signal, false);
    return jsonAnswer(200, text);
  }

  /**
   * Writes `messages` and waits for the answers to `ids` (joined as a batch answer when `batch`),
   * at most the request timeout. Without that bound, a request the server never answers would keep
   * the process busy (so never idle) and hold its cap slot for good; the server is then told the
   * request is cancelled. `cancelOnAbort`: the caller leaving cancels the request too.
   */
  async function exchange(
    proc: BridgedProcess,
    messages: readonly unknown[],
    ids: readonly JsonRpcId[],
    batch: boolean,
    signal: AbortSignal | undefined,
    cancelOnAbort: boolean,
  ): Promise<string> {
    if (cancelOnAbort && signal?.aborted) {
      // Cancelled before it was written (the caller left while the process started): the server
      // never gets it, rather than a cancellation for an id it has not seen followed by the request.
      throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "request aborted", { detail: "aborted" });
    }
    const keys = ids.map((id) => idKey(id) as string);
    const answer = expect(proc, keys, batch);
    const awaited = proc.pending.get(keys[0] as string) as Exchange;
    const cancelUnanswered = (reason: string): void => {
      const unanswered = ids.filter((id) => proc.pending.get(idKey(id) as string) === awaited);
      if (proc.state !== "running" || unanswered.length === 0) return;
      write(
        proc,
        unanswered.map((requestId) => ({
          jsonrpc: "2.0",
          method: "notifications/cancelled",
          params: { requestId, reason },
        })),
      );
    };
    const onAbort = (): void => {
      if (cancelOnAbort) cancelUnanswered("client left");
      settle(
        proc,
        awaited,
        new GateError("ERR_UPSTREAM_UNAVAILABLE", "request aborted", { detail: "aborted" }),
      );
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) onAbort();
    const timer = setTimeout(() => {
      cancelUnanswered("timed out");
      settle(
        proc,
        awaited,
        new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio server did not answer in time", {
          detail: "stdio-request-timeout",
        }),
      );
    }, settings.requestTimeoutMs);
    proc.inFlight++;
    write(proc, messages);
    try {
      return await answer;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      proc.inFlight--;
      touch(proc);
    }
  }

  /**
   * The principal's modern process, started (and initialized by the bridge) if it has none. The
   * credentials are read on every request, as header injection reads them: a process started with
   * values the vault no longer holds (replaced, or deleted) is ended, never used again.
   *
   * One principal's vault reads, and what is decided on each, take turns in arrival order. Run side
   * by side, a read answered late (taken before a rotation or a deletion that a later request has
   * already acted on) would end the process holding the current values and start one with the old
   * ones, or start one holding an entry after its deletion was seen, which then lives until idle.
   */
  async function principalProcess(principal: Principal): Promise<BridgedProcess> {
    const key = principalKey(principal);
    const previous = deciding.get(key);
    let done!: () => void;
    const turn = new Promise<void>((resolve) => {
      done = resolve;
    });
    deciding.set(key, turn);
    let slot: PrincipalSlot;
    try {
      await previous;
      slot = await principalSlot(principal, key);
    } finally {
      done();
      if (deciding.get(key) === turn) deciding.delete(key);
    }
    const proc = await slot.ready;
    if (proc.state !== "running") {
      // Ended since it was chosen (a later request saw its credentials change): never written to.
      throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "stdio process ended", {
        detail: "stdio-process-ended",
      });
    }
    return proc;
  }

  /** On the principal's turn: its slot for the values the vault holds now, started if need be. */
  async function principalSlot(principal: Principal, key: string): Promise<PrincipalSlot> {
    let environment: ProcessEnvironment;
    try {
      environment = await currentEnvironment(principal, key);
    } catch (error) {
      if (error instanceof GateError && error.code === "ERR_CREDENTIAL_REQUIRED") {
        const stale = principals.get(key);
        principals.delete(key);
        void stale?.ready.then(
          (proc) => terminate(proc, "credentials-changed"),
          () => undefined,
        );
      }
      throw error;
    }
    const current = principals.get(key);
    if (current !== undefined && current.credentialTag === environment.credentialTag) return current;
    if (current !== undefined) {
      principals.delete(key);
      void current.ready.then(
        (proc) => terminate(proc, "credentials-changed"),
        () => undefined,
      );
    }
    const slot: PrincipalSlot = {
      credentialTag: environment.credentialTag,
      // Never bound, so never re-checked at bind: a resync ends it whatever its state.
      ready: startPrincipalProcess(principal, environment, resyncs),
      proc: undefined,
    };
    principals.set(key, slot);
    slot.ready.then(
      (proc) => {
        if (principals.get(key) !== slot) {
          // Dropped while it started (its credentials changed or were removed): nobody may reach it,
          // and it must not keep the old values until its idle timeout.
          terminate(proc, "credentials-changed");
          return;
        }
        slot.proc = proc;
        // Ended before it was recorded (a crash right after initialize): nobody may reach it.
        if (proc.state !== "running") principals.delete(key);
      },
      () => {
        if (principals.get(key) === slot) principals.delete(key);
      },
    );
    return slot;
  }

  /**
   * The principal's environment from a read no credential change overtook: one that did may hold the
   * value just replaced or removed, so it is read again. (Once the slot is recorded, a change drops it.)
   */
  async function currentEnvironment(principal: Principal, key: string): Promise<ProcessEnvironment> {
    for (;;) {
      const read: CredentialRead = { key, overtaken: false };
      reading.add(read);
      try {
        const environment = await environmentFor(principal);
        if (!read.overtaken) return environment;
      } finally {
        reading.delete(read);
      }
    }
  }

  async function startPrincipalProcess(
    principal: Principal,
    environment: ProcessEnvironment,
    resyncsAtStart: number,
  ): Promise<BridgedProcess> {
    const proc = await startProcess(principal, environment, "principal", resyncsAtStart);
    const id = proc.nextId++;
    const text = await awaitInitialized(
      proc,
      bridgeInitialize(id, versions.initializeWith, BRIDGE_VERSION),
      id,
    );
    try {
      proc.server = readServerDescription(text, versions.legacy);
    } catch (error) {
      terminate(proc, "initialize-refused");
      throw error;
    }
    proc.state = "running";
    // MCP lifecycle: after the answer, the client confirms; only then may requests follow.
    write(proc, [INITIALIZED_NOTIFICATION]);
    touch(proc);
    return proc;
  }

  /**
   * A modern (2026-07-28) request: self-contained, served by the caller's own process. Notifications
   * and responses are accepted and dropped: their ids and tokens name requests of the client's, which
   * the server never saw under those ids.
   */
  async function serveModern(principal: Principal, request: UpstreamRequest): Promise<UpstreamResponse> {
    if (request.method !== "POST") return emptyAnswer(405);
    const parsed = parseBody(request.body);
    const [message] = parsed.payload.messages;
    const [raw] = parsed.raw;
    if (parsed.payload.batch || message === undefined) {
      return jsonAnswer(400, errorBody(null, -32600, "Invalid Request: one message per request"));
    }
    if (message.kind !== "request") return emptyAnswer(202);
    if (message.method === "initialize") {
      // 2026-07-28 has no initialize; the bridge made the only one a principal's server gets.
      return jsonAnswer(200, errorBody(message.id, -32601, "Method not found"));
    }
    const proc = await principalProcess(principal);
    // A throwaway principal never comes back: its process would only wait for the idle timeout.
    const done = (): void => {
      if (principal.kind === "anonymous") terminate(proc, "answered");
    };
    let streaming = false;
    try {
      if (message.method === "server/discover") {
        touch(proc);
        return jsonAnswer(
          200,
          discoverAnswer(message.id, proc.server as StdioServerDescription, versions.modern),
        );
      }
      checkInputRoom(proc, request.body);
      const id = proc.nextId++;
      const forwarded = serverRequest(raw as Record<string, unknown>, id);
      const clientToken = progressTokenOf(raw as Record<string, unknown>);
      if (clientToken !== undefined && acceptsEventStream(request.headers)) {
        streaming = true;
        return await answerWithProgress(proc, forwarded, id, message, clientToken, request.signal, done);
      }
      // 2026-07-28 cancellation: the client closing its response stream cancels the request.
      const text = await exchange(proc, [forwarded], [id], false, request.signal, true);
      return jsonAnswer(200, clientAnswer(text, message.id, message.method));
    } finally {
      if (!streaming) done();
    }
  }

  /**
   * A request that asked for progress: answered as JSON if the answer comes first, else as an SSE
   * stream from the first progress notification on, ending with the answer (2026-07-28 transports: a
   * request's answer may be a stream of related messages ending with its response). `done` runs once
   * the exchange is over, whichever way.
   */
  function answerWithProgress(
    proc: BridgedProcess,
    forwarded: Record<string, unknown>,
    id: number,
    message: { readonly id: JsonRpcId; readonly method: string },
    clientToken: string | number,
    signal: AbortSignal | undefined,
    done: () => void,
  ): Promise<UpstreamResponse> {
    const key = idKey(id) as string;
    return new Promise<UpstreamResponse>((resolve, reject) => {
      let stream: PassThrough | undefined;
      proc.progress.set(key, (params) => {
        if (stream === undefined) {
          stream = new PassThrough();
          // The gateway may drop the stream when its client leaves; nothing more is written then.
          stream.on("error", () => undefined);
          resolve(streamAnswer(stream));
        }
        // Progress is advisory: a reader that does not keep up loses some of it, never the answer.
        if (!stream.destroyed && !stream.writableNeedDrain) {
          stream.write(sseEvent(clientProgress(params, clientToken)));
        }
      });
      exchange(proc, [forwarded], [id], false, signal, true)
        .then(
          (text) => {
            const answer = clientAnswer(text, message.id, message.method);
            if (stream === undefined) resolve(jsonAnswer(200, answer));
            else if (!stream.destroyed) stream.end(sseEvent(answer));
          },
          (error: unknown) => {
            if (stream === undefined) reject(error);
            else if (!stream.destroyed) {
              // The status is written already: the failure is said the way a stream can say it.
              stream.end(
                sseEvent(errorBody(message.id, -32603, "Internal error: the server did not answer")),
              );
            }
          },
        )
        .finally(() => {
          proc.progress.delete(key);
          done();
        });
    });
  }

  function openStream(proc: BridgedProcess, signal: AbortSignal | undefined): UpstreamResponse {
    if (proc.stream !== undefined) {
      return jsonAnswer(409, errorBody(null, -32000, "Conflict: only one GET stream per session"));
    }
    const stream = new PassThrough();
    const detach = (): void => {
      if (proc.stream === stream) {
        proc.stream = undefined;
        touch(proc);
      }
      if (!stream.writableEnded) stream.end();
    };
    if (signal?.aborted) {
      stream.end();
      return streamAnswer(stream);
    }
    proc.stream = stream;
    clearTimeout(proc.idleTimer);
    proc.idleTimer = undefined;
    stream.on("drain", () => flush(proc));
    stream.once("close", detach);
    signal?.addEventListener("abort", detach, { once: true });
    flush(proc);
    return streamAnswer(stream);
  }

  /** Whether a notice names a process, as the gateway decides for its open streams. */
  function revokedBy(proc: BridgedProcess, notice: RevocationNotice): boolean {
    switch (notice.kind) {
      case "session":
        return proc.binding !== undefined && proc.binding.sessionDigest === notice.sessionDigest;
      case "principal":
        // Bound or not: a process still starting for a revoked principal must not start.
        return proc.principalDigest === notice.principalDigest;
      case "all": {
        // Not bound yet: its session may be newer than the kill switch; bindSession judges it.
        const binding = proc.binding;
        return (
          binding !== undefined &&
          (binding.killGeneration === null || binding.killGeneration < notice.generation)
        );
      }
    }
  }

  /**
   * A session's absolute timeout ends its process too: the session answers 404 from then on, so the
   * process could only hold its principal's credentials and a cap slot until the idle timeout.
   */
  function endAtExpiry(proc: BridgedProcess, deadline: number): void {
    // setTimeout holds at most 2^31-1 ms (about 24.8 days); a later deadline is re-armed then.
    const wait = Math.min(Math.max(deadline - Date.now(), 0), 2 ** 31 - 1);
    proc.expiryTimer = setTimeout(() => {
      if (Date.now() < deadline) endAtExpiry(proc, deadline);
      else terminate(proc, "expired");
    }, wait);
    proc.expiryTimer.unref();
  }

  /**
   * After notices may have been lost: the process lives on only if its session still resolves. A
   * check that keeps failing ends it (fail closed), as an open stream of the gateway ends.
   */
  function revalidate(proc: BridgedProcess): void {
    const check = proc.binding?.stillValid;
    if (check === null) {
      // No session to re-check (a principal's modern process): it ends; its next request starts afresh.
      terminate(proc, "revoked");
      return;
    }
    // Still starting: bindSession re-checks it once it knows the session.
    if (check === undefined || proc.state !== "running") return;
    const judge = async (): Promise<boolean> => {
      for (let attempt = 1; ; attempt++) {
        try {
          return (await check()) === true;
        } catch {
          if (attempt >= REVALIDATE_ATTEMPTS || proc.state !== "running") return false;
          await new Promise((done) => setTimeout(done, REVALIDATE_RETRY_MS * attempt));
        }
      }
    };
    void judge().then((valid) => {
      if (!valid) terminate(proc, "revoked");
    });
  }

  return {
    url: `stdio:${upstream.name}`,
    async request(request) {
      if (closed) throw new GateError("ERR_SHUTTING_DOWN", "stdio upstream closing");
      const principal = request.principal;
      if (principal === undefined) {
        // Every process acts for someone; a call without a principal is a wiring mistake, never a
        // request to act for nobody (or for whoever came before).
        throw new GateError("ERR_INTERNAL", "stdio upstream called without a principal", {
          detail: "stdio-no-principal",
        });
      }
      const version = headerValue(request.headers, VERSION_HEADER);
      if (version !== undefined && MODERN_VERSIONS.includes(version)) {
        if (servesModern) return serveModern(principal, request);
        return jsonAnswer(400, errorBody(null, -32022, "Unsupported protocol version"));
      }
      const sessionId = headerValue(request.headers, SESSION_HEADER);
      if (request.method === "POST" && sessionId === undefined) return initialize(principal, request.body);
      if (sessionId === undefined) return sessionRequired();
      const proc = owned(sessionId, principal);
      if (proc === undefined) return sessionNotFound();
      switch (request.method) {
        case "POST":
          return post(proc, request);
        case "GET":
          return openStream(proc, request.signal);
        case "DELETE":
          terminate(proc, "deleted");
          return emptyAnswer(204);
        default:
          return emptyAnswer(405);
      }
    },
    bindSession(upstreamSessionId: string, binding: UpstreamSessionBinding) {
      const proc = sessions.get(upstreamSessionId);
      // Never replaced: a second binding could move a process out of a revocation's reach.
      if (proc === undefined || proc.state !== "running" || proc.binding !== undefined) return;
      proc.binding = {
        sessionDigest: binding.sessionDigest,
        killGeneration: binding.killGeneration,
        stillValid: binding.stillValid,
      };
      // A kill switch heard while the session was being recorded, newer than the session.
      if (binding.killGeneration < proc.killSwitchBeforeBind) {
        terminate(proc, "revoked");
        return;
      }
      // Notices may have been lost, or missed it, while it could not be named: it is judged as a
      // resync would have.
      if (resyncs !== proc.resyncsAtStart || proc.sessionNoticeBeforeBind) revalidate(proc);
      endAtExpiry(proc, binding.expiresAt);
    },
    credentialsChanged(owner: OwnerScope, entry: string | null) {
      // Only processes whose environment holds the entry: its old value is in their memory for good.
      if (entry === null ? plan.entries.length === 0 : !plan.entries.includes(entry)) return;
      const key = principalKey(owner);
      for (const read of reading) if (read.key === key) read.overtaken = true;
      principals.delete(key);
      for (const proc of [...live]) {
        if (principalKey(proc.owner) === key) terminate(proc, "credentials-changed");
      }
    },
    applyRevocation(signal: RevocationSignal) {
      if (signal.kind === "resync") {
        resyncs++;
        for (const proc of [...live]) revalidate(proc);
        return;
      }
      for (const proc of [...live]) {
        if (revokedBy(proc, signal)) terminate(proc, "revoked");
        else if (signal.kind === "all" && proc.binding === undefined) {
          // Its initialize is in flight: its session, once recorded, may predate this kill switch.
          proc.killSwitchBeforeBind = Math.max(proc.killSwitchBeforeBind, signal.generation);
        } else if (signal.kind === "session" && proc.binding === undefined) {
          proc.sessionNoticeBeforeBind = true;
        }
      }
    },
    close() {
      closing ??= (async () => {
        closed = true;
        for (const proc of live) terminate(proc, "closed");
        // SIGKILL comes at the grace; the bound leaves room for the pipes and directories after it.
        await Promise.race([
          Promise.all([...live].map((proc) => proc.finished)),
          new Promise((done) => setTimeout(done, settings.killGraceMs + 5_000).unref()),
        ]);
        await rm(workRoot, { recursive: true, force: true }).catch(() => undefined);
      })();
      return closing;
    },
  };
}

interface CheckedOptions {
  readonly maxProcesses: number;
  readonly maxProcessesPerPrincipal: number;
  readonly startTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly killGraceMs: number;
  readonly maxMessageBytes: number;
  readonly maxQueuedMessages: number;
}

function checkOptions(options: StdioUpstreamOptions): CheckedOptions {
  const checked = { ...DEFAULTS } as { -readonly [K in keyof CheckedOptions]: number };
  for (const name of Object.keys(DEFAULTS) as (keyof CheckedOptions)[]) {
    const value = options[name];
    if (value === undefined) continue;
    if (!Number.isSafeInteger(value) || value < 1) throw invalidArgument(name, "must be a positive integer");
    checked[name] = value;
  }
  if (options.runAs !== undefined && options.runAs !== "gateway" && options.runAs !== "distinct-uid") {
    throw invalidArgument("runAs", 'must be "gateway" or "distinct-uid"');
  }
  if (options.runAs !== "distinct-uid" && options.uidRange !== undefined) {
    throw invalidArgument("uidRange", 'applies only with runAs "distinct-uid"');
  }
  return checked;
}

function checkUidRange(range: readonly [number, number] | undefined): readonly [number, number] {
  const getuid = process.getuid;
  if (getuid === undefined || getuid() !== 0) {
    throw new GateError(
      "ERR_CONFIG_INVALID",
      'runAs "distinct-uid" needs the gateway to run as root (it sets each child\'s uid)',
    );
  }
  const [min, max] = range ?? [];
  if (!Number.isSafeInteger(min) || !Number.isSafeInteger(max) || (min as number) < 1) {
    throw invalidArgument("uidRange", "must be two integers [min, max] with 1 <= min <= max < 2^31");
  }
  if ((max as number) < (min as number) || (max as number) >= 2 ** 31) {
    throw invalidArgument("uidRange", "must be two integers [min, max] with 1 <= min <= max < 2^31");
  }
  // A range that includes an account would run a stranger's server as that account.
  const accounts = accountUids();
  for (const uid of accounts) {
    if (uid >= (min as number) && uid <= (max as number)) {
      throw new GateError("ERR_CONFIG_INVALID", "uidRange includes the uid of an account in /etc/passwd");
    }
  }
  return [min as number, max as number];
}

function accountUids(): number[] {
  try {
    return readFileSync("/etc/passwd", "utf8")
      .split("\n")
      .map((line) => Number(line.split(":")[2]))
      .filter((uid) => Number.isSafeInteger(uid));
  } catch {
    return [];
  }
}

/**
 * The 2025 versions a principal's process may be initialized in (the upstream's `protocolVersions`,
 * else all the gateway serves), the newest of them asked for, and the modern ones answered for it.
 */
function stdioVersions(upstream: StdioUpstreamConfig): {
  legacy: readonly string[];
  initializeWith: string;
  modern: readonly string[];
} {
  const declared = upstream.protocolVersions;
  const legacy =
    declared === undefined ? LEGACY_VERSIONS : LEGACY_VERSIONS.filter((v) => declared.includes(v));
  const modern =
    declared === undefined ? MODERN_VERSIONS : MODERN_VERSIONS.filter((v) => declared.includes(v));
  const usable = legacy.length > 0 ? legacy : LEGACY_VERSIONS;
  return { legacy: usable, initializeWith: usable[usable.length - 1] as string, modern };
}

function planEnvironment(upstream: StdioUpstreamConfig, hasVault: boolean): EnvironmentPlan {
  const literals: [string, string][] = [];
  const references: [string, string][] = [];
  const entries: string[] = [];
  for (const [name, value] of Object.entries(upstream.env)) {
    const key = `upstreams["${upstream.name}"].env.${name}`;
    if (BRIDGE_ENVIRONMENT.has(name)) {
      throw new GateError("ERR_CONFIG_INVALID", `${key} is set by the gateway (the process's own directory)`);
    }
    const entry = environmentVaultReference(value);
    if (entry === undefined) {
      literals.push([name, value]);
      continue;
    }
    if (!VAULT_ENTRY_NAME.test(entry)) {
      throw new GateError(
        "ERR_CONFIG_INVALID",
        `${key} names a vault entry that is not 1-64 characters of a-z 0-9 _ starting with a letter`,
      );
    }
    if (!hasVault)
      throw new GateError("ERR_CONFIG_INVALID", `${key} names a vault entry but no vault is configured`);
    references.push([name, entry]);
    if (!entries.includes(entry)) entries.push(entry);
  }
  return { literals, references, entries };
}

/**
 * Removes default work roots that a gateway which is gone left behind (it crashed, or was killed): the
 * homes of its processes may hold what their servers wrote there, credentials included. Only a
 * directory of this user, not a symbolic link, named for a pid that no longer runs, and holding
 * nothing but process directories, is removed; anything else is left as it is.
 */
function removeStaleWorkRoots(parent: string): void {
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return;
  }
  for (const name of names) {
    const pid = Number(DEFAULT_WORK_ROOT.exec(name)?.[1]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || processExists(pid)) continue;
    const root = join(parent, name);
    try {
      const stat = lstatSync(root);
      if (!stat.isDirectory() || stat.uid !== process.getuid?.()) continue;
      if (!readdirSync(root).every((entry) => PROCESS_DIRECTORY_NAME.test(entry))) continue;
      rmSync(root, { recursive: true, force: true });
    } catch {
      // Gone meanwhile, or not ours to remove: left as it is.
    }
  }
}

/** Whether a pid runs (EPERM: it does, as another user). */
function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/**
 * Creates the root (or adopts an existing one of ours) with `mode`. An existing path that is a
 * symbolic link, not a directory, or someone else's is refused: under a shared /tmp the default name
 * is predictable, and a directory planted there by another user must not hold children's homes.
 */
function prepareWorkRoot(root: string, mode: number, childrenTraverse: boolean): void {
  try {
    mkdirSync(dirname(root), { recursive: true, mode: 0o700 });
    try {
      mkdirSync(root, { mode });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const stat = lstatSync(root);
      if (!stat.isDirectory() || stat.uid !== process.getuid?.()) {
        throw new GateError(
          "ERR_CONFIG_INVALID",
          "workRoot exists and is not a directory of the gateway's user",
        );
      }
      // Adopted only if everything in it is a process directory a bridge made (left by an earlier
      // gateway with the same pid, or an operator's root after a crash): those are stale and go. A
      // root holding anything else is someone's data, and `close()` would remove it.
      const names = readdirSync(root);
      if (!names.every((name) => PROCESS_DIRECTORY_NAME.test(name))) {
        throw new GateError("ERR_CONFIG_INVALID", "workRoot exists and holds files the gateway did not make");
      }
      for (const name of names) rmSync(join(root, name), { recursive: true, force: true });
    }
    chmodSync(root, mode);
  } catch (error) {
    if (error instanceof GateError) throw error;
    throw new GateError("ERR_CONFIG_INVALID", "workRoot cannot be created", { cause: error });
  }
  if (childrenTraverse) {
    // Every ancestor must let other users through, or the children cannot reach their cwd.
    for (let at = dirname(root); ; at = dirname(at)) {
      if ((statSync(at).mode & 0o001) === 0) {
        throw new GateError(
          "ERR_CONFIG_INVALID",
          'workRoot is under a directory other users cannot enter (runAs "distinct-uid")',
        );
      }
      if (dirname(at) === at) break;
    }
  }
}

/** Sends `signal` to the child's process group while the child has not been reaped. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  // Before the exit is reaped the pid (and so the group id) cannot belong to anyone else; after it,
  // it could, so a reaped child's group is never signalled (survivors are swept by uid instead).
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    child.kill(signal);
  }
}

/** uids of every process on the host (Linux /proc); empty where /proc cannot be read. */
async function uidsOfRunningProcesses(): Promise<Set<number>> {
  const uids = new Set<number>();
  for (const { uids: own } of await processTable()) for (const uid of own) uids.add(uid);
  return uids;
}

async function processTable(): Promise<{ pid: number; uids: number[] }[]> {
  let entries: string[];
  try {
    entries = await readdir("/proc");
  } catch {
    return [];
  }
  const table: { pid: number; uids: number[] }[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let status: string;
    try {
      status = await readFile(`/proc/${entry}/status`, "utf8");
    } catch {
      continue;
    }
    // A zombie holds no files and cannot be killed; only its parent (or init) can reap it.
    if (/^State:\s+Z/m.test(status)) continue;
    const match = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status);
    if (match) table.push({ pid: Number(entry), uids: match.slice(1).map(Number) });
  }
  return table;
}

/**
 * Removes every file and directory `uid` owns under the shared writable roots, looking inside
 * world-writable directories of other owners too (a sibling may have made one). Runs once every process
 * of the uid is gone, so nothing of it can race the removal. Answers whether the uid is clean; if
 * not (a removal failed, or too much to walk), it must not be handed out again.
 */
async function removeFilesOfUid(uid: number): Promise<boolean> {
  const budget = { left: MAX_SHARED_ENTRIES_WALKED };
  let clean = true;
  for (const root of new Set([...SHARED_WRITABLE_ROOTS, tmpdir()])) {
    if (!(await removeOwnedUnder(root, uid, budget))) clean = false;
  }
  return clean;
}

async function removeOwnedUnder(dir: string, uid: number, budget: { left: number }): Promise<boolean> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return true;
  }
  let clean = true;
  for (const name of names) {
    if (--budget.left < 0) return false;
    const path = join(dir, name);
    let stat: Awaited<ReturnType<typeof lstat>>;
    try {
      stat = await lstat(path);
    } catch {
      continue;
    }
    if (stat.uid === uid) {
      // rm does not follow symbolic links: a link the process left is removed, never its target.
      await rm(path, { recursive: true, force: true }).catch(() => {
        clean = false;
      });
    } else if (stat.isDirectory() && (stat.mode & 0o002) !== 0) {
      if (!(await removeOwnedUnder(path, uid, budget))) clean = false;
    }
  }
  return clean;
}

/**
 * Kills every process left with `uid` (a grandchild that left the group with setsid, or ignored
 * SIGTERM). The uid was free when allocated, so each of them descends from the bridge's child.
 * Answers whether none is left; if some survive, the uid must not be handed out again.
 */
async function sweepUid(uid: number): Promise<boolean> {
  for (let round = 0; round < SWEEP_ROUNDS; round++) {
    const survivors = (await processTable()).filter((entry) => entry.uids.includes(uid));
    if (survivors.length === 0) return true;
    for (const { pid } of survivors) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // Gone between the listing and the signal.
      }
    }
    await new Promise((done) => setTimeout(done, SWEEP_PAUSE_MS));
  }
  return (await processTable()).every((entry) => !entry.uids.includes(uid));
}

// stdout must be UTF-8 JSON: a line that does not decode is misbehaviour, never silently replaced.
const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** Splits a byte stream into lines of at most `maxBytes`; a longer line calls `onOverflow` once. */
function lineReader(
  maxBytes: number,
  onLine: (line: Buffer) => void,
  onOverflow: () => void,
): (chunk: Buffer) => void {
  let parts: Buffer[] = [];
  let size = 0;
  let overflowed = false;
  return (chunk) => {
    let start = 0;
    while (!overflowed && start < chunk.length) {
      const newline = chunk.indexOf(0x0a, start);
      const end = newline === -1 ? chunk.length : newline;
      const piece = chunk.subarray(start, end);
      size += piece.length;
      if (size > maxBytes) {
        overflowed = true;
        parts = [];
        onOverflow();
        return;
      }
      if (newline === -1) {
        parts.push(piece);
        return;
      }
      const line = parts.length === 0 ? piece : Buffer.concat([...parts, piece]);
      parts = [];
      size = 0;
      onLine(line);
      start = newline + 1;
    }
  };
}

/** Splits text into lines of at most `maxChars`; the head of a longer line is emitted, the rest skipped. */
function stderrReader(
  maxChars: number,
  emit: (text: string, truncated: boolean) => void,
): { push(chunk: string): void; flush(): void } {
  let buffer = "";
  let skipping = false;
  return {
    push(chunk) {
      let rest = chunk;
      while (rest.length > 0) {
        const newline = rest.indexOf("\n");
        const piece = newline === -1 ? rest : rest.slice(0, newline);
        rest = newline === -1 ? "" : rest.slice(newline + 1);
        if (!skipping) {
          buffer += piece;
          if (buffer.length > maxChars) {
            emit(buffer.slice(0, maxChars), true);
            buffer = "";
            skipping = true;
          }
        }
        if (newline !== -1) {
          if (!skipping) emit(buffer, false);
          buffer = "";
          skipping = false;
        }
      }
    },
    flush() {
      if (!skipping && buffer.length > 0) emit(buffer, false);
      buffer = "";
    },
  };
}

/**
 * The line with every secret replaced. A truncated line also loses any ending that begins a secret,
 * so a value cut in half by the bound does not leak its first half.
 */
function scrub(text: string, secrets: readonly string[], truncated: boolean): string {
  let line = text.replace(/\r$/, "");
  for (const secret of secrets) line = line.split(secret).join(REDACTED);
  if (truncated) {
    for (const secret of secrets) {
      for (let length = Math.min(secret.length - 1, line.length); length > 0; length--) {
        if (line.endsWith(secret.slice(0, length))) {
          line = line.slice(0, line.length - length) + REDACTED;
          break;
        }
      }
    }
    line += " [truncated]";
  }
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the point is to replace them.
  return line.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, "\ufffd");
}

/** Responses are matched by id; 1 and "1" are different JSON-RPC ids. */
function idKey(id: unknown): string | undefined {
  if (typeof id === "string") return `s:${id}`;
  if (typeof id === "number") return `n:${id}`;
  return undefined;
}

function principalKey(principal: Pick<Principal, "issuer" | "tenant" | "subject">): string {
  return JSON.stringify([principal.issuer, principal.tenant, principal.subject]);
}

function tenantKey(principal: Principal): string {
  return JSON.stringify([principal.issuer, principal.tenant]);
}

/** One slot fewer under `key`; the key goes when none is left (the maps hold only live counts). */
function decrement(counts: Map<string, number>, key: string): void {
  const left = (counts.get(key) ?? 1) - 1;
  if (left === 0) counts.delete(key);
  else counts.set(key, left);
}

function checkTenantCap(value: number | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw invalidArgument("maxProcessesPerTenant", "must be a positive integer");
  }
  return value;
}

function headerValue(headers: Readonly<Record<string, string>>, name: string): string | undefined {
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() === name) return value;
  }
  return undefined;
}

/** The body checked as the gateway checks it, and its messages as values to re-serialize. */
function parseBody(body: Buffer | undefined): {
  payload: ReturnType<typeof parseJsonRpcBody>;
  raw: unknown[];
} {
  const bytes = body ?? Buffer.alloc(0);
  const payload = parseJsonRpcBody(bytes, { maxBatchSize: MAX_BATCH, allowBatch: true });
  const value: unknown = JSON.parse(bytes.toString("utf8"));
  return { payload, raw: Array.isArray(value) ? value : [value] };
}

/** Whether the client takes an SSE answer (it lists text/event-stream in Accept). */
function acceptsEventStream(headers: Readonly<Record<string, string>>): boolean {
  return /(^|,)\s*text\/event-stream\s*(;|,|$)/i.test(headerValue(headers, "accept") ?? "");
}

function sseEvent(json: string): string {
  return `data: ${json}\n\n`;
}

function errorBody(id: JsonRpcId | null, code: number, message: string): string {
  return JSON.stringify({ jsonrpc: "2.0", id, error: { code, message } });
}

function jsonAnswer(status: number, text: string, extra: Record<string, string> = {}): UpstreamResponse {
  const body = Buffer.from(text, "utf8");
  return {
    status,
    headers: { "content-type": "application/json", "content-length": String(body.length), ...extra },
    body: Readable.from([body], { objectMode: false }),
  };
}

function emptyAnswer(status: number): UpstreamResponse {
  return { status, headers: { "content-length": "0" }, body: Readable.from([], { objectMode: false }) };
}

function streamAnswer(stream: PassThrough): UpstreamResponse {
  return {
    status: 200,
    headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
    body: stream,
  };
}

/** As an HTTP server answers a session it does not have (the gateway turns it into "session not found"). */
function sessionNotFound(): UpstreamResponse {
  return jsonAnswer(404, errorBody(null, -32001, "Session not found"));
}

function sessionRequired(): UpstreamResponse {
  return jsonAnswer(400, errorBody(null, -32000, "Bad Request: Mcp-Session-Id header is required"));
}

function duplicateId(id: JsonRpcId): UpstreamResponse {
  return jsonAnswer(400, errorBody(id, -32600, "Invalid Request: a request with this id is in flight"));
}
