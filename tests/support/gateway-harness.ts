/**
 * A real gateway for end-to-end tests: `startGateway` on 127.0.0.1 port 0 with a real store, a test
 * issuer (real EdDSA keys, a JWKS file) and, unless the test brings its own, the bundled demo
 * upstream trusting the gateway's published keys. Events are collected through an extra sink, so
 * tests assert on exactly what the audit trail would receive. `TG_TEST_PROFILE` adds its
 * settings for the top-level keys the config does not set (tests/support/test-profile.ts).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import { type DemoUpstream, startDemoUpstream } from "../../examples/demo-upstream/server.ts";
import type { SecurityEventRecord } from "../../src/audit/security-events.ts";
import { parseConfig } from "../../src/config/load-config.ts";
import { type RunningGateway, startGateway } from "../../src/gateway/start-gateway.ts";
import type { Store } from "../../src/store/contract.ts";
import { openStore } from "../../src/store/open-store.ts";
import { withTestProfile } from "./test-profile.ts";
import { makeSigningKey, nowSeconds, type SigningKey, signToken, writeJwksFile } from "./token-issuer.ts";

export const TEST_ISSUER = "https://issuer.test";
export const OTHER_ISSUER = "https://other-issuer.test";

export interface HarnessUpstream {
  readonly name: string;
  readonly path: string;
  /** Defaults to the demo upstream's URL. */
  readonly url?: string;
  readonly scopes?: readonly string[];
  /** Default: the three legacy versions. */
  readonly protocolVersions?: readonly string[];
}

export interface HarnessOptions {
  /** A store URL; default `memory:`. */
  readonly store?: string;
  readonly anonymous?: boolean;
  readonly upstreams?: readonly HarnessUpstream[];
  /** Settings merged over the generated config (top-level keys replace). */
  readonly extra?: Record<string, unknown>;
  /** The gateway gets the opened store through this (e.g. to observe its operations). */
  readonly wrapStore?: (store: Store) => Store;
}

export interface TokenOptions {
  readonly audience?: string;
  readonly issuer?: "main" | "other";
  readonly scope?: string;
  readonly expiresIn?: number;
  readonly tenant?: string | null;
}

export interface Harness {
  readonly gateway: RunningGateway;
  /** The gateway's base URL (publicUrl). */
  readonly url: string;
  /** The demo upstream (always started; the default target). */
  readonly demo: DemoUpstream;
  readonly events: SecurityEventRecord[];
  /** A bearer token for `subject` in `tenant` (default tenant: "t-" + subject), for `/mcp` by default. */
  token(subject: string, options?: TokenOptions): Promise<string>;
  /** The issuers' signing keys, for tokens `token` cannot make (odd claims, odd headers). */
  readonly keys: Readonly<Record<"main" | "other", SigningKey>>;
  close(): Promise<void>;
}

export async function startHarness(options: HarnessOptions = {}): Promise<Harness> {
  const mainKey = await makeSigningKey("EdDSA", "main");
  const otherKey = await makeSigningKey("EdDSA", "other");
  const mainJwks = await writeJwksFile({ keys: [mainKey.publicJwk] });
  const otherJwks = await writeJwksFile({ keys: [otherKey.publicJwk] });
  const demo = await startDemoUpstream({});
  const events: SecurityEventRecord[] = [];
  const masterKey = randomBytes(32).toString("base64url");
  let gateway: RunningGateway | undefined;
  let opened: Store | undefined;
  try {
    const upstreams = (options.upstreams ?? [{ name: "notes", path: "/mcp" }]).map((upstream) => ({
      name: upstream.name,
      path: upstream.path,
      url: upstream.url ?? demo.url,
      scopes: upstream.scopes ?? [],
      protocolVersions: upstream.protocolVersions ?? ["2025-03-26", "2025-06-18", "2025-11-25"],
    }));
    const issuer = (iss: string, jwksFile: string) => ({
      issuer: iss,
      jwksFile,
      algorithms: ["EdDSA"],
      tenantClaim: "tenant",
    });
    const config = parseConfig(
      withTestProfile({
        listen: { host: "127.0.0.1", port: 0 },
        store: options.store ?? "memory:",
        secrets: { masterKey: "env:TG_TEST_MASTER_KEY" },
        auth: {
          issuers: [issuer(TEST_ISSUER, mainJwks.path), issuer(OTHER_ISSUER, otherJwks.path)],
          ...(options.anonymous ? { anonymous: true } : {}),
        },
        upstreams,
        audit: { stdout: true },
        admin: { listen: { port: 0 } },
        ...options.extra,
      }),
      { env: {} },
    );
    if (options.wrapStore) opened = await openStore(config.store);
    gateway = await startGateway(config, {
      ...(opened && options.wrapStore ? { store: options.wrapStore(opened) } : {}),
      env: { TG_TEST_MASTER_KEY: masterKey },
      sinks: [{ write: (record) => void events.push(record) }],
      // The JSON-lines sink runs as in production; its lines are discarded here.
      eventsOut: new Writable({ write: (_chunk, _encoding, done) => done() }),
      // Log lines are discarded too, unless the config names a log file (the bench profile does:
      // the gateway then writes its access log there, as the benchmarked one does).
      ...(config.log.file === undefined ? { log: () => undefined } : {}),
    });
    // Port 0: the gateway rewrote its publicUrl to the bound port; tokens carry publicUrl + path.
    const publicUrl = gateway.config.publicUrl;
    demo.trustGateway({ issuer: publicUrl, jwksUrl: `${gateway.url}/.well-known/jwks.json` });
    const running = gateway;
    const keyOf = (which: "main" | "other"): [SigningKey, string] =>
      which === "main" ? [mainKey, TEST_ISSUER] : [otherKey, OTHER_ISSUER];
    return {
      gateway: running,
      url: running.url,
      demo,
      events,
      async token(subject, tokenOptions = {}) {
        const [key, iss] = keyOf(tokenOptions.issuer ?? "main");
        const tenant = tokenOptions.tenant === undefined ? `t-${subject}` : tokenOptions.tenant;
        return signToken(key, {
          iss,
          sub: subject,
          aud: tokenOptions.audience ?? `${publicUrl}/mcp`,
          iat: nowSeconds(),
          exp: nowSeconds() + (tokenOptions.expiresIn ?? 600),
          ...(tenant === null ? {} : { tenant }),
          ...(tokenOptions.scope !== undefined ? { scope: tokenOptions.scope } : {}),
        });
      },
      keys: Object.freeze({ main: mainKey, other: otherKey }),
      async close() {
        await running.close({ graceMs: 1_000 });
        await opened?.close();
        await demo.close();
        await mainJwks.cleanup();
        await otherJwks.cleanup();
      },
    };
  } catch (error) {
    await gateway?.close({ graceMs: 0 });
    await opened?.close();
    await demo.close();
    await mainJwks.cleanup();
    await otherJwks.cleanup();
    throw error;
  }
}

/** Headers of a legacy MCP POST. */
export function mcpHeaders(extra: Record<string, string> = {}): Record<string, string> {
  return {
    "content-type": "application/json",
    accept: "application/json, text/event-stream",
    ...extra,
  };
}

export const INITIALIZE = Object.freeze({
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "e2e", version: "1" } },
});

/** Initializes a session with raw HTTP; returns the gateway's session id. */
export async function initializeSession(url: string, token: string | undefined): Promise<string> {
  const response = await fetch(url, {
    method: "POST",
    headers: mcpHeaders(token ? { authorization: `Bearer ${token}` } : {}),
    body: JSON.stringify(INITIALIZE),
  });
  await response.arrayBuffer();
  const sessionId = response.headers.get("mcp-session-id");
  if (response.status !== 200 || !sessionId) {
    throw new Error(`initialize through the gateway failed with ${response.status}`);
  }
  return sessionId;
}

/** A `tools/list` on a legacy (2025-11-25) session, as its owner would send it. */
export function sessionToolsList(url: string, token: string, sessionId: string): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: mcpHeaders({
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-11-25",
    }),
    body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
  });
}

/** The refusal a caller without a credential an upstream needs gets: 403, the entry to enroll named. */
export async function assertCredentialRequired(response: Response, credential: string): Promise<void> {
  assert.equal(response.status, 403);
  const body = (await response.json()) as { error: { data: Record<string, unknown> } };
  assert.deepEqual(body.error.data, { code: "ERR_CREDENTIAL_REQUIRED", credential });
}
