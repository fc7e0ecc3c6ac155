/**
 * `npm run demo`: a guided tour of what tenantgate stops, against the same gateway `tenantgate demo`
 * runs (in a temporary folder, on a free loopback port).
 *
 * alice works normally through the official SDK client. bob, a user of another tenant holding a
 * valid token of his own, then tries to reach alice's session every way a client can: her session
 * id with his token (POST, GET stream, DELETE), her session id with no token, a forged identity
 * header, and his own session asking for her notes. Each attempt prints the answer and the security
 * event the gateway recorded. The tour exits 1 if any of bob's attempts gets through.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { SecurityEventRecord } from "../src/audit/security-events.ts";
import { startDemo } from "../src/cli/demo.ts";

const events: SecurityEventRecord[] = [];
const dir = await mkdtemp(join(tmpdir(), "tenantgate-demo-"));
const demo = await startDemo({
  dir,
  port: 0,
  sinks: [{ write: (record) => void events.push(record) }],
  eventsOut: new Writable({ write: (_chunk, _encoding, done) => done() }),
  // The tour prints each attempt's answer and event itself; the gateway's access lines would bury them.
  log: () => undefined,
});
const { mcpUrl, tokens } = demo;
const say = (line: string) => process.stdout.write(`${line}\n`);
let breaches = 0;

function textOf(result: unknown): string {
  const content = (result as { content?: Array<{ text?: string }> }).content ?? [];
  return content.map((part) => part.text ?? "").join("");
}

async function connect(token: string): Promise<{ client: Client; sessionId: string }> {
  const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
  });
  const client = new Client({ name: "demo-walkthrough", version: "1.0.0" });
  await client.connect(transport);
  return { client, sessionId: transport.sessionId ?? "" };
}

/** One of bob's attempts: it must be refused with `expected`; anything else is a breach. */
async function attempt(
  title: string,
  expected: number,
  request: { method: string; headers: Record<string, string>; body?: unknown },
): Promise<void> {
  const before = events.length;
  const response = await fetch(mcpUrl, {
    method: request.method,
    headers: {
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      "mcp-protocol-version": "2025-11-25",
      ...request.headers,
    },
    ...(request.body === undefined ? {} : { body: JSON.stringify(request.body) }),
  });
  const text = await response.text();
  const refused = response.status === expected;
  if (!refused) breaches += 1;
  say(`  ${refused ? "refused" : "BREACH "}  ${title}: HTTP ${response.status} ${text.slice(0, 120)}`);
  for (const event of events.slice(before)) say(`           event: ${JSON.stringify(event)}`);
}

try {
  say(`tenantgate demo walkthrough: gateway at ${mcpUrl}\n`);
  say("1. alice connects with the official MCP SDK client and writes a private note");
  const alice = await connect(tokens.alice);
  await alice.client.callTool({ name: "add_note", arguments: { text: "alice: the launch is on Friday" } });
  say(
    `   alice's notes: ${JSON.stringify(textOf(await alice.client.callTool({ name: "list_notes", arguments: {} })))}`,
  );
  say("   (alice's client holds the gateway's session id; the upstream's own id never leaves the gateway)\n");

  say("2. bob (another tenant, with a valid token of his own) goes after alice's session");
  const bob = { authorization: `Bearer ${tokens.bob}` };
  const listNotes = {
    jsonrpc: "2.0",
    id: 7,
    method: "tools/call",
    params: { name: "list_notes", arguments: {} },
  };
  await attempt("alice's session id with bob's token", 404, {
    method: "POST",
    headers: { ...bob, "mcp-session-id": alice.sessionId },
    body: listNotes,
  });
  await attempt("alice's session id and a forged Tenantgate-Assertion", 404, {
    method: "POST",
    headers: { ...bob, "mcp-session-id": alice.sessionId, "tenantgate-assertion": "forged.alice.assertion" },
    body: listNotes,
  });
  await attempt("alice's session id with no token at all", 401, {
    method: "POST",
    headers: { "mcp-session-id": alice.sessionId },
    body: listNotes,
  });
  await attempt("open alice's notification stream", 404, {
    method: "GET",
    headers: { ...bob, "mcp-session-id": alice.sessionId, accept: "text/event-stream" },
  });
  await attempt("end alice's session (DELETE)", 404, {
    method: "DELETE",
    headers: { ...bob, "mcp-session-id": alice.sessionId },
  });
  await attempt("a request with no session id (no 'most recent session' to inherit)", 400, {
    method: "POST",
    headers: bob,
    body: listNotes,
  });

  const own = await connect(tokens.bob);
  const bobsNotes = textOf(await own.client.callTool({ name: "list_notes", arguments: { owner: "alice" } }));
  const leaked = bobsNotes.includes("launch");
  if (leaked) breaches += 1;
  say(
    `  ${leaked ? "BREACH " : "refused"}  bob's own session asking for alice's notes by argument: ${JSON.stringify(bobsNotes)}`,
  );
  await own.client.close();

  say("\n3. alice is unaffected");
  say(
    `   alice's notes: ${JSON.stringify(textOf(await alice.client.callTool({ name: "list_notes", arguments: {} })))}`,
  );
  await alice.client.close();

  say(
    breaches === 0
      ? "\nEvery attempt of bob's was refused, each with a security event. Run `./run demo` to try it yourself."
      : `\n${breaches} of bob's attempts got through: this is a bug; please report it.`,
  );
} finally {
  await demo.close();
  await rm(dir, { recursive: true, force: true });
}
process.exit(breaches === 0 ? 0 : 1);
