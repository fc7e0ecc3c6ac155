/**
 * A modern MCP upstream for tests: the v2 server SDK (`@modelcontextprotocol/server` 2.4.0,
 * `createMcpHandler` + `McpServer`) mounted on plain node:http at 127.0.0.1, port 0.
 *
 * - Speaks 2026-07-28 (stateless per request: no sessions, `server/discover`, `Mcp-Method` /
 *   `Mcp-Name` / `Mcp-Param-*` checked by the SDK) and, through the SDK's default
 *   `legacy: "stateless"` fallback, the 2025 era on the same endpoint: `initialize` and every later
 *   2025 request are each served by a fresh instance, no `Mcp-Session-Id` is minted, GET and DELETE
 *   answer 405. `legacy: "reject"` makes it modern-only (2025 requests get `-32022`).
 * - Identifies the caller from `Tenantgate-Assertion` WITHOUT verifying it: the JWT payload's `sub`,
 *   `tenant` and `principal_iss` are decoded and believed. Test-only; the demo upstream
 *   (examples/demo-upstream) verifies the assertion against the gateway's JWKS, as a real upstream
 *   must.
 * - Records every HTTP request (method, URL, headers, raw body) and, once written, its response
 *   (status, headers, body; for SSE the whole stream).
 * - Tasks: the SDK 2.4.0 has no implementation of the 2026-07-28 tasks extension (SEP-2663), only
 *   its `Mcp-Name` routing rows for `tasks/get|update|cancel`. This upstream implements it: it
 *   advertises `extensions["io.modelcontextprotocol/tasks"]`, answers a `tools/call` of a task tool
 *   with a `CreateTaskResult` (`resultType: "task"`) when the request's envelope declares the
 *   extension (and runs it synchronously otherwise), and serves `tasks/get`, `tasks/update`,
 *   `tasks/cancel`. A task belongs to the caller that created it; other callers are told it does
 *   not exist. Task-bearing messages carry a `requestState` (HMAC-signed, bound to the caller).
 *
 * Tools: `whoami`, `echo {text}`, `tagged_echo {tag, text}` (`tag` is mirrored in `Mcp-Param-Tag`),
 * `progress {steps}` (progress notifications, so the answer is an SSE stream), `needs_input`
 * (multi-round-trip: `input_required` with an elicitation and a `requestState`, done on the retry),
 * `slow_task {steps}` (a task, completed ~200 ms later), `approval_task` (a task that goes
 * `input_required` and is completed through `tasks/update`).
 */
import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type Server as HttpServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import {
  type AuthInfo,
  acceptedContent,
  type CallToolResult,
  createMcpHandler,
  createRequestStateCodec,
  inputRequired,
  type JSONRPCRequest,
  type McpRequestContext,
  McpServer,
  ProtocolError,
  ProtocolErrorCode,
  type Result,
  type ServerContext,
} from "@modelcontextprotocol/server";
import * as z from "zod";

export const TASKS_EXTENSION = "io.modelcontextprotocol/tasks";
const CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities";
/** How long `slow_task` works before completing. */
const SLOW_TASK_MS = 200;
const APPROVAL_STEP_MS = 50;
const TASK_TTL_SECONDS = 300;
const POLL_INTERVAL_MS = 50;

export interface RecordedResponse {
  readonly status: number;
  readonly headers: Record<string, string>;
  /** The whole body; for an SSE answer every frame, once the stream has ended. */
  readonly body: string;
}

export interface RecordedRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  /** Set once the response has been written in full. */
  response?: RecordedResponse;
}

export interface Caller {
  readonly subject: string;
  readonly tenant: string | null;
  readonly issuer: string | null;
}

export interface ModernUpstream {
  readonly url: string;
  readonly requests: RecordedRequest[];
  close(): Promise<void>;
}

export interface ModernUpstreamOptions {
  /** `"stateless"` (default) also serves the 2025 era; `"reject"` answers it `-32022`. */
  readonly legacy?: "stateless" | "reject";
}

/**
 * The caller named by a `Tenantgate-Assertion`: the payload's `sub`, `tenant`, `principal_iss`,
 * decoded and NOT verified (test-only, see the module comment). Null when absent or unreadable.
 */
export function callerFromAssertion(assertion: string | null | undefined): Caller | null {
  if (!assertion) return null;
  const payload = assertion.split(".")[1];
  if (payload === undefined) return null;
  let claims: unknown;
  try {
    claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
  } catch {
    return null;
  }
  if (typeof claims !== "object" || claims === null) return null;
  const { sub, tenant, principal_iss: issuer } = claims as Record<string, unknown>;
  if (typeof sub !== "string") return null;
  return {
    subject: sub,
    tenant: typeof tenant === "string" ? tenant : null,
    issuer: typeof issuer === "string" ? issuer : null,
  };
}

function callerOf(ctx: ServerContext): Caller | null {
  const extra = ctx.http?.authInfo?.extra;
  const caller = extra?.["caller"];
  return caller === undefined ? null : (caller as Caller);
}

function callerKey(caller: Caller | null): string {
  return caller === null ? "anonymous" : JSON.stringify([caller.issuer, caller.tenant, caller.subject]);
}

function text(value: string): CallToolResult {
  return { content: [{ type: "text", text: value }] };
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Whether the request's per-request capabilities declare the tasks extension. */
function declaresTasks(ctx: ServerContext): boolean {
  const envelope = ctx.mcpReq.envelope as
    | Record<string, { extensions?: Record<string, unknown> }>
    | undefined;
  return envelope?.[CLIENT_CAPABILITIES_KEY]?.extensions?.[TASKS_EXTENSION] !== undefined;
}

type TaskStatus = "working" | "input_required" | "completed" | "failed" | "cancelled";

interface TaskRecord {
  readonly taskId: string;
  readonly owner: string;
  readonly createdAt: string;
  status: TaskStatus;
  statusMessage?: string;
  lastUpdatedAt: string;
  result?: CallToolResult;
  inputRequests?: Record<string, unknown>;
  /** Called by `tasks/update` while the task is `input_required`. */
  onInput?: (responses: Record<string, unknown>) => void;
  timers: Set<NodeJS.Timeout>;
}

const TERMINAL: ReadonlySet<TaskStatus> = new Set(["completed", "failed", "cancelled"]);

type RequestHandler = (request: JSONRPCRequest, ctx: ServerContext) => Promise<Result>;
/** The protected `Server._wrapHandler` seam of SDK 2.4.0 (see `interceptTaskCalls`). */
interface WrapHandlerSeam {
  _wrapHandler(method: string, handler: RequestHandler): RequestHandler;
}

export async function startModernUpstream(options: ModernUpstreamOptions = {}): Promise<ModernUpstream> {
  const requests: RecordedRequest[] = [];
  const tasks = new Map<string, TaskRecord>();
  const codec = createRequestStateCodec<Record<string, unknown>>({
    key: randomBytes(32),
    ttlSeconds: 600,
    bind: (ctx) => callerKey(callerOf(ctx)),
  });

  function touch(task: TaskRecord, status: TaskStatus, message?: string): void {
    task.status = status;
    task.lastUpdatedAt = new Date().toISOString();
    if (message === undefined) delete task.statusMessage;
    else task.statusMessage = message;
  }

  function later(task: TaskRecord, ms: number, step: () => void): void {
    const timer = setTimeout(() => {
      task.timers.delete(timer);
      if (!TERMINAL.has(task.status)) step();
    }, ms);
    task.timers.add(timer);
  }

  function newTask(ctx: ServerContext): TaskRecord {
    const now = new Date().toISOString();
    const task: TaskRecord = {
      taskId: randomUUID(),
      owner: callerKey(callerOf(ctx)),
      createdAt: now,
      lastUpdatedAt: now,
      status: "working",
      timers: new Set(),
    };
    tasks.set(task.taskId, task);
    return task;
  }

  /** The task as `tasks/get` shows it (SEP-2663 DetailedTask), with a fresh `requestState`. */
  async function snapshot(task: TaskRecord, ctx: ServerContext): Promise<Record<string, unknown>> {
    return {
      taskId: task.taskId,
      status: task.status,
      ...(task.statusMessage !== undefined && { statusMessage: task.statusMessage }),
      createdAt: task.createdAt,
      lastUpdatedAt: task.lastUpdatedAt,
      ttlSeconds: TASK_TTL_SECONDS,
      pollIntervalMilliseconds: POLL_INTERVAL_MS,
      requestState: await codec.mint({ taskId: task.taskId }, ctx),
      ...(task.status === "input_required" && { inputRequests: task.inputRequests ?? {} }),
      ...(task.status === "completed" && { result: task.result }),
    };
  }

  /** A CreateTaskResult: the seed task, flat, `resultType: "task"`, no result/inputRequests. */
  async function created(task: TaskRecord, ctx: ServerContext): Promise<Result> {
    const { inputRequests: _inputRequests, result: _result, ...seed } = await snapshot(task, ctx);
    return { resultType: "task", ...seed };
  }

  /**
   * The caller's task named by `taskId`, checking an echoed `requestState` when there is one. A task
   * of another caller, an unknown id and a bad state all read as "no such task".
   */
  async function ownTask(taskId: string, ctx: ServerContext): Promise<TaskRecord> {
    const task = tasks.get(taskId);
    const state = ctx.mcpReq.requestState();
    let stateOk = true;
    if (state !== undefined) {
      try {
        const payload = await codec.verify(String(state), ctx);
        stateOk = payload["taskId"] === taskId;
      } catch {
        stateOk = false;
      }
    }
    if (task === undefined || task.owner !== callerKey(callerOf(ctx)) || !stateOk) {
      throw new ProtocolError(ProtocolErrorCode.InvalidParams, `Unknown task: ${taskId}`);
    }
    return task;
  }

  const slowTaskArgs = z.object({ steps: z.number().int().min(1).max(100).default(4) });

  /** Task-creating calls, keyed by tool name: start the work, return the task. */
  const taskTools: Record<string, (args: unknown, ctx: ServerContext) => Promise<Result>> = {
    slow_task: async (args, ctx) => {
      const { steps } = slowTaskArgs.parse(args ?? {});
      const task = newTask(ctx);
      task.statusMessage = `working on ${steps} steps`;
      later(task, SLOW_TASK_MS, () => {
        task.result = text(`slow_task done: ${steps} steps`);
        touch(task, "completed");
      });
      return created(task, ctx);
    },
    approval_task: async (_args, ctx) => {
      const task = newTask(ctx);
      later(task, APPROVAL_STEP_MS, () => {
        task.inputRequests = {
          approve: inputRequired.elicit({
            message: "Approve the task?",
            requestedSchema: {
              type: "object",
              properties: { approve: { type: "boolean" } },
              required: ["approve"],
            },
          }),
        };
        task.onInput = (responses) => {
          const answer = acceptedContent(responses, "approve");
          if (answer === undefined) return;
          delete task.onInput;
          delete task.inputRequests;
          touch(task, "working", "applying the answer");
          later(task, APPROVAL_STEP_MS, () => {
            task.result = text(answer["approve"] === true ? "approved" : "rejected");
            touch(task, "completed");
          });
        };
        touch(task, "input_required", "waiting for approval");
      });
      return created(task, ctx);
    },
  };

  /**
   * SDK 2.4.0 validates every `tools/call` result as a CallToolResult (adding `content: []` and
   * refusing one that carries `requestState`), so a handler cannot return a spec-exact
   * CreateTaskResult. This wraps the Server's protected `_wrapHandler` seam on the instance: a
   * task tool called by a client that declared the tasks extension is answered here, before the
   * SDK's tool machinery; every other call goes through it unchanged. Must run before the first
   * `registerTool` (which installs the `tools/call` handler).
   */
  function interceptTaskCalls(mcp: McpServer): void {
    const seam = mcp.server as unknown as WrapHandlerSeam;
    if (typeof seam._wrapHandler !== "function") throw new Error("SDK changed: Server._wrapHandler is gone");
    const wrap = seam._wrapHandler.bind(seam);
    seam._wrapHandler = (method, handler) => {
      const wrapped = wrap(method, handler);
      if (method !== "tools/call") return wrapped;
      return async (request, ctx) => {
        const params = request.params as { name?: unknown; arguments?: unknown } | undefined;
        const name = typeof params?.name === "string" ? params.name : "";
        const start = Object.hasOwn(taskTools, name) ? taskTools[name] : undefined;
        if (start !== undefined && declaresTasks(ctx)) return start(params?.arguments, ctx);
        return wrapped(request, ctx);
      };
    };
  }

  function registerTaskMethods(mcp: McpServer): void {
    const taskParams = z.object({ taskId: z.string() }).loose();
    mcp.server.setRequestHandler("tasks/get", { params: taskParams }, async ({ taskId }, ctx) =>
      snapshot(await ownTask(taskId, ctx), ctx),
    );
    mcp.server.setRequestHandler("tasks/update", { params: taskParams }, async ({ taskId }, ctx) => {
      // SEP-2663: acknowledged with an empty result whatever the task id names.
      try {
        const task = await ownTask(taskId, ctx);
        const responses = ctx.mcpReq.inputResponses;
        if (task.status === "input_required" && responses !== undefined) task.onInput?.(responses);
      } catch {}
      return {};
    });
    mcp.server.setRequestHandler("tasks/cancel", { params: taskParams }, async ({ taskId }, ctx) => {
      try {
        const task = await ownTask(taskId, ctx);
        if (!TERMINAL.has(task.status)) {
          for (const timer of task.timers) clearTimeout(timer);
          task.timers.clear();
          touch(task, "cancelled", "cancelled by the client");
        }
      } catch {}
      return {};
    });
  }

  /** One instance per HTTP request (the SDK's per-request factory); tasks live outside it. */
  function build({ era }: McpRequestContext): McpServer {
    const modern = era === "modern";
    const mcp = new McpServer(
      { name: "modern-upstream", version: "1.0.0" },
      {
        capabilities: modern ? { extensions: { [TASKS_EXTENSION]: {} } } : {},
        requestState: { verify: (state, ctx) => codec.verify(state, ctx) },
      },
    );
    if (modern) {
      interceptTaskCalls(mcp);
      registerTaskMethods(mcp);
    }

    mcp.registerTool("whoami", { description: "Who the Tenantgate-Assertion says is calling" }, async (ctx) =>
      text(JSON.stringify(callerOf(ctx))),
    );
    mcp.registerTool(
      "echo",
      { description: "Echo the text back", inputSchema: z.object({ text: z.string() }) },
      async ({ text: value }) => text(value),
    );
    mcp.registerTool(
      "tagged_echo",
      {
        description: "Echo the text with its tag; the tag travels in the Mcp-Param-Tag header too",
        inputSchema: z.object({ tag: z.string().meta({ "x-mcp-header": "Tag" }), text: z.string() }),
      },
      async ({ tag, text: value }, ctx) =>
        text(
          JSON.stringify({ tag, text: value, header: ctx.http?.req?.headers.get("mcp-param-tag") ?? null }),
        ),
    );
    mcp.registerTool(
      "progress",
      {
        description: "Report progress `steps` times, then answer (an SSE stream)",
        inputSchema: z.object({ steps: z.number().int().min(1).max(20).default(3) }),
      },
      async ({ steps }, ctx) => {
        const progressToken = ctx.mcpReq._meta?.progressToken;
        for (let step = 1; step <= steps; step++) {
          if (progressToken !== undefined) {
            await ctx.mcpReq.notify({
              method: "notifications/progress",
              params: { progressToken, progress: step, total: steps, message: `step ${step}/${steps}` },
            });
          }
          await sleep(10, ctx.mcpReq.signal);
        }
        return text(`progress done: ${steps} steps`);
      },
    );
    mcp.registerTool(
      "needs_input",
      { description: "Asks for a name (input_required + requestState), greets on the retry" },
      async (ctx) => {
        const state = ctx.mcpReq.requestState<Record<string, unknown>>();
        const answer = acceptedContent(ctx.mcpReq.inputResponses, "name");
        if (state?.["tool"] === "needs_input" && typeof answer?.["name"] === "string") {
          return text(`hello, ${answer["name"]} (round ${String(state["round"])})`);
        }
        return inputRequired({
          inputRequests: {
            name: inputRequired.elicit({
              message: "What is your name?",
              requestedSchema: {
                type: "object",
                properties: { name: { type: "string" } },
                required: ["name"],
              },
            }),
          },
          requestState: await codec.mint({ tool: "needs_input", round: 1 }, ctx),
        });
      },
    );
    mcp.registerTool(
      "slow_task",
      {
        description: `A task (tasks extension) completing after ~${SLOW_TASK_MS} ms; synchronous otherwise`,
        inputSchema: slowTaskArgs,
      },
      async ({ steps }, ctx) => {
        await sleep(SLOW_TASK_MS, ctx.mcpReq.signal);
        return text(`slow_task done: ${steps} steps`);
      },
    );
    mcp.registerTool(
      "approval_task",
      { description: "A task that asks for approval (input_required, answered by tasks/update)" },
      async () => ({ ...text("approval_task needs the tasks extension"), isError: true }),
    );
    return mcp;
  }

  const handler = createMcpHandler(build, {
    legacy: options.legacy ?? "stateless",
    onerror: () => {},
  });

  const server: HttpServer = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      const body = Buffer.concat(chunks);
      const record: RecordedRequest = {
        method: request.method ?? "",
        url: request.url ?? "/",
        headers: request.headers,
        body: body.toString("utf8"),
      };
      requests.push(record);

      const aborter = new AbortController();
      response.on("close", () => {
        if (!response.writableFinished) aborter.abort();
      });
      const headers = new Headers();
      for (const [name, value] of Object.entries(request.headers)) {
        if (value === undefined) continue;
        for (const one of Array.isArray(value) ? value : [value]) headers.append(name, one);
      }
      const method = record.method.toUpperCase();
      const webRequest = new Request(new URL(record.url, "http://127.0.0.1"), {
        method,
        headers,
        signal: aborter.signal,
        ...(method !== "GET" && method !== "HEAD" && { body }),
      });
      const caller = callerFromAssertion(request.headers["tenantgate-assertion"] as string | undefined);
      const authInfo: AuthInfo | undefined =
        caller === null
          ? undefined
          : {
              token: String(request.headers["tenantgate-assertion"]),
              clientId: caller.subject,
              scopes: [],
              extra: { caller },
            };
      void (async () => {
        const answer = await handler.fetch(webRequest, authInfo === undefined ? undefined : { authInfo });
        const answerHeaders: Record<string, string> = {};
        answer.headers.forEach((value, name) => {
          answerHeaders[name] = value;
        });
        response.writeHead(answer.status, answerHeaders);
        const written: Buffer[] = [];
        if (answer.body !== null) {
          const reader = answer.body.getReader();
          response.on("close", () => void reader.cancel().catch(() => {}));
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            const chunk = Buffer.from(value);
            written.push(chunk);
            response.write(chunk);
          }
        }
        record.response = {
          status: answer.status,
          headers: answerHeaders,
          body: Buffer.concat(written).toString("utf8"),
        };
        response.end();
      })().catch(() => {
        if (!response.headersSent) response.writeHead(500);
        response.end();
      });
    });
  });

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}/mcp`,
    requests,
    async close() {
      for (const task of tasks.values()) for (const timer of task.timers) clearTimeout(timer);
      await handler.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
