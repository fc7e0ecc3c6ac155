import { mintId } from "../crypto/ids.ts";
import { GateError, invalidArgument, isGateError } from "../errors.ts";
import { ownerScope, type Principal } from "../identity/principal.ts";
import { MAX_TTL_MS } from "../store/arguments.ts";
import type { Store } from "../store/contract.ts";
import {
  type CounterKey,
  counterKey,
  type IndexKey,
  type OwnerScope,
  ownedKey,
  ownerIndexKey,
  ownershipKey,
  ownershipKeyFromDigest,
  type RecordKey,
} from "../store/keys.ts";
import { checkLifetime, checkPrincipal, ownedBy, ownerFieldsOf, parseObject } from "./owner-fields.ts";

/**
 * Tasks owned by the principal that created them, for MCP server authors (issue 8; THREATS T1, T3).
 *
 * - `create` writes the task and its owner in one `claim` of `own/owned-task/<d>`: there is never a
 *   moment (or a crash) where a task exists without its owner, and a race for one id has exactly one
 *   winner on every backend.
 * - Every other call names the principal. A task owned by someone else is answered exactly as an id
 *   that never existed (`ERR_TASK_NOT_FOUND`, after the same single read), and so is a record whose
 *   owner cannot be read (fail closed).
 * - Updates are compare-and-set without a gap: revision n+1 is a record of its own, claimed (first
 *   writer wins), then a monotonic head counter moves to it. Two updates based on the same revision
 *   cannot both win, so none is lost silently; the loser re-reads and retries, and gives up with
 *   `ERR_TASK_CONFLICT` rather than overwrite. A superseded revision becomes a tombstone whose key
 *   stays taken, so no revision number is ever won twice; a crash mid-update leaves the previous
 *   state readable, never an ownerless or missing task.
 * - Results live under the owner's scope (`data/<tenant>/<issuer>/<subject>/owned-task-result/…`)
 *   and are returned only to the owner: never by task id alone.
 *
 * docs/decisions.md (110) explains the revision chain; docs/storage-schema.md lists the keys.
 */

/** MCP task statuses (2025-11-25 tasks; the 2026-07-28 tasks extension uses the same set). */
export type OwnedTaskStatus = "working" | "input_required" | "completed" | "failed" | "cancelled";

const STATUSES: readonly OwnedTaskStatus[] = [
  "working",
  "input_required",
  "completed",
  "failed",
  "cancelled",
];
/** A finished task takes no further updates (MCP: terminal statuses do not change). */
const TERMINAL: ReadonlySet<OwnedTaskStatus> = new Set(["completed", "failed", "cancelled"]);

export function isTerminalTaskStatus(status: OwnedTaskStatus): boolean {
  return TERMINAL.has(status);
}

export interface OwnedTask {
  readonly taskId: string;
  readonly status: OwnedTaskStatus;
  readonly statusMessage: string | null;
  /** The server's own JSON state for the task (null when none was given). */
  readonly state: unknown;
  /** 0 at creation, one more for each update. */
  readonly revision: number;
  readonly createdAt: number;
  readonly updatedAt: number;
  /** When the task and everything stored with it expire (epoch ms). Updates do not extend it. */
  readonly expiresAt: number;
}

export interface CreateTaskInit {
  /**
   * The task id. Default: a minted id (192 CSPRNG bits). A server that chooses its own ids (1 to 256
   * visible ASCII characters, no spaces) must expect `ERR_TASK_CONFLICT` when one is taken.
   */
  readonly taskId?: string;
  readonly status?: "working" | "input_required";
  readonly statusMessage?: string | null;
  /** Any JSON value. */
  readonly state?: unknown;
}

/** What an update changes; a field left undefined keeps its value (null clears a status message). */
export interface TaskChange {
  readonly status?: OwnedTaskStatus;
  readonly statusMessage?: string | null;
  readonly state?: unknown;
}

export interface OwnedTasks {
  /** A new task owned by `principal`. `ERR_TASK_CONFLICT` if `init.taskId` is taken (by anyone). */
  create(principal: Principal, init?: CreateTaskInit): Promise<OwnedTask>;
  /** The task, if `principal` owns it; otherwise `ERR_TASK_NOT_FOUND`, as for an unknown id. */
  get(principal: Principal, taskId: string): Promise<OwnedTask>;
  /**
   * Applies `change` (or what `change(current)` returns, recomputed from the newest revision on each
   * retry) as one compare-and-set. `ERR_TASK_NOT_FOUND` unless owned; `ERR_TASK_CONFLICT` if the task
   * is finished or the update kept losing races.
   */
  update(
    principal: Principal,
    taskId: string,
    change: TaskChange | ((current: OwnedTask) => TaskChange),
  ): Promise<OwnedTask>;
  /** `update` to `cancelled`; `ERR_TASK_CONFLICT` if the task had already finished. */
  cancel(principal: Principal, taskId: string, statusMessage?: string): Promise<OwnedTask>;
  /**
   * Stores `result` (any JSON value) under the owner's scope, then marks the task `completed`.
   * `ERR_TASK_CONFLICT` if the task has finished or already has a result.
   */
  complete(principal: Principal, taskId: string, result: unknown): Promise<OwnedTask>;
  /**
   * The result of a completed task the principal owns, or null while it has none (not completed).
   * `ERR_TASK_NOT_FOUND` unless owned.
   */
  getResult(principal: Principal, taskId: string): Promise<{ readonly result: unknown } | null>;
  /** Every live task `principal` owns, oldest first. Nobody else's, whatever the index says. */
  list(principal: Principal): Promise<OwnedTask[]>;
}

export interface OwnedTasksOptions {
  readonly store: Store;
  /** How long a task (record, revisions, result) lives, in ms: 1 ms to 30 days minus a minute. */
  readonly ttlMs: number;
  /** Compare-and-set attempts before an update gives up with `ERR_TASK_CONFLICT`. Default 64. */
  readonly maxUpdateAttempts?: number;
  readonly now?: () => number;
}

const KIND = "owned-task";
const REVISION_KIND = "owned-task-rev";
const HEAD_KIND = "owned-task-head";
const RESULT_KIND = "owned-task-result";
const RECORD_VERSION = 1;
/**
 * Revisions, the head counter, results and index entries outlive the task record by this much, so
 * the record (which every read checks first) always expires first: a head that expired before its
 * record would read as 0 and resurrect the creation state.
 */
const AFTERLIFE_MS = 60_000;
const TASK_ID = /^[\x21-\x7e]{1,256}$/;
const MAX_STATUS_MESSAGE = 1024;
const MAX_READ_ATTEMPTS = 16;

/** The immutable record claimed at creation: owner, incarnation and revision 0. */
interface TaskRecord {
  readonly v: typeof RECORD_VERSION;
  readonly taskId: string;
  readonly tenant: string;
  readonly issuer: string;
  readonly subject: string;
  /**
   * Random per creation: names the revisions, head and result, so an id created again after its
   * task expired can never see the previous incarnation's leftovers.
   */
  readonly incarnation: string;
  readonly status: OwnedTaskStatus;
  readonly statusMessage: string | null;
  readonly state: unknown;
  readonly createdAt: number;
  readonly expiresAt: number;
}

interface RevisionRecord {
  readonly v: typeof RECORD_VERSION;
  readonly revision: number;
  readonly status: OwnedTaskStatus;
  readonly statusMessage: string | null;
  readonly state: unknown;
  readonly updatedAt: number;
}

/** A task record the caller owns, with the keys of its parts. */
interface Located {
  readonly record: TaskRecord;
  readonly scope: OwnerScope;
  readonly head: CounterKey;
  readonly result: RecordKey;
  revisionKey(revision: number): RecordKey;
}

function taskNotFound(): GateError {
  return new GateError("ERR_TASK_NOT_FOUND", "unknown task");
}

function conflict(detail: string): GateError {
  return new GateError("ERR_TASK_CONFLICT", "conflict", { detail });
}

function isStatus(value: unknown): value is OwnedTaskStatus {
  return typeof value === "string" && (STATUSES as readonly string[]).includes(value);
}

function isStatusMessage(value: unknown): value is string | null {
  return value === null || (typeof value === "string" && value.length <= MAX_STATUS_MESSAGE);
}

function toJson(name: string, value: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (cause) {
    throw new GateError("ERR_ARGUMENT_INVALID", `${name} must be JSON-serializable`, { cause });
  }
  if (text === undefined) throw invalidArgument(name, "must be JSON-serializable");
  return text;
}

function parseTaskRecord(text: string | null): TaskRecord | null {
  const r = parseObject(text);
  if (r === null || r["v"] !== RECORD_VERSION) return null;
  const strings = ["taskId", "tenant", "issuer", "subject", "incarnation"].every(
    (name) => typeof r[name] === "string" && (r[name] as string).length > 0,
  );
  if (!strings || !isStatus(r["status"]) || !isStatusMessage(r["statusMessage"]) || !("state" in r)) {
    return null;
  }
  if (!Number.isSafeInteger(r["createdAt"]) || !Number.isSafeInteger(r["expiresAt"])) return null;
  return r as unknown as TaskRecord;
}

function parseRevision(text: string | null, revision: number): RevisionRecord | null {
  const r = parseObject(text);
  if (r === null || r["v"] !== RECORD_VERSION || r["revision"] !== revision) return null;
  if (!isStatus(r["status"]) || !isStatusMessage(r["statusMessage"]) || !("state" in r)) return null;
  if (!Number.isSafeInteger(r["updatedAt"])) return null;
  return r as unknown as RevisionRecord;
}

function taskOf(record: TaskRecord, revision: RevisionRecord | null): OwnedTask {
  const current = revision ?? { ...record, revision: 0, updatedAt: record.createdAt };
  return Object.freeze({
    taskId: record.taskId,
    status: current.status,
    statusMessage: current.statusMessage,
    state: current.state,
    revision: current.revision,
    createdAt: record.createdAt,
    updatedAt: current.updatedAt,
    expiresAt: record.expiresAt,
  });
}

function checkTaskId(taskId: unknown): asserts taskId is string {
  if (typeof taskId !== "string" || !TASK_ID.test(taskId)) {
    throw invalidArgument("taskId", "must be 1 to 256 visible ASCII characters");
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function createOwnedTasks(options: OwnedTasksOptions): OwnedTasks {
  const { store } = options;
  const ttlMs = checkLifetime("ttlMs", options.ttlMs, MAX_TTL_MS - AFTERLIFE_MS);
  const maxUpdateAttempts = options.maxUpdateAttempts ?? 64;
  if (!Number.isSafeInteger(maxUpdateAttempts) || maxUpdateAttempts < 1 || maxUpdateAttempts > 10_000) {
    throw invalidArgument("maxUpdateAttempts", "must be an integer from 1 to 10000");
  }
  const now = options.now ?? Date.now;

  const indexOf = (principal: Principal): IndexKey => ownerIndexKey(ownerScope(principal), KIND);

  /** TTL for everything stored beside a record: until the record expires, plus the afterlife. */
  const partTtl = (record: TaskRecord): number =>
    Math.min(Math.max(1, record.expiresAt - Math.floor(now())) + AFTERLIFE_MS, MAX_TTL_MS);

  function locatedFrom(record: TaskRecord, principal: Principal): Located | null {
    if (!ownedBy(record as unknown as Record<string, unknown>, principal)) return null;
    if (record.expiresAt <= now()) return null;
    const scope = ownerScope(principal);
    return {
      record,
      scope,
      head: counterKey(HEAD_KIND, record.incarnation),
      result: ownedKey(scope, RESULT_KIND, record.incarnation),
      revisionKey: (revision) => ownedKey(scope, REVISION_KIND, record.incarnation, String(revision)),
    };
  }

  /**
   * The caller's task or `ERR_TASK_NOT_FOUND`. One read whoever asks: unknown, foreign, expired and
   * unreadable records (a malformed id included) cost the same and answer the same.
   */
  async function locate(principal: Principal, taskId: string): Promise<Located> {
    checkPrincipal(principal);
    const wellFormed = typeof taskId === "string" && TASK_ID.test(taskId);
    // A malformed id is read at a key no task can have, so a probe cannot time the difference.
    const key = ownershipKey(KIND, wellFormed ? taskId : "\u0000");
    const record = parseTaskRecord(await store.get(key));
    const located = record !== null && wellFormed ? locatedFrom(record, principal) : null;
    if (located === null || located.record.taskId !== taskId) throw taskNotFound();
    return located;
  }

  /** The newest committed revision: the head counter names it; 0 is the creation record itself. */
  async function readCurrent(located: Located): Promise<OwnedTask> {
    let previousHead = -1;
    for (let attempt = 0; attempt < MAX_READ_ATTEMPTS; attempt++) {
      const head = (await store.increment(located.head, 0)).value;
      if (head === 0) return taskOf(located.record, null);
      const revision = parseRevision(await store.get(located.revisionKey(head)), head);
      if (revision !== null) return taskOf(located.record, revision);
      // The head moved on and its old revision became a tombstone between the two reads: read again.
      // The same head twice with no readable revision is a damaged task: refused, never guessed at.
      if (head === previousHead) break;
      previousHead = head;
    }
    throw taskNotFound();
  }

  function applyChange(current: OwnedTask, change: TaskChange): RevisionRecord {
    if (typeof change !== "object" || change === null) throw invalidArgument("change", "must be an object");
    const status = change.status ?? current.status;
    if (!isStatus(status)) throw invalidArgument("status", `must be one of ${STATUSES.join(", ")}`);
    const statusMessage = change.statusMessage === undefined ? current.statusMessage : change.statusMessage;
    if (!isStatusMessage(statusMessage)) {
      throw invalidArgument("statusMessage", `must be null or at most ${MAX_STATUS_MESSAGE} characters`);
    }
    const state = change.state === undefined ? current.state : JSON.parse(toJson("state", change.state));
    return {
      v: RECORD_VERSION,
      revision: current.revision + 1,
      status,
      statusMessage,
      state,
      updatedAt: Math.max(Math.floor(now()), current.updatedAt),
    };
  }

  async function updateLocated(
    located: Located,
    change: TaskChange | ((current: OwnedTask) => TaskChange),
  ): Promise<OwnedTask> {
    for (let attempt = 0; attempt < maxUpdateAttempts; attempt++) {
      const current = await readCurrent(located);
      if (TERMINAL.has(current.status)) throw conflict("finished");
      const next = applyChange(current, typeof change === "function" ? change(current) : change);
      const ttl = partTtl(located.record);
      // The claim is the compare-and-set: of all updates based on `current`, exactly one writes
      // revision n+1. The head then moves to it; a loser moves it too (the winner may have stopped
      // between the two steps), so a claimed revision is never left uncommitted for long.
      const claimed = await store.claim(located.revisionKey(next.revision), JSON.stringify(next), {
        ttlMs: ttl,
      });
      await store.increment(located.head, 1, { limit: next.revision, ttlMs: ttl });
      if (claimed.won) {
        if (current.revision > 0) {
          // The superseded revision shrinks to a tombstone but its key stays taken until the task
          // expires: deleting it would let a slow update still based on the revision before it
          // claim the freed key and "win" a revision that was already committed and superseded.
          // A failure here leaves the full record, which is just as correct.
          const tombstone = JSON.stringify({
            v: RECORD_VERSION,
            revision: current.revision,
            superseded: true,
          });
          await store
            .put(located.revisionKey(current.revision), tombstone, { ttlMs: ttl })
            .catch(() => undefined);
        }
        return taskOf(located.record, next);
      }
      await sleep(Math.random() * Math.min(20, 2 ** attempt));
    }
    throw conflict("contended");
  }

  return {
    async create(principal, init = {}) {
      checkPrincipal(principal);
      if (typeof init !== "object" || init === null) throw invalidArgument("init", "must be an object");
      const taskId = init.taskId ?? mintId();
      checkTaskId(taskId);
      const status = init.status ?? "working";
      if (status !== "working" && status !== "input_required") {
        throw invalidArgument("status", "must be working or input_required at creation");
      }
      const statusMessage = init.statusMessage ?? null;
      if (!isStatusMessage(statusMessage)) {
        throw invalidArgument("statusMessage", `must be null or at most ${MAX_STATUS_MESSAGE} characters`);
      }
      const createdAt = Math.floor(now());
      const owner = ownerFieldsOf(principal);
      const record: TaskRecord = {
        v: RECORD_VERSION,
        taskId,
        tenant: owner.tenant,
        issuer: owner.issuer,
        subject: owner.subject,
        incarnation: mintId(16),
        status,
        statusMessage,
        state: JSON.parse(toJson("state", init.state ?? null)),
        createdAt,
        expiresAt: createdAt + ttlMs,
      };
      const key = ownershipKey(KIND, taskId);
      const member = key.segments[1]!;
      const index = indexOf(principal);
      // The index entry goes first: a crash before the claim leaves a hint to nothing (`list`
      // verifies every entry), never a task its owner cannot list.
      await store.indexAdd(index, member, { ttlMs: Math.min(ttlMs + AFTERLIFE_MS, MAX_TTL_MS) });
      const outcome = await store.claim(key, JSON.stringify(record), { ttlMs });
      if (!outcome.won) {
        const winner = parseTaskRecord(outcome.winner);
        if (winner === null || !ownedBy(winner as unknown as Record<string, unknown>, principal)) {
          await store.indexRemove(index, member);
        }
        throw conflict("taken");
      }
      return taskOf(record, null);
    },

    async get(principal, taskId) {
      return readCurrent(await locate(principal, taskId));
    },

    async update(principal, taskId, change) {
      return updateLocated(await locate(principal, taskId), change);
    },

    async cancel(principal, taskId, statusMessage) {
      return updateLocated(await locate(principal, taskId), {
        status: "cancelled",
        ...(statusMessage === undefined ? {} : { statusMessage }),
      });
    },

    async complete(principal, taskId, result) {
      const located = await locate(principal, taskId);
      const text = JSON.stringify({ v: RECORD_VERSION, result: JSON.parse(toJson("result", result)) });
      const current = await readCurrent(located);
      if (TERMINAL.has(current.status)) throw conflict("finished");
      // The result is stored before the status says completed, so whoever sees `completed` finds it.
      const stored = await store.claim(located.result, text, { ttlMs: partTtl(located.record) });
      if (!stored.won) throw conflict("result-exists");
      try {
        return await updateLocated(located, { status: "completed" });
      } catch (error) {
        // Finished another way meanwhile (cancelled, failed): the result must not linger. On any
        // other error the outcome is unknown, and the result stays with the task it may belong to.
        if (isGateError(error, "ERR_TASK_CONFLICT")) {
          await store.takeIfEquals(located.result, text).catch(() => undefined);
        }
        throw error;
      }
    },

    async getResult(principal, taskId) {
      const located = await locate(principal, taskId);
      const current = await readCurrent(located);
      if (current.status !== "completed") return null;
      const stored = parseObject(await store.get(located.result));
      // Completed without a readable result: damaged, refused rather than answered with nothing.
      if (stored === null || stored["v"] !== RECORD_VERSION || !("result" in stored)) throw taskNotFound();
      return Object.freeze({ result: stored["result"] });
    },

    async list(principal) {
      checkPrincipal(principal);
      const index = indexOf(principal);
      const tasks: OwnedTask[] = [];
      for (const member of await store.indexList(index)) {
        let key: RecordKey;
        try {
          // The digest comes from the principal's own index, never from a client, and names a record
          // that is then checked against the principal: the index is a hint, the record decides.
          key = ownershipKeyFromDigest(KIND, member);
        } catch {
          await store.indexRemove(index, member);
          continue;
        }
        const text = await store.get(key);
        // Absent: expired, or a create still between its index entry and its claim. Left to expire.
        if (text === null) continue;
        const record = parseTaskRecord(text);
        const located = record === null ? null : locatedFrom(record, principal);
        if (located === null) {
          if (record === null || record.expiresAt > now()) await store.indexRemove(index, member);
          continue;
        }
        try {
          tasks.push(await readCurrent(located));
        } catch (error) {
          if (!isGateError(error, "ERR_TASK_NOT_FOUND")) throw error;
        }
      }
      return tasks.sort((a, b) => a.createdAt - b.createdAt || (a.taskId < b.taskId ? -1 : 1));
    },
  };
}
