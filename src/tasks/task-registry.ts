import { invalidArgument } from "../errors.ts";
import { ownerScope, type Principal, samePrincipal } from "../identity/principal.ts";
import { MAX_TTL_MS } from "../store/arguments.ts";
import type { Store } from "../store/contract.ts";
import { ownerIndexKey, ownershipKey, ownershipKeyFromDigest, type RecordKey } from "../store/keys.ts";

/**
 * Owner records for task ids (MCP 2025-11-25 tasks; the 2026-07-28 tasks extension). The spec says
 * receivers MUST bind tasks to the authorization context; the upstream may not, so the gateway does:
 * every task id an upstream hands out is claimed for the principal it was handed to before the
 * client sees it (DESIGN invariant 3), and every later request naming the id is judged against that
 * record.
 *
 * One record per (upstream, task id): `own/task/<digest>` (the id parts are length-prefixed, so an
 * id is always named with its upstream). First writer wins (`claim`), so if an upstream hands one id
 * to two principals exactly one owns it (THREATS T7). A missing record is "not yours" (THREATS T3:
 * fail closed), and so is an unreadable one. Records expire with the task's TTL, bounded.
 */

export type TaskClaimOutcome =
  /** The task is now, or already was, the caller's. */
  | "owned"
  /** Another principal already owns this id: the caller must not be given it. */
  | "foreign";

export interface TaskRegistry {
  /** Claims `taskId` at `upstream` for `principal`, before the id reaches the client. */
  claim(
    principal: Principal,
    upstream: string,
    taskId: string,
    ttlMs: number | null,
  ): Promise<TaskClaimOutcome>;
  /** Whether `principal` owns `taskId` at `upstream`. One read, whoever asks and whatever the id. */
  owns(principal: Principal, upstream: string, taskId: string): Promise<boolean>;
  /** Removes every task record the principal owns (operator revocation); the number removed. */
  revokeAll(principal: Principal): Promise<number>;
}

export interface TaskRegistryOptions {
  readonly store: Store;
  /** TTL when the upstream gives none; tasks outlive sessions, so a day by default. */
  readonly defaultTtlMs?: number;
  /** The longest a task record is kept, whatever the upstream asks. Default 7 days. */
  readonly maxTtlMs?: number;
  readonly now?: () => number;
}

const TASK_KIND = "task";
const RECORD_VERSION = 1;
/** Task ids are the upstream's: visible ASCII, bounded (the spec puts no other limit on them). */
const TASK_ID = /^[\x20-\x7e]{1,512}$/;
const DAY_MS = 24 * 60 * 60 * 1000;

interface TaskRecord {
  readonly v: typeof RECORD_VERSION;
  readonly tenant: string;
  readonly issuer: string;
  readonly subject: string;
  readonly upstream: string;
  readonly createdAt: number;
}

/** Whether a task id is one the gateway can name (and so police). Others are refused, never passed. */
export function isPoliceableTaskId(value: unknown): value is string {
  return typeof value === "string" && TASK_ID.test(value);
}

export function createTaskRegistry(options: TaskRegistryOptions): TaskRegistry {
  const { store } = options;
  const now = options.now ?? Date.now;
  const maxTtlMs = Math.min(options.maxTtlMs ?? 7 * DAY_MS, MAX_TTL_MS);
  const defaultTtlMs = Math.min(options.defaultTtlMs ?? DAY_MS, maxTtlMs);

  const keyOf = (upstream: string, taskId: string): RecordKey => ownershipKey(TASK_KIND, upstream, taskId);
  const ownedBy = (text: string | null, principal: Principal, upstream: string): boolean => {
    const record = parse(text);
    return (
      record !== null &&
      record.upstream === upstream &&
      samePrincipal(principal, {
        ...principal,
        tenant: record.tenant,
        issuer: record.issuer,
        subject: record.subject,
      })
    );
  };

  return {
    async claim(principal, upstream, taskId, ttlMs) {
      if (!isPoliceableTaskId(taskId))
        throw invalidArgument("taskId", "must be 1 to 512 visible ASCII characters");
      const owner = ownerScope(principal);
      const ttl = clampTtl(ttlMs, defaultTtlMs, maxTtlMs);
      const record: TaskRecord = {
        v: RECORD_VERSION,
        tenant: owner.tenant,
        issuer: owner.issuer,
        subject: owner.subject,
        upstream,
        createdAt: Math.floor(now()),
      };
      const key = keyOf(upstream, taskId);
      const outcome = await store.claim(key, JSON.stringify(record), { ttlMs: ttl });
      if (!outcome.won && !ownedBy(outcome.winner, principal, upstream)) return "foreign";
      // The index names the record by its digest only (never the upstream's id), for revocation.
      await store.indexAdd(ownerIndexKey(owner, TASK_KIND), key.segments[1] ?? "", { ttlMs: maxTtlMs });
      return "owned";
    },

    async owns(principal, upstream, taskId) {
      // A malformed id is judged on a key no task can have, so it costs the same read.
      const key = keyOf(upstream, isPoliceableTaskId(taskId) ? taskId : "\u0000");
      return ownedBy(await store.get(key), principal, upstream);
    },

    async revokeAll(principal) {
      const index = ownerIndexKey(ownerScope(principal), TASK_KIND);
      let removed = 0;
      for (const member of await store.indexList(index)) {
        let key: RecordKey;
        try {
          key = ownershipKeyFromDigest(TASK_KIND, member);
        } catch {
          await store.indexRemove(index, member);
          continue;
        }
        // An index entry is not trusted to name only the principal's tasks: the record decides.
        const text = await store.get(key);
        const upstream = parse(text)?.upstream;
        if (upstream !== undefined && ownedBy(text, principal, upstream) && (await store.delete(key)))
          removed += 1;
        await store.indexRemove(index, member);
      }
      return removed;
    },
  };
}

function clampTtl(ttlMs: number | null, fallback: number, max: number): number {
  if (ttlMs === null || !Number.isFinite(ttlMs) || ttlMs <= 0) return fallback;
  return Math.max(1_000, Math.min(Math.floor(ttlMs), max));
}

function parse(text: string | null): TaskRecord | null {
  if (text === null) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const r = value as Record<string, unknown>;
  const strings = ["tenant", "issuer", "subject", "upstream"].every(
    (name) => typeof r[name] === "string" && (r[name] as string).length > 0,
  );
  if (r["v"] !== RECORD_VERSION || !strings || !Number.isSafeInteger(r["createdAt"])) return null;
  return r as unknown as TaskRecord;
}
