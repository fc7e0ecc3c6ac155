/**
 * Driving the stdio bridge (src/upstreams/stdio-upstream.ts) directly, as the gateway does: request
 * objects that carry a principal, against real child processes (the probe server in
 * tests/support/stdio-probe-server.ts). Shared by the bridge's tests and its reviews.
 */
import assert from "node:assert/strict";
import type { Readable } from "node:stream";
import { after } from "node:test";
import { fileURLToPath } from "node:url";
import type { StdioUpstreamConfig } from "../../src/config/gateway-config.ts";
import type { UpstreamClient } from "../../src/gateway/upstream-client.ts";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";
import {
  createStdioUpstreamClient,
  type StdioProcessEvent,
  type StdioUpstreamOptions,
} from "../../src/upstreams/stdio-upstream.ts";
import type { Vault } from "../../src/vault/vault.ts";
import { PROCESS_WAIT_MS } from "./process-watch.ts";
import { createVaultDouble } from "./vault-double.ts";

export const PROBE = fileURLToPath(new URL("./stdio-probe-server.ts", import.meta.url));
export const MODERN_VERSION = "2026-07-28";
export const LEGACY_VERSION = "2025-11-25";

export function testPrincipal(
  subject: string,
  tenant = "acme",
  issuer = "https://issuer.example",
): Principal {
  return makePrincipal({ kind: "jwt", issuer, subject, tenant, scopes: [], expiresAt: null });
}

/** A command upstream running the probe server; `overrides` replace fields. */
export function probeUpstream(overrides: Partial<StdioUpstreamConfig> = {}): StdioUpstreamConfig {
  return {
    transport: "stdio",
    name: "probe",
    path: "/probe",
    audience: "http://127.0.0.1/probe",
    scopes: [],
    protocolVersions: undefined,
    inject: {},
    command: process.execPath,
    args: [PROBE],
    env: {},
    stdio: {},
    ...overrides,
  };
}

export async function readBody(body: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks).toString("utf8");
}

export interface BridgeUnderTest {
  readonly client: UpstreamClient;
  readonly events: StdioProcessEvent[];
  /** The processes' stderr lines, as the gateway's log would get them. */
  readonly stderr: string[];
}

/**
 * Opens bridges serving modern requests per principal (unless `options` says otherwise) to the probe
 * with `env`, recording events and stderr; every one is closed after the test file.
 */
export function modernBridges(): (
  options?: StdioUpstreamOptions,
  env?: Record<string, string>,
) => BridgeUnderTest {
  const clients: UpstreamClient[] = [];
  after(async () => {
    await Promise.all(clients.map((client) => client.close()));
  });
  return (options = {}, env = {}) => {
    const events: StdioProcessEvent[] = [];
    const stderr: string[] = [];
    const client = createStdioUpstreamClient(probeUpstream({ env }), {
      modern: "per-principal",
      startTimeoutMs: PROCESS_WAIT_MS,
      onEvent: (event) => events.push(event),
      onStderr: (line) => stderr.push(line),
      ...options,
    });
    clients.push(client);
    return { client, events, stderr };
  };
}

/** A 2026-07-28 request's `_meta` as the gateway forwards it: the envelope, and `extra`. */
export function modernEnvelope(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": { name: "modern-test", version: "1.0.0" },
    ...extra,
  };
}

/** A modern POST of `message` (`jsonrpc` added); the whole answer. */
export async function modernPost(
  client: UpstreamClient,
  caller: Principal,
  message: Record<string, unknown>,
  options: { readonly signal?: AbortSignal; readonly accept?: string } = {},
): Promise<{ status: number; headers: Record<string, unknown>; text: string }> {
  const answer = await client.request({
    method: "POST",
    headers: {
      "content-type": "application/json",
      accept: options.accept ?? "application/json, text/event-stream",
      "mcp-protocol-version": MODERN_VERSION,
    },
    body: Buffer.from(JSON.stringify({ jsonrpc: "2.0", ...message })),
    principal: caller,
    ...(options.signal !== undefined ? { signal: options.signal } : {}),
  });
  const text = await readBody(answer.body);
  return { status: answer.status, headers: answer.headers as Record<string, unknown>, text };
}

/** A modern tools/call of the probe; its answer's id and `resultType`, and the tool's JSON result. */
export async function modernToolCall(
  client: UpstreamClient,
  caller: Principal,
  name: string,
  args: Record<string, unknown> = {},
  options: {
    readonly id?: number | string;
    readonly meta?: Record<string, unknown>;
    readonly signal?: AbortSignal;
  } = {},
): Promise<{ id: unknown; resultType: unknown; value: Record<string, unknown> }> {
  const answer = await modernPost(
    client,
    caller,
    {
      id: options.id ?? 1,
      method: "tools/call",
      params: { name, arguments: args, _meta: modernEnvelope(options.meta) },
    },
    options.signal !== undefined ? { signal: options.signal } : {},
  );
  assert.equal(answer.status, 200, answer.text);
  const json = JSON.parse(answer.text) as {
    id: unknown;
    result?: { resultType: unknown; content: { text: string }[] };
  };
  assert.ok(json.result, `no result: ${answer.text}`);
  return {
    id: json.id,
    resultType: json.result.resultType,
    value: JSON.parse(json.result.content[0]?.text ?? "null") as Record<string, unknown>,
  };
}

/** A modern tools/call of the probe; the tool's JSON result. */
export async function modernToolValue(
  client: UpstreamClient,
  caller: Principal,
  name: string,
  args: Record<string, unknown> = {},
  signal?: AbortSignal,
): Promise<Record<string, unknown>> {
  return (await modernToolCall(client, caller, name, args, signal !== undefined ? { signal } : {})).value;
}

/** A legacy POST (2025-11-25): `initialize` without a session id, or a message in a session. */
export async function legacyPost(
  client: UpstreamClient,
  caller: Principal,
  message: Record<string, unknown>,
  session?: string,
  signal?: AbortSignal,
): Promise<{ status: number; session: string | undefined; json: Record<string, unknown> }> {
  const answer = await client.request({
    method: "POST",
    headers: {
      "content-type": "application/json",
      "mcp-protocol-version": LEGACY_VERSION,
      ...(session !== undefined ? { "mcp-session-id": session } : {}),
    },
    body: Buffer.from(JSON.stringify({ jsonrpc: "2.0", ...message })),
    principal: caller,
    ...(signal !== undefined ? { signal } : {}),
  });
  const text = await readBody(answer.body);
  return {
    status: answer.status,
    session: answer.headers["mcp-session-id"] as string | undefined,
    json: (text === "" ? {} : JSON.parse(text)) as Record<string, unknown>,
  };
}

export function countEvents(events: readonly StdioProcessEvent[], type: StdioProcessEvent["type"]): number {
  return events.filter((event) => event.type === type).length;
}

/** The vault test double, whose next `reveal` answers what it read only once `release` is called. */
export function heldVault(): {
  vault: Vault;
  put: Vault["put"];
  remove: Vault["delete"];
  holdNext(): () => void;
} {
  const inner = createVaultDouble();
  let hold: Promise<void> | undefined;
  const vault: Vault = {
    ...inner,
    async reveal(owner, names) {
      const gate = hold;
      hold = undefined;
      const answer = await inner.reveal(owner, names);
      if (gate !== undefined) await gate;
      return answer;
    },
  };
  return {
    vault,
    put: inner.put,
    remove: inner.delete,
    holdNext() {
      let release!: () => void;
      hold = new Promise((done) => {
        release = done;
      });
      return release;
    },
  };
}
