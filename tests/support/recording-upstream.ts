/**
 * A minimal legacy MCP server on node:http that records what reaches it: every request's method,
 * headers and body. It mints its own session ids, sets a cookie on initialize, numbers SSE events,
 * and can be told to answer with a given status (e.g. its own 401) — everything the S9 and A4 tests
 * need to see from the upstream's side. Not an SDK server: the demo upstream and server-everything
 * cover real servers; this one exists to observe and misbehave on purpose.
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface RecordedRequest {
  readonly method: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

export interface RecordingUpstream {
  readonly url: string;
  readonly requests: RecordedRequest[];
  /** Session ids this upstream handed out. */
  readonly sessionIds: string[];
  /**
   * The next requests (other than initialize, unless `includeInitialize`) get this status, with a
   * small JSON error body, or with `body` as text/plain when given (an upstream's error page).
   */
  failWith(status: number | null, options?: { includeInitialize?: boolean; body?: string }): void;
  close(): Promise<void>;
}

export async function startRecordingUpstream(): Promise<RecordingUpstream> {
  const requests: RecordedRequest[] = [];
  const sessionIds: string[] = [];
  let failure: { status: number; includeInitialize: boolean; body: string | undefined } | null = null;
  let eventNumber = 0;

  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      requests.push({ method: request.method ?? "", headers: request.headers, body });
      let message: { id?: unknown; method?: string } = {};
      try {
        message = JSON.parse(body);
      } catch {}
      const isInitialize = message.method === "initialize";
      if (failure && (!isInitialize || failure.includeInitialize)) {
        if (failure.body !== undefined) {
          response.writeHead(failure.status, { "content-type": "text/plain" });
          response.end(failure.body);
          return;
        }
        response.writeHead(failure.status, {
          "www-authenticate": 'Bearer realm="upstream", error="invalid_token"',
          "content-type": "application/json",
        });
        response.end(JSON.stringify({ error: "upstream says no" }));
        return;
      }
      if (request.method === "GET") {
        response.writeHead(200, {
          "content-type": "text/event-stream",
          "set-cookie": "upstream-stream=secret",
          "mcp-session-id": String(request.headers["mcp-session-id"] ?? ""),
        });
        eventNumber += 1;
        const lastEventId = request.headers["last-event-id"];
        response.write(
          `id: upstream-event-${eventNumber}\ndata: ${JSON.stringify({
            jsonrpc: "2.0",
            method: "notifications/message",
            params: { level: "info", data: { replayedAfter: lastEventId ?? null } },
          })}\n\n`,
        );
        return; // held open until the client leaves
      }
      if (request.method === "DELETE") {
        response.writeHead(200);
        response.end();
        return;
      }
      if (message.id === undefined) {
        response.writeHead(202);
        response.end();
        return;
      }
      const headers: Record<string, string> = {
        "content-type": "application/json",
        "set-cookie": "upstream-session=secret; HttpOnly",
        "x-upstream-internal": "internal-detail",
      };
      if (isInitialize) {
        const sessionId = `upstream-${randomBytes(8).toString("hex")}`;
        sessionIds.push(sessionId);
        headers["mcp-session-id"] = sessionId;
      } else {
        headers["mcp-session-id"] = String(request.headers["mcp-session-id"] ?? "");
      }
      const result = isInitialize
        ? {
            protocolVersion: "2025-11-25",
            capabilities: { tools: {} },
            serverInfo: { name: "recording-upstream", version: "1.0.0" },
          }
        : { tools: [] };
      response.writeHead(200, headers);
      response.end(JSON.stringify({ jsonrpc: "2.0", id: message.id, result }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    requests,
    sessionIds,
    failWith(status, options = {}) {
      failure =
        status === null
          ? null
          : { status, includeInitialize: options.includeInitialize === true, body: options.body };
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
