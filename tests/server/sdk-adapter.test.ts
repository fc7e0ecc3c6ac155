/**
 * The SDK integration end to end: an MCP server built with the official v2 server SDK, mounted with
 * `createNodeMcpListener` + `fromAssertion`, behind the real gateway, called with the official v2
 * client. Tool handlers get the gateway-verified principal through `principalOf(ctx)`; a request that
 * did not come through the gateway (no assertion, or one signed by someone else) never reaches them.
 */
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { createMcpHandler, McpServer } from "@modelcontextprotocol/server";
import { SignJWT } from "jose";
import { createAssertionVerifier } from "../../src/server/assertion-verifier.ts";
import { createNodeMcpListener, fromAssertion, principalOf } from "../../src/server/mcp-node-listener.ts";
import { type Harness, startHarness, TEST_ISSUER } from "../support/gateway-harness.ts";
import { makeSigningKey } from "../support/token-issuer.ts";

const MODERN = "2026-07-28";

describe("SDK integration: the verified principal in tool handlers", () => {
  let server: Server;
  let serverUrl: string;
  let harness: Harness;
  let handlerCalls = 0;
  let verifierReady: (verify: ReturnType<typeof fromAssertion>) => void;
  const authenticate = new Promise<ReturnType<typeof fromAssertion>>((resolve) => {
    verifierReady = resolve;
  });

  before(async () => {
    const handler = createMcpHandler(
      () => {
        const mcp = new McpServer({ name: "sdk-adapter-test", version: "0.0.0" });
        mcp.registerTool("whoami", { description: "who the gateway says is calling" }, async (ctx) => {
          handlerCalls += 1;
          const principal = principalOf(ctx);
          return {
            content: [
              {
                type: "text",
                text: JSON.stringify({
                  issuer: principal.issuer,
                  subject: principal.subject,
                  tenant: principal.tenant,
                }),
              },
            ],
          };
        });
        return mcp;
      },
      { legacy: "stateless", onerror: () => {} },
    );
    // The listener needs the gateway's address for the verifier; it is known once the gateway runs.
    const listener = createNodeMcpListener(handler, {
      authenticate: async (request) => (await authenticate)(request),
    });
    server = createServer(listener);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    serverUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`;
    harness = await startHarness({
      upstreams: [{ name: "author", path: "/mcp", url: serverUrl, protocolVersions: [MODERN, "2025-11-25"] }],
    });
    verifierReady(
      fromAssertion(
        createAssertionVerifier({
          issuer: harness.url,
          audience: serverUrl,
          jwks: new URL(`${harness.url}/.well-known/jwks.json`),
        }),
      ),
    );
  });
  after(async () => {
    await harness?.close();
    await new Promise((resolve) => server?.close(resolve));
  });

  async function whoamiAs(token: string): Promise<Record<string, string>> {
    const transport = new StreamableHTTPClientTransport(new URL(`${harness.url}/mcp`), {
      requestInit: { headers: { authorization: `Bearer ${token}` } },
    });
    const client = new Client(
      { name: "sdk-adapter-e2e", version: "0.0.0" },
      { versionNegotiation: { mode: "auto" } },
    );
    await client.connect(transport);
    try {
      const result = await client.callTool({ name: "whoami", arguments: {} });
      const [first] = result.content as Array<{ type: string; text: string }>;
      return JSON.parse(first?.text ?? "{}") as Record<string, string>;
    } finally {
      await client.close();
    }
  }

  it("a tool handler sees the principal the gateway verified, for each caller", async () => {
    assert.deepEqual(await whoamiAs(await harness.token("alice")), {
      issuer: TEST_ISSUER,
      subject: "alice",
      tenant: "t-alice",
    });
    assert.deepEqual(await whoamiAs(await harness.token("bob", { tenant: "globex" })), {
      issuer: TEST_ISSUER,
      subject: "bob",
      tenant: "globex",
    });
  });

  it("a request that bypasses the gateway, or carries an assertion signed by anyone else, is refused before any handler runs", async () => {
    const before = handlerCalls;
    const call = (headers: Record<string, string>) =>
      fetch(serverUrl, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          accept: "application/json, text/event-stream",
          "mcp-protocol-version": MODERN,
          "mcp-method": "tools/call",
          "mcp-name": "whoami",
          ...headers,
        },
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 1,
          method: "tools/call",
          params: {
            name: "whoami",
            arguments: {},
            _meta: { "io.modelcontextprotocol/protocolVersion": MODERN },
          },
        }),
      });
    const missing = await call({});
    assert.equal(missing.status, 401);
    const forgerKey = await makeSigningKey("EdDSA", "forger");
    const forged = await new SignJWT({
      sub: "alice",
      tenant: "t-alice",
      principal_iss: TEST_ISSUER,
      jti: "x",
    })
      .setProtectedHeader({ alg: "EdDSA", typ: "tenantgate-assertion+jwt", kid: "forger" })
      .setIssuer(harness.url)
      .setAudience(serverUrl)
      .setIssuedAt()
      .setExpirationTime("60s")
      .sign(forgerKey.privateKey);
    const refused = await call({ "tenantgate-assertion": forged });
    assert.equal(refused.status, 401);
    const body = (await refused.json()) as { error: { data: { code: string } } };
    assert.equal(body.error.data.code, "ERR_AUTH_INVALID");
    assert.equal(handlerCalls, before, "no handler ran");
  });
});
