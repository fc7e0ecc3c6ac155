/**
 * A third-party MCP server behind the gateway: `@modelcontextprotocol/server-everything` run as its
 * own process (`mcp-server-everything streamableHttp`, endpoint /mcp), the gateway as a `serve`
 * process in anonymous mode on loopback (server-everything verifies no assertions), and the legacy
 * SDK client: initialize, tools, progress on the request's SSE stream, resumption with
 * Last-Event-ID after a dropped stream, and DELETE.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";
import { mcpHeaders } from "../support/gateway-harness.ts";
import {
  type GatewayProcess,
  type ServerEverything,
  spawnGateway,
  startServerEverything,
} from "../support/processes.ts";

const LONG_RUNNING = "trigger-long-running-operation";

function textOf(result: unknown): string {
  const content = (result as { content?: Array<{ type: string; text?: string }> }).content ?? [];
  return content.map((part) => part.text ?? "").join("");
}

describe("server-everything behind a gateway process (anonymous mode)", () => {
  let everything: ServerEverything | undefined;
  let gateway: GatewayProcess | undefined;
  let endpoint: string;
  const opened: Array<{ close(): Promise<void> }> = [];

  async function connect(): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> {
    const transport = new StreamableHTTPClientTransport(new URL(endpoint));
    const client = new Client({ name: "e2e-everything", version: "1.0.0" });
    await client.connect(transport);
    opened.push(client);
    return { client, transport };
  }

  before(async () => {
    everything = await startServerEverything();
    gateway = await spawnGateway({
      config: {
        listen: { host: "127.0.0.1", port: 0 },
        store: "memory:",
        secrets: { masterKey: "env:TG_EVERYTHING_MASTER_KEY" },
        auth: { anonymous: true },
        upstreams: [{ name: "everything", path: "/mcp", url: everything.url }],
        audit: { stdout: true },
        admin: { listen: { port: 0 } },
      },
      env: { TG_EVERYTHING_MASTER_KEY: randomBytes(32).toString("base64url") },
    });
    endpoint = `${gateway.url}/mcp`;
  });

  after(async () => {
    await Promise.allSettled(opened.map((client) => client.close()));
    await gateway?.close();
    await everything?.close();
  });

  it("the legacy SDK client initializes through the gateway and lists server-everything's tools", async () => {
    const { client, transport } = await connect();
    // The client holds the gateway's id; server-everything's own ids are UUIDs, never seen here.
    assert.match(transport.sessionId ?? "", /^[A-Za-z0-9_-]{32,}$/);
    assert.doesNotMatch(transport.sessionId ?? "", /^[0-9a-f]{8}-[0-9a-f]{4}-/);
    assert.equal(client.getServerVersion()?.name, "mcp-servers/everything");
    const { tools } = await client.listTools();
    const names = tools.map((tool) => tool.name);
    for (const name of ["echo", LONG_RUNNING]) assert.ok(names.includes(name), `${name} in ${names}`);
  });

  it("calls the echo tool", async () => {
    const { client } = await connect();
    const result = await client.callTool({ name: "echo", arguments: { message: "through tenantgate" } });
    assert.equal(textOf(result), "Echo: through tenantgate");
  });

  it("progress notifications of a long-running operation arrive on the request's SSE stream", async () => {
    const { client } = await connect();
    const progress: number[] = [];
    const result = await client.callTool(
      { name: LONG_RUNNING, arguments: { duration: 0.3, steps: 3 } },
      undefined,
      {
        onprogress: (update) => progress.push(update.progress),
      },
    );
    assert.match(textOf(result), /Long running operation completed/);
    assert.deepEqual(progress, [1, 2, 3]);
  });

  it("a dropped stream resumes with Last-Event-ID: the rest of the progress and the result are replayed", async () => {
    const steps = 4;
    const duration = 0.8;
    const first = await connect();
    const sessionId = first.transport.sessionId ?? "";
    let resumptionToken: string | undefined;
    let firstProgress: () => void = () => undefined;
    const sawProgress = new Promise<void>((resolve) => {
      firstProgress = resolve;
    });
    // Request id 1 (initialize was 0): its progress token is 1.
    const abandoned = first.client
      .callTool({ name: LONG_RUNNING, arguments: { duration, steps } }, undefined, {
        onprogress: () => firstProgress(),
        onresumptiontoken: (token) => {
          resumptionToken = token;
        },
      })
      .catch((error: unknown) => error);
    await sawProgress;
    const token = resumptionToken;
    assert.ok(token, "the stream carried event ids (the gateway's wrapped form)");
    // The client drops the stream mid-call (no DELETE, no cancellation).
    await first.transport.close();
    assert.ok((await abandoned) instanceof Error, "the dropped request failed on the first client");
    // server-everything's event store replays only what it has stored, and routes nothing live to a
    // resumed stream, so the resume waits for the operation to finish (the gateway keeps reading
    // the upstream's stream after the client left: a disconnect does not cancel the request).
    await delay(duration * 1000 + 700);

    const transport = new StreamableHTTPClientTransport(new URL(endpoint), { sessionId });
    const client = new Client({ name: "e2e-everything-resumed", version: "1.0.0" });
    await client.connect(transport); // a transport with a session id skips initialize
    opened.push(client);
    await client.ping(); // request id 0, so the resumed request is id 1 like the dropped one
    const replayed: number[] = [];
    const result = await client.request(
      { method: "tools/call", params: { name: LONG_RUNNING, arguments: { duration, steps } } },
      CallToolResultSchema,
      { resumptionToken: token, onprogress: (update) => replayed.push(update.progress) },
    );
    assert.match(textOf(result), /Long running operation completed\. Duration: 0\.8 seconds, Steps: 4/);
    assert.deepEqual(replayed, [2, 3, 4], "progress after the presented event id was replayed");
    assert.ok(
      !gateway?.events.some((event) => event["type"] === "stream.event-id-refused"),
      "the gateway accepted its own wrapped event id for this session",
    );
  });

  it("DELETE (terminateSession) ends the session on the gateway: the id is then unknown", async () => {
    const { transport } = await connect();
    const sessionId = transport.sessionId ?? "";
    await transport.terminateSession();
    assert.equal(transport.sessionId, undefined);
    const response = await fetch(endpoint, {
      method: "POST",
      headers: mcpHeaders({ "mcp-session-id": sessionId, "mcp-protocol-version": "2025-11-25" }),
      body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
    });
    assert.equal(response.status, 404);
    const body = (await response.json()) as { error: { data: { code: string } } };
    assert.equal(body.error.data.code, "ERR_SESSION_NOT_FOUND");
    assert.ok(
      gateway?.events.some((event) => event["type"] === "session.ended" && event["by"] === "client"),
      "the DELETE was audited as the client ending its session",
    );
  });
});
