/**
 * The library's example server (examples/tasks-server) end to end with the official v2 SDK client:
 * alice starts a long analysis, polls its progress at the REST endpoint with her poll token, fetches
 * the result with a single-use download token, uploads through a signed URL, keeps and recalls state,
 * pairs a device and fetches a page through safeFetch; bob, holding every one of alice's tokens,
 * handles, codes and URLs, gets nothing (THREATS T2, T4, T5, T6).
 */
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { startTasksServer, type TasksServer } from "../../examples/tasks-server/server.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { createAuthenticator } from "../../src/identity/authenticate.ts";
import { createJwtAuthenticator } from "../../src/identity/jwt-authenticator.ts";
import { fromBearer } from "../../src/server/mcp-node-listener.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { makeSigningKey, nowSeconds, signToken, writeJwksFile } from "../support/token-issuer.ts";

const ISSUER = "https://issuer.example";

describe("example: an SDK server using every library primitive", () => {
  let server: TasksServer;
  let page: Server;
  let pageUrl: string;
  let store: MemoryStore;
  let jwks: { path: string; cleanup(): Promise<void> };
  let tokenFor: (subject: string) => Promise<string>;

  before(async () => {
    const key = await makeSigningKey("EdDSA", "example");
    jwks = await writeJwksFile({ keys: [key.publicJwk] });
    store = new MemoryStore();
    // A page for fetch_title, on loopback: the test's policy allows exactly this address.
    page = createServer((_, response) => response.end("<html><title>Hello from a page</title></html>"));
    await new Promise<void>((resolve) => page.listen(0, "127.0.0.1", resolve));
    pageUrl = `http://page.example:${(page.address() as AddressInfo).port}/`;
    let audience = "";
    const authenticator = createAuthenticator({
      jwt: createJwtAuthenticator({
        issuers: [
          {
            issuer: ISSUER,
            jwksFile: jwks.path,
            algorithms: ["EdDSA"],
            clockSkewMs: 30_000,
            tenantClaim: "tenant",
          },
        ],
      }),
      anonymous: false,
    });
    server = await startTasksServer({
      store,
      keyring: Keyring.ephemeral(),
      authenticate: (request) => fromBearer(authenticator, { audience })(request),
      fetchPolicy: {
        allowAddresses: ["127.0.0.1/32"],
        allowedPorts: [(page.address() as AddressInfo).port],
        resolve: async () => ["127.0.0.1"],
      },
      stepMs: 30,
    });
    audience = `${server.url}/mcp`;
    tokenFor = (subject) =>
      signToken(key, {
        iss: ISSUER,
        sub: subject,
        aud: audience,
        tenant: `t-${subject}`,
        iat: nowSeconds(),
        exp: nowSeconds() + 600,
      });
  });
  after(async () => {
    await server?.close();
    await new Promise((resolve) => page?.close(resolve));
    await store?.close();
    await jwks?.cleanup();
  });

  async function connect(token: string) {
    const client = new Client(
      { name: "example-e2e", version: "0.0.0" },
      { versionNegotiation: { mode: "auto" } },
    );
    await client.connect(
      new StreamableHTTPClientTransport(new URL(`${server.url}/mcp`), {
        requestInit: { headers: { authorization: `Bearer ${token}` } },
      }),
    );
    return {
      client,
      async call(name: string, args: Record<string, unknown> = {}) {
        const result = await client.callTool({ name, arguments: args });
        const [first] = result.content as Array<{ text: string }>;
        let value: Record<string, string>;
        try {
          value = JSON.parse(first?.text ?? "null") as Record<string, string>;
        } catch {
          // A tool that failed answers its error text, not JSON.
          value = { text: first?.text ?? "" };
        }
        return { isError: result.isError === true, value };
      },
    };
  }

  const rest = (path: string, token: string, headers: Record<string, string> = {}, init: RequestInit = {}) =>
    fetch(`${server.url}${path}`, { ...init, headers: { authorization: `Bearer ${token}`, ...headers } });

  it("T2 T4 a task's progress and result reach its owner through her poll and download tokens, and nobody else", async () => {
    const aliceToken = await tokenFor("alice");
    const bobToken = await tokenFor("bob");
    const alice = await connect(aliceToken);
    const bob = await connect(bobToken);
    try {
      const started = (await alice.call("start_analysis", { text: "one two three four five" })).value;
      const poll = { [started["pollHeader"] as string]: started["pollToken"] as string };

      // Bob holds alice's task id and poll token: possession is not identity.
      const stolen = await rest(started["progressPath"] as string, bobToken, poll);
      assert.equal(stolen.status, 404);
      // A token in the query string is refused before anything is looked up.
      const inQuery = await rest(`${started["progressPath"]}?poll_token=${started["pollToken"]}`, aliceToken);
      assert.equal(inQuery.status, 400);

      let status = "";
      const deadline = Date.now() + 10_000;
      while (status !== "completed" && Date.now() < deadline) {
        const answer = await rest(started["progressPath"] as string, aliceToken, poll);
        assert.equal(answer.status, 200);
        status = ((await answer.json()) as { status: string }).status;
        if (status !== "completed") await new Promise((resolve) => setTimeout(resolve, 30));
      }
      assert.equal(status, "completed");

      // Bob cannot even get a download link for alice's task: it reads as unknown.
      assert.equal((await bob.call("result_download", { taskId: started["taskId"] })).isError, true);
      const link = (await alice.call("result_download", { taskId: started["taskId"] })).value;
      const download = { [link["downloadHeader"] as string]: link["downloadToken"] as string };
      assert.equal((await rest(link["resultPath"] as string, bobToken, download)).status, 404);
      const result = await rest(link["resultPath"] as string, aliceToken, download);
      assert.equal(result.status, 200);
      assert.deepEqual(await result.json(), { words: 5 });
      // Single use: the same token does not download twice.
      assert.equal((await rest(link["resultPath"] as string, aliceToken, download)).status, 404);
    } finally {
      await alice.client.close();
      await bob.client.close();
    }
  });

  it("T5 a signed upload URL works once, for the principal it was issued to", async () => {
    const aliceToken = await tokenFor("alice");
    const bobToken = await tokenFor("bob");
    const alice = await connect(aliceToken);
    try {
      const { url } = (await alice.call("request_upload")).value;
      const put = (token: string) =>
        rest(
          url as string,
          token,
          { "content-type": "text/plain" },
          { method: "PUT", body: "notes for later" },
        );
      assert.equal((await put(bobToken)).status, 403);
      assert.equal((await put(aliceToken)).status, 201);
      assert.equal((await put(aliceToken)).status, 403, "a URL is spent once used");
    } finally {
      await alice.client.close();
    }
  });

  it("state handles are keyed by their owner; a pairing code works once, for its client only (T6)", async () => {
    const alice = await connect(await tokenFor("alice"));
    const bob = await connect(await tokenFor("bob"));
    const bobToken = await tokenFor("bob");
    try {
      const { handle } = (await alice.call("remember", { value: "alice's secret" })).value;
      assert.deepEqual((await alice.call("recall", { handle })).value, { value: "alice's secret" });
      assert.deepEqual((await bob.call("recall", { handle })).value, { value: null });

      const { code } = (await alice.call("pair_device", { clientId: "alice-phone" })).value;
      const pair = (clientId: string) =>
        rest(
          "/pair",
          bobToken,
          { "tenantgate-pairing-code": code as string, "tenantgate-client-id": clientId },
          { method: "POST" },
        );
      assert.equal((await pair("bob-laptop")).status, 404, "another client is refused");
      const paired = await pair("alice-phone");
      assert.equal(paired.status, 200, "and the code still works for its own client");
      assert.deepEqual(await paired.json(), { subject: "alice", tenant: "t-alice" });
      assert.equal((await pair("alice-phone")).status, 404, "once");
    } finally {
      await alice.client.close();
      await bob.client.close();
    }
  });

  it("fetch_title reaches an allowed page and refuses internal addresses", async () => {
    const alice = await connect(await tokenFor("alice"));
    try {
      assert.deepEqual((await alice.call("fetch_title", { url: pageUrl })).value, {
        title: "Hello from a page",
      });
      for (const url of ["http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://10.0.0.1/"]) {
        const refused = await alice.client.callTool({ name: "fetch_title", arguments: { url } });
        assert.equal(refused.isError, true, url);
      }
    } finally {
      await alice.client.close();
    }
  });

  it("a request without a valid bearer token reaches no tool and no endpoint", async () => {
    const answer = await fetch(`${server.url}/mcp`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
    });
    assert.equal(answer.status, 401);
    assert.equal((await fetch(`${server.url}/tasks/x/progress`)).status, 401);
  });
});
