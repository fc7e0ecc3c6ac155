/**
 * Where task ids appear on the wire (MCP 2025-11-25 tasks utility; the 2026-07-28 tasks extension,
 * SEP-2663), read from parsed JSON-RPC messages only.
 *
 * Requests that act on a task name it in `params.taskId`; `subscriptions/listen` may name several
 * (`tasksStatus` in its notification filter, or `taskIds`). Responses create one: a modern
 * `CreateTaskResult` is the flat `result` with `resultType: "task"` and `taskId`; a 2025-11-25 one
 * carries `result.task.taskId`. `tasks/list` (2025-11-25) answers `result.tasks[]`.
 */

/** Methods that act on the one task named by `params.taskId`. */
export const TASK_METHODS: ReadonlySet<string> = new Set([
  "tasks/get",
  "tasks/update",
  "tasks/cancel",
  "tasks/result",
]);
/** Methods that exist only in the 2025-11-25 tasks utility; in the modern era they are -32601. */
export const LEGACY_ONLY_TASK_METHODS: ReadonlySet<string> = new Set(["tasks/result", "tasks/list"]);
const MAX_NAMED_TASKS = 256;

export type NamedTasks =
  /** The request names no task. */
  | { readonly kind: "none" }
  /** Every task the request names; each must be the caller's. */
  | { readonly kind: "tasks"; readonly taskIds: readonly string[] }
  /** It should name tasks and the names are not strings (or too many): refused like an unknown task. */
  | { readonly kind: "malformed" };

export function tasksNamedBy(method: string, params: unknown): NamedTasks {
  const p = isRecord(params) ? params : undefined;
  if (TASK_METHODS.has(method)) {
    const taskId = p?.["taskId"];
    return typeof taskId === "string" ? { kind: "tasks", taskIds: [taskId] } : { kind: "malformed" };
  }
  if (method === "subscriptions/listen" && p) {
    const found: string[] = [];
    let malformed = false;
    // The filter's location differs between drafts; every list of task ids in the request counts.
    const visit = (value: unknown, depth: number) => {
      if (!isRecord(value) || depth > 3) return;
      for (const [key, entry] of Object.entries(value)) {
        if (key === "tasksStatus" || key === "taskIds") {
          if (!Array.isArray(entry) || !entry.every((id) => typeof id === "string")) malformed = true;
          else found.push(...(entry as string[]));
        } else visit(entry, depth + 1);
      }
    };
    visit(p, 0);
    if (malformed || found.length > MAX_NAMED_TASKS) return { kind: "malformed" };
    return found.length === 0 ? { kind: "none" } : { kind: "tasks", taskIds: found };
  }
  return { kind: "none" };
}

export interface CreatedTask {
  readonly taskId: string;
  /** The task's TTL in ms as the upstream declared it; null when unlimited or absent. */
  readonly ttlMs: number | null;
}

/** The task a response creates, if any (a success response whose result is a CreateTaskResult). */
export function taskCreatedBy(message: Record<string, unknown>): CreatedTask | null {
  const result = message["result"];
  if (!("id" in message) || !isRecord(result)) return null;
  if (result["resultType"] === "task" && typeof result["taskId"] === "string") {
    // The extension's drafts name the TTL `ttlMs` or `ttlSeconds`; either bounds the owner record.
    const seconds = numberOrNull(result["ttlSeconds"]);
    return {
      taskId: result["taskId"],
      ttlMs: numberOrNull(result["ttlMs"]) ?? (seconds === null ? null : seconds * 1000),
    };
  }
  const task = result["task"];
  if (isRecord(task) && typeof task["taskId"] === "string" && typeof task["status"] === "string") {
    return { taskId: task["taskId"], ttlMs: numberOrNull(task["ttl"]) };
  }
  return null;
}

/** `result.tasks` of a `tasks/list` answer, or null when the message is not one. */
export function listedTasks(message: Record<string, unknown>): unknown[] | null {
  const result = message["result"];
  if (!isRecord(result) || !Array.isArray(result["tasks"])) return null;
  return result["tasks"];
}

function numberOrNull(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
