/**
 * A careless task server on node:http, speaking both eras on one endpoint: it records every request
 * it receives and does no ownership checks of its own (any holder of a task id may use it, and
 * `tasks/list` lists everybody's tasks), which is exactly the upstream the gateway must make safe.
 *
 * - Legacy (2025-11-25, `initialize` + session): `tools/call` with `params.task` answers a
 *   2025-11-25 CreateTaskResult (`result.task`); `tasks/get`, `tasks/result`, `tasks/list`,
 *   `tasks/cancel`.
 * - Modern (2026-07-28): `tools/call` of `start_task` answers a flat CreateTaskResult
 *   (`resultType: "task"`), as JSON, or as an SSE stream with a progress notification first when the
 *   tool's argument `stream` is true; `tasks/get`, `tasks/update`, `tasks/cancel`,
 *   `subscriptions/listen`.
 * - `sameTaskIdForEveryone(id)` makes every new task get that id (the T7 upstream bug).
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface TaskUpstreamRequest {
  readonly method: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: Record<string, unknown> | null;
}

export interface TaskUpstream {
  readonly url: string;
  readonly requests: TaskUpstreamRequest[];
  /** Requests whose JSON-RPC method is `method`. */
  received(method: string): TaskUpstreamRequest[];
  sameTaskIdForEveryone(taskId: string | null): void;
  close(): Promise<void>;
}

interface Task {
  taskId: string;
  status: string;
  result?: Record<string, unknown>;
}

export async function startTaskUpstream(): Promise<TaskUpstream> {
  const requests: TaskUpstreamRequest[] = [];
  const tasks = new Map<string, Task>();
  let fixedTaskId: string | null = null;

  const newTask = (): Task => {
    const taskId = fixedTaskId ?? `task-${randomBytes(6).toString("hex")}`;
    const task: Task = {
      taskId,
      status: "working",
      result: { content: [{ type: "text", text: `done ${taskId}` }] },
    };
    tasks.set(taskId, task);
    return task;
  };
  const taskFields = (task: Task) => ({
    taskId: task.taskId,
    status: task.status,
    createdAt: "2026-11-22T00:00:00Z",
    lastUpdatedAt: "2026-11-22T00:00:00Z",
  });

  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      let body: Record<string, unknown> | null = null;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {}
      requests.push({ method: request.method ?? "", headers: request.headers, body });
      const modern = request.headers["mcp-protocol-version"] === "2026-07-28";
      const json = (status: number, payload: unknown, extra: Record<string, string> = {}) => {
        response.writeHead(status, { "content-type": "application/json", ...extra });
        response.end(JSON.stringify(payload));
      };
      if (request.method !== "POST" || body === null) return json(405, {});
      const id = body["id"];
      const method = String(body["method"] ?? "");
      const params = (body["params"] ?? {}) as Record<string, unknown>;
      const answer = (result: Record<string, unknown>) =>
        json(200, { jsonrpc: "2.0", id, result: modern ? { resultType: "complete", ...result } : result });
      const unknownTask = () =>
        json(200, { jsonrpc: "2.0", id, error: { code: -32602, message: "upstream: no such task" } });
      if (id === undefined) return response.writeHead(202).end();

      switch (method) {
        case "server/discover":
          return answer({
            supportedVersions: ["2026-07-28", "2025-11-25"],
            capabilities: { tools: {}, extensions: { "io.modelcontextprotocol/tasks": {} } },
            serverInfo: { name: "task-upstream", version: "1" },
          });
        case "initialize":
          return json(
            200,
            {
              jsonrpc: "2.0",
              id,
              result: {
                protocolVersion: "2025-11-25",
                capabilities: { tools: {}, tasks: { requests: { tools: { call: {} } } } },
                serverInfo: { name: "task-upstream", version: "1" },
              },
            },
            { "mcp-session-id": `up-${randomBytes(6).toString("hex")}` },
          );
        case "tools/call": {
          if (params["name"] === "needs_input") {
            // Multi-round-trip: the first call asks for input and hands out state; the retry with the
            // state completes. The state names the call it was issued for, so a test can see what came back.
            const state = params["requestState"];
            if (typeof state === "string") {
              return answer({ content: [{ type: "text", text: `completed with ${state}` }] });
            }
            return json(200, {
              jsonrpc: "2.0",
              id,
              result: {
                resultType: "input_required",
                inputRequests: { confirm: { method: "elicitation/create", params: { message: "sure?" } } },
                requestState: `upstream-state-${randomBytes(4).toString("hex")}`,
              },
            });
          }
          const task = newTask();
          if (!modern) return answer({ task: { ...taskFields(task), ttl: 60_000 } });
          const created = {
            jsonrpc: "2.0",
            id,
            result: { resultType: "task", ...taskFields(task), ttlMs: 60_000 },
          };
          const args = (params["arguments"] ?? {}) as Record<string, unknown>;
          if (args["stream"] === true) {
            response.writeHead(200, { "content-type": "text/event-stream" });
            response.write(
              `event: message\ndata: ${JSON.stringify({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 1, progress: 1 } })}\n\n`,
            );
            response.end(`event: message\ndata: ${JSON.stringify(created)}\n\n`);
            return;
          }
          return json(200, created);
        }
        case "tasks/get":
        case "tasks/result":
        case "tasks/cancel":
        case "tasks/update": {
          const task = tasks.get(String(params["taskId"]));
          if (!task) return unknownTask();
          if (method === "tasks/cancel") task.status = "cancelled";
          if (method === "tasks/result") return answer(task.result ?? {});
          if (method === "tasks/get")
            return answer({ ...taskFields(task), ...(modern ? { ttlMs: 60_000 } : { ttl: 60_000 }) });
          return answer({});
        }
        case "tasks/list": {
          // Careless: everybody's tasks, two per page, and the cursor is the last task id listed (as
          // the SDK's in-memory task store does).
          const all = [...tasks.values()];
          const cursor = params["cursor"];
          const start = typeof cursor === "string" ? all.findIndex((task) => task.taskId === cursor) + 1 : 0;
          if (typeof cursor === "string" && start === 0) {
            return json(200, { jsonrpc: "2.0", id, error: { code: -32602, message: "Invalid cursor" } });
          }
          const page = all.slice(start, start + 2);
          const last = page.at(-1);
          return answer({
            tasks: page.map((task) => ({ ...taskFields(task), ttl: 60_000 })),
            ...(start + 2 < all.length && last ? { nextCursor: last.taskId } : {}),
          });
        }
        case "subscriptions/listen": {
          // Careless: every task's status to every listener.
          response.writeHead(200, { "content-type": "text/event-stream" });
          const statuses = [...tasks.values()].map(
            (task) =>
              `data: ${JSON.stringify({ jsonrpc: "2.0", method: "notifications/tasks/status", params: { ...taskFields(task), ttlMs: 60_000 } })}\n\n`,
          );
          response.end(
            `data: ${JSON.stringify({ jsonrpc: "2.0", method: "notifications/subscriptions/acknowledged", params: {} })}\n\n${statuses.join("")}`,
          );
          return;
        }
        default:
          return answer({ tools: [] });
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    requests,
    received: (method) => requests.filter((entry) => entry.body?.["method"] === method),
    sameTaskIdForEveryone(taskId) {
      fixedTaskId = taskId;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
