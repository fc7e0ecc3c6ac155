/**
 * An MCP server built with the official v2 server SDK that uses every isolation primitive tenantgate
 * gives server authors (docs/library.md), the way the everyrow audit said such a server must:
 *
 * - `start_analysis` creates an **owned task** (owner written with the task, in one record) and hands
 *   back a **poll token** bound to the caller and the task; a widget polls progress at the REST
 *   endpoint `GET /tasks/<id>/progress` with the token in a header (never the query string);
 * - `result_download` hands out a short-lived, single-use **download token** for
 *   `GET /tasks/<id>/result`;
 * - `request_upload` hands out a **signed single-use upload URL** bound to the caller;
 * - `remember` / `recall` keep values behind **state handles** keyed by the caller;
 * - `pair_device` issues a **single-use code** for one client id, redeemed at `POST /pair`;
 * - `fetch_title` fetches a user-supplied URL with **safeFetch** (no loopback, private or metadata
 *   addresses; the socket goes to the address that was vetted).
 *
 * Every request, MCP or REST, is authenticated first (`authenticate`: the server's own bearer check,
 * or `fromAssertion` behind the gateway), and every handler acts as the verified principal only.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { createMcpHandler, McpServer } from "@modelcontextprotocol/server";
import * as z from "zod";
import type { Keyring } from "../../src/crypto/keyring.ts";
import { isGateError, toWire } from "../../src/errors.ts";
import type { Principal } from "../../src/identity/principal.ts";
import { createDownloadTokens } from "../../src/server/download-tokens.ts";
import {
  createNodeMcpListener,
  principalOf,
  type RequestAuthenticator,
} from "../../src/server/mcp-node-listener.ts";
import { createOwnedTasks } from "../../src/server/owned-tasks.ts";
import { createPollTokens } from "../../src/server/poll-tokens.ts";
import { readRequestToken } from "../../src/server/request-token.ts";
import { type SafeFetchPolicy, safeFetch } from "../../src/server/safe-fetch.ts";
import { createUploadSigner } from "../../src/server/signed-uploads.ts";
import { createSingleUseCodes } from "../../src/server/single-use-codes.ts";
import { createStateHandles } from "../../src/server/state-handles.ts";
import type { Store } from "../../src/store/contract.ts";

export interface TasksServerOptions {
  readonly store: Store;
  readonly keyring: Keyring;
  /** Who is calling: `fromBearer(...)` standalone, `fromAssertion(...)` behind tenantgate. */
  readonly authenticate: RequestAuthenticator;
  readonly host?: string;
  readonly port?: number;
  /** safeFetch's policy for `fetch_title` (the default refuses every internal address). */
  readonly fetchPolicy?: SafeFetchPolicy;
  /** How long each analysis step takes (ms). */
  readonly stepMs?: number;
}

export interface TasksServer {
  /** `http://host:port`; the MCP endpoint is `${url}/mcp`. */
  readonly url: string;
  close(): Promise<void>;
}

const POLL_HEADER = "tenantgate-poll-token";
const DOWNLOAD_HEADER = "tenantgate-download-token";
const STEPS = 4;

export async function startTasksServer(options: TasksServerOptions): Promise<TasksServer> {
  const { store, keyring } = options;
  const tasks = createOwnedTasks({ store, ttlMs: 3_600_000 });
  const pollTokens = createPollTokens({ store });
  const downloads = createDownloadTokens({ store });
  const handles = createStateHandles({ store, ttlMs: 3_600_000 });
  const codes = createSingleUseCodes({ store, ttlMs: 300_000 });
  const uploads = createUploadSigner({
    keyring,
    store,
    ttlMs: 600_000,
    maxBytes: 64 * 1024,
    contentTypes: ["text/plain", "application/json"],
  });
  const stepMs = options.stepMs ?? 50;
  const running = new Set<Promise<void>>();

  /** The analysis itself: progress in the task's state, the result stored under the owner's scope. */
  function analyse(principal: Principal, taskId: string, text: string): void {
    const work = (async () => {
      for (let step = 1; step <= STEPS; step++) {
        await new Promise((resolve) => setTimeout(resolve, stepMs));
        await tasks.update(principal, taskId, { state: { progress: step / STEPS } });
      }
      await tasks.complete(principal, taskId, { words: text.split(/\s+/).filter(Boolean).length });
    })().catch(() => undefined);
    running.add(work);
    void work.finally(() => running.delete(work));
  }

  const json = (value: unknown) => ({ content: [{ type: "text" as const, text: JSON.stringify(value) }] });

  const handler = createMcpHandler(
    () => {
      const mcp = new McpServer({ name: "tasks-example", version: "1.0.0" });
      mcp.registerTool(
        "start_analysis",
        { description: "count the words of a text, slowly", inputSchema: { text: z.string().max(10_000) } },
        async ({ text }, ctx) => {
          const me = principalOf(ctx);
          const task = await tasks.create(me, { state: { progress: 0 } });
          const poll = await pollTokens.issue(me, task.taskId);
          analyse(me, task.taskId, text);
          return json({
            taskId: task.taskId,
            progressPath: `/tasks/${encodeURIComponent(task.taskId)}/progress`,
            pollToken: poll.token,
            pollHeader: POLL_HEADER,
          });
        },
      );
      mcp.registerTool(
        "result_download",
        { description: "a single-use link to a finished analysis", inputSchema: { taskId: z.string() } },
        async ({ taskId }, ctx) => {
          const me = principalOf(ctx);
          await tasks.get(me, taskId); // someone else's task reads as unknown
          const issued = await downloads.issue(me, taskId);
          return json({
            resultPath: `/tasks/${encodeURIComponent(taskId)}/result`,
            downloadToken: issued.token,
            downloadHeader: DOWNLOAD_HEADER,
          });
        },
      );
      mcp.registerTool(
        "request_upload",
        { description: "a signed URL to upload one text or JSON file", inputSchema: {} },
        async (_args, ctx) => json({ url: (await uploads.issue(principalOf(ctx))).url }),
      );
      mcp.registerTool(
        "remember",
        { description: "keep a value; answers a handle", inputSchema: { value: z.string().max(10_000) } },
        async ({ value }, ctx) => json({ handle: await handles.create(principalOf(ctx), value) }),
      );
      mcp.registerTool(
        "recall",
        { description: "a value kept with remember", inputSchema: { handle: z.string() } },
        async ({ handle }, ctx) => json({ value: await handles.get(principalOf(ctx), handle) }),
      );
      mcp.registerTool(
        "pair_device",
        {
          description: "a one-time pairing code for one device",
          inputSchema: { clientId: z.string().min(1).max(128) },
        },
        async ({ clientId }, ctx) => {
          const me = principalOf(ctx);
          return json({
            code: await codes.issue(JSON.stringify({ subject: me.subject, tenant: me.tenant }), { clientId }),
          });
        },
      );
      mcp.registerTool(
        "fetch_title",
        { description: "the title of a web page", inputSchema: { url: z.string().max(2_048) } },
        async ({ url }) => {
          try {
            const page = await safeFetch(url, {
              maxBytes: 256 * 1024,
              timeoutMs: 5_000,
              ...options.fetchPolicy,
            });
            const title = /<title>([^<]{0,200})<\/title>/i.exec(page.text())?.[1] ?? "";
            return json({ title });
          } catch (error) {
            // The generic wire message only: which internal names exist is nobody's business.
            return {
              isError: true,
              content: [
                {
                  type: "text" as const,
                  text: toWire(isGateError(error) ? error.code : "ERR_INTERNAL").message,
                },
              ],
            };
          }
        },
      );
      return mcp;
    },
    { legacy: "stateless", onerror: () => {} },
  );
  const mcpListener = createNodeMcpListener(handler, { authenticate: options.authenticate });

  async function rest(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const path = (request.url ?? "").split("?")[0] ?? "";
    const me = await options.authenticate(request);
    if (path.startsWith("/uploads")) {
      await uploads.handle(request, response, me);
      return;
    }
    const progress = /^\/tasks\/([^/]+)\/progress$/.exec(path);
    if (progress && request.method === "GET") {
      const taskId = decodeURIComponent(progress[1] ?? "");
      await pollTokens.check(me, taskId, readRequestToken(request, { header: POLL_HEADER }));
      const task = await tasks.get(me, taskId);
      return send(response, 200, {
        status: task.status,
        progress: (task.state as { progress?: number })?.progress ?? 0,
      });
    }
    const result = /^\/tasks\/([^/]+)\/result$/.exec(path);
    if (result && request.method === "GET") {
      const taskId = decodeURIComponent(result[1] ?? "");
      await downloads.redeem(me, taskId, readRequestToken(request, { header: DOWNLOAD_HEADER }));
      const stored = await tasks.getResult(me, taskId);
      return stored === null
        ? send(response, 409, { error: "not finished" })
        : send(response, 200, stored.result);
    }
    if (path === "/pair" && request.method === "POST") {
      const code = readRequestToken(request, { header: "tenantgate-pairing-code" });
      const clientId = request.headersDistinct["tenantgate-client-id"]?.[0] ?? "";
      const paired = code === undefined || clientId === "" ? null : await codes.redeem(code, clientId);
      return paired === null
        ? send(response, 404, { error: "not found" })
        : send(response, 200, JSON.parse(paired));
    }
    send(response, 404, { error: "not found" });
  }

  const server: Server = createServer((request, response) => {
    if ((request.url ?? "").split("?")[0] === "/mcp") return mcpListener(request, response);
    rest(request, response).catch((error: unknown) => {
      // Generic answers with stable codes; a foreign task or token reads exactly like an unknown one.
      const wire = toWire(isGateError(error) ? error.code : "ERR_INTERNAL");
      send(response, wire.status, { error: { code: wire.code, message: wire.message } });
    });
  });
  await new Promise<void>((resolve) =>
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", resolve),
  );
  const address = server.address() as AddressInfo;
  return {
    url: `http://${address.address}:${address.port}`,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await Promise.all([...running]);
    },
  };
}

function send(response: ServerResponse, status: number, body: unknown): void {
  if (response.headersSent) {
    response.end();
    return;
  }
  const text = JSON.stringify(body);
  response.writeHead(status, {
    "content-type": "application/json",
    "cache-control": "no-store",
    "content-length": Buffer.byteLength(text),
  });
  response.end(text);
}
