import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as delay } from "node:timers/promises";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import { createLocalJWKSet, createRemoteJWKSet, type JSONWebKeySet, type JWTVerifyGetKey } from "jose";
import { z } from "zod";
import { BoundedEventStore } from "./bounded-event-store.ts";
import { type VerifiedAssertion, verifyTenantgateAssertion } from "./verify-assertion.ts";

/**
 * The demo upstream: a small multi-user MCP server meant to sit behind tenantgate. It trusts no
 * client directly; every request must carry the gateway's `Tenantgate-Assertion`, and each caller
 * sees only their own notes.
 *
 * It speaks the legacy (sessionful) era only: SDK v1 supports protocol versions up to 2025-11-25
 * and answers a request naming any other `MCP-Protocol-Version` with 400.
 */

export interface DemoUpstreamOptions {
  /** Default 127.0.0.1: the demo is meant to be reached through the gateway, not directly. */
  readonly host?: string;
  /** Default 0 (any free port). */
  readonly port?: number;
  /** The gateway to trust, when known at start; otherwise call `trustGateway` once it is. */
  readonly gateway?: GatewayTrust;
}

export interface GatewayTrust {
  /** The gateway's publicUrl. */
  readonly issuer: string;
  /** The audience the gateway signs for this upstream. Default: this upstream's own URL. */
  readonly audience?: string;
  /** The gateway's `/.well-known/jwks.json`. Exactly one of `jwksUrl` and `jwks`. */
  readonly jwksUrl?: string;
  /** The gateway's JWKS itself (tests, or a gateway in the same process). */
  readonly jwks?: { readonly keys: readonly object[] };
}

export interface DemoUpstream {
  /** `http://host:port/mcp` */
  readonly url: string;
  /**
   * Sets the gateway whose assertions are accepted. Until it is called every request is refused
   * (401): an upstream that trusts nobody yet must not trust everybody.
   */
  trustGateway(gateway: GatewayTrust): void;
  close(): Promise<void>;
}

export const MCP_PATH = "/mcp";
export const ASSERTION_HEADER = "tenantgate-assertion";
const MAX_BODY_BYTES = 1024 * 1024;
const MAX_NOTES_PER_CALLER = 1000;
const MAX_NOTE_LENGTH = 4096;

interface Session {
  readonly caller: VerifiedAssertion;
  readonly transport: StreamableHTTPServerTransport;
  readonly server: McpServer;
}

export async function startDemoUpstream(options: DemoUpstreamOptions): Promise<DemoUpstream> {
  const { host = "127.0.0.1", port = 0 } = options;
  let trust: { issuer: string; audience: string | undefined; keys: JWTVerifyGetKey } | undefined;
  let ownUrl = "";
  const trustGateway = (gateway: GatewayTrust) => {
    const { issuer, audience } = gateway;
    if (typeof issuer !== "string" || issuer === "") throw new TypeError("issuer must be a non-empty string");
    if (audience !== undefined && (typeof audience !== "string" || audience === "")) {
      throw new TypeError("audience must be a non-empty string");
    }
    trust = { issuer, audience, keys: keySource(gateway) };
  };
  if (options.gateway) trustGateway(options.gateway);
  const notes = new NoteBook();
  const sessions = new Map<string, Session>();

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Authentication first, on every request (a session is never a credential: MCP 2025-11-25
    // security best practices), and before the body is read, so an anonymous caller costs little.
    const headerValue = req.headers[ASSERTION_HEADER];
    let caller: VerifiedAssertion;
    try {
      if (trust === undefined) throw new TypeError("no gateway trusted yet");
      // A repeated header arrives as an array; there is no right one to pick, so none is accepted.
      caller = await verifyTenantgateAssertion(typeof headerValue === "string" ? headerValue : undefined, {
        issuer: trust.issuer,
        audience: trust.audience ?? ownUrl,
        keys: trust.keys,
      });
    } catch {
      // Never why: expired, wrong audience and bad signature must look alike to the caller.
      return sendError(res, 401, -32000, "Unauthorized");
    }

    if (new URL(req.url ?? "/", "http://upstream.invalid").pathname !== MCP_PATH) {
      return sendError(res, 404, -32000, "Not found");
    }

    let body: unknown;
    if (req.method === "POST") {
      const read = await readJsonBody(req);
      if (read === "too-large") return sendError(res, 413, -32000, "Request body too large");
      if (read === "invalid") return sendError(res, 400, -32700, "Parse error");
      body = read.value;
    }

    const sessionId = req.headers["mcp-session-id"];
    if (sessionId !== undefined) {
      const session = typeof sessionId === "string" ? sessions.get(sessionId) : undefined;
      // Another caller's session gets exactly what an unknown one gets (DESIGN invariant 3). The
      // gateway already enforces this; the upstream checks again so a gateway bug is not a breach.
      if (!session || !sameCaller(session.caller, caller)) {
        return sendError(res, 404, -32001, "Session not found");
      }
      return session.transport.handleRequest(req, res, body);
    }

    if (req.method !== "POST" || !isInitializeRequest(body)) {
      return sendError(res, 400, -32000, "Bad Request: Mcp-Session-Id header is required");
    }
    const server = createNotesServer(caller, notes);
    const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: randomUUID,
      // Per session, so one session's event ids can never replay another's stream.
      eventStore: new BoundedEventStore(),
      // Recorded before the response carrying the id is written, so the owner is known before
      // the client can present the id.
      onsessioninitialized: (id) => {
        sessions.set(id, { caller, transport, server });
      },
    });
    // Set before connect: the SDK chains its own handler after this one.
    transport.onclose = () => {
      const id = transport.sessionId;
      if (id !== undefined && sessions.get(id)?.transport === transport) sessions.delete(id);
    };
    await server.connect(transport);
    await transport.handleRequest(req, res, body);
  }

  // No Host or Origin check here (the SDK's DNS-rebinding protection is off by default and stays
  // off): the gateway rewrites Host to this upstream's, and a browser tricked into calling this
  // port still cannot produce a signed assertion.
  const httpServer = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) sendError(res, 500, -32603, "Internal error");
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen(port, host, () => {
      httpServer.off("error", reject);
      resolve();
    });
  });
  const address = httpServer.address() as AddressInfo;
  const urlHost = address.family === "IPv6" ? `[${address.address}]` : address.address;

  ownUrl = `http://${urlHost}:${address.port}${MCP_PATH}`;

  let closing: Promise<void> | undefined;
  return {
    url: ownUrl,
    trustGateway,
    close() {
      closing ??= (async () => {
        const open = [...sessions.values()];
        sessions.clear();
        // Closing the server closes its transport, which ends every SSE stream it holds.
        await Promise.allSettled(open.map((session) => session.server.close()));
        const closed = new Promise<void>((resolve) => httpServer.close(() => resolve()));
        // Keep-alive sockets and open streams would otherwise hold close() until they time out.
        httpServer.closeAllConnections();
        await closed;
      })();
      return closing;
    },
  };
}

function keySource(options: GatewayTrust): JWTVerifyGetKey {
  const { jwksUrl, jwks } = options;
  if ((jwksUrl === undefined) === (jwks === undefined)) {
    throw new TypeError("exactly one of jwksUrl and jwks is required");
  }
  if (jwksUrl !== undefined) {
    if (!URL.canParse(jwksUrl)) throw new TypeError("jwksUrl must be a URL");
    return createRemoteJWKSet(new URL(jwksUrl));
  }
  if (typeof jwks !== "object" || jwks === null || !Array.isArray(jwks.keys)) {
    throw new TypeError("jwks must be a JWK set");
  }
  // A copy: keys the caller edits later must not change who this server trusts.
  return createLocalJWKSet(structuredClone({ keys: jwks.keys }) as JSONWebKeySet);
}

/** The whole identity, never less: the same `sub` from another issuer or tenant is someone else. */
function sameCaller(a: VerifiedAssertion, b: VerifiedAssertion): boolean {
  return a.tenant === b.tenant && a.principalIssuer === b.principalIssuer && a.subject === b.subject;
}

/**
 * Every caller's notes, keyed by the verified identity only. Nothing a client sends (a tool
 * argument, a session id) takes part in the key, so no argument can reach another caller's notes.
 */
class NoteBook {
  readonly #notes = new Map<string, string[]>();

  #key(caller: VerifiedAssertion): string {
    // JSON of an array: unambiguous whatever characters the parts hold.
    return JSON.stringify([caller.tenant, caller.principalIssuer, caller.subject]);
  }

  /** The caller's note count after adding, or `undefined` when their notebook is full. */
  add(caller: VerifiedAssertion, text: string): number | undefined {
    const key = this.#key(caller);
    const list = this.#notes.get(key) ?? [];
    // Refuse rather than evict: dropping old notes silently would lose the caller's data.
    if (list.length >= MAX_NOTES_PER_CALLER) return undefined;
    list.push(text);
    this.#notes.set(key, list);
    return list.length;
  }

  list(caller: VerifiedAssertion): readonly string[] {
    return [...(this.#notes.get(this.#key(caller)) ?? [])];
  }
}

/**
 * One McpServer per session, built for the caller that initialized it. The HTTP layer lets only
 * that caller use the session, so `caller` here is the verified identity of every request.
 */
function createNotesServer(caller: VerifiedAssertion, notes: NoteBook): McpServer {
  const server = new McpServer(
    { name: "tenantgate-demo-upstream", version: "0.1.0" },
    // `logging` must be declared before the server may send notifications/message.
    { capabilities: { logging: {} } },
  );

  server.registerTool(
    "add_note",
    {
      description: "Adds a private note; only you can list it. Returns how many notes you have.",
      inputSchema: {
        // One line, so list_notes can return one note per line.
        text: z
          .string()
          .min(1)
          .max(MAX_NOTE_LENGTH)
          .regex(/^[^\r\n]*$/, "a note is one line"),
      },
    },
    async ({ text }) => {
      const count = notes.add(caller, text);
      if (count === undefined) {
        return { content: [{ type: "text", text: "Your notebook is full." }], isError: true };
      }
      return { content: [{ type: "text", text: String(count) }] };
    },
  );

  server.registerTool("list_notes", { description: "Lists your notes, one per line." }, async () => ({
    content: [{ type: "text", text: notes.list(caller).join("\n") }],
  }));

  server.registerTool("whoami", { description: "Who the gateway says you are." }, async () => ({
    content: [
      {
        type: "text",
        text: JSON.stringify({
          tenant: caller.tenant,
          sub: caller.subject,
          principal_iss: caller.principalIssuer,
        }),
      },
    ],
  }));

  server.registerTool(
    "count_slowly",
    {
      description: "Counts to `steps`, pausing `delayMs` between steps, reporting progress as it goes.",
      inputSchema: {
        steps: z.number().int().min(1).max(20),
        delayMs: z.number().int().min(0).max(1000),
      },
    },
    async ({ steps, delayMs }, extra) => {
      // Sent with the request's own sendNotification so they travel on this request's SSE stream
      // (and its event ids), which is what the gateway must keep bound to this caller.
      await extra.sendNotification({
        method: "notifications/message",
        params: { level: "info", logger: "count_slowly", data: `counting to ${steps}` },
      });
      const progressToken = extra._meta?.progressToken;
      for (let step = 1; step <= steps; step++) {
        // Ends the wait when the client cancels (notifications/cancelled) or the session closes.
        await delay(delayMs, undefined, { signal: extra.signal });
        if (progressToken !== undefined) {
          await extra.sendNotification({
            method: "notifications/progress",
            params: { progressToken, progress: step, total: steps, message: `step ${step} of ${steps}` },
          });
        }
      }
      return { content: [{ type: "text", text: `done ${steps}` }] };
    },
  );

  return server;
}

type BodyResult = { readonly value: unknown } | "too-large" | "invalid";

async function readJsonBody(req: IncomingMessage): Promise<BodyResult> {
  // A declared length is refused before reading a byte. A chunked body that grows too large is cut
  // off mid-stream, which resets the connection: the client may see that instead of the 413.
  if (Number(req.headers["content-length"] ?? 0) > MAX_BODY_BYTES) return "too-large";
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buffer = chunk as Buffer;
    size += buffer.byteLength;
    if (size > MAX_BODY_BYTES) return "too-large";
    chunks.push(buffer);
  }
  try {
    return { value: JSON.parse(Buffer.concat(chunks).toString("utf8")) };
  } catch {
    return "invalid";
  }
}

/** A JSON-RPC error with no request id, the shape the SDK uses for HTTP-level refusals. */
function sendError(res: ServerResponse, status: number, code: number, message: string): void {
  const body = JSON.stringify({ jsonrpc: "2.0", error: { code, message }, id: null });
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}
