/**
 * Review of issue 6 (the vault, enrollment and injection) over real HTTP, memory store: cases the
 * vault suites did not drive.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  type Harness,
  initializeSession,
  sessionToolsList,
  startHarness,
} from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";

const ALICE_SECRET = "ghp_alice_review_0123456789abcdef";

function vaultCall(
  harness: Harness,
  method: "PUT" | "DELETE",
  token: string,
  path: string,
  value?: string,
): Promise<Response> {
  return fetch(`${harness.url}/.tenantgate/vault${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    ...(value === undefined ? {} : { body: JSON.stringify({ value }) }),
  });
}

describe("vault review: enrollment is bound to the upstreams that use an entry", () => {
  let harness: Harness;
  let github: RecordingUpstream;
  let other: RecordingUpstream;

  before(async () => {
    github = await startRecordingUpstream();
    other = await startRecordingUpstream();
    const protocolVersions = ["2025-06-18", "2025-11-25"];
    harness = await startHarness({
      upstreams: [{ name: "github", path: "/mcp", url: github.url }],
      extra: {
        upstreams: [
          {
            name: "github",
            path: "/mcp",
            url: github.url,
            protocolVersions,
            scopes: ["github"],
            inject: { Authorization: "Bearer {vault:github_token}" },
          },
          // Another upstream, with its own audience and no scopes, that injects nothing.
          { name: "other", path: "/other", url: other.url, protocolVersions },
        ],
      },
    });
  });
  after(async () => {
    await harness?.close();
    await github?.close();
    await other?.close();
  });

  it("C1 a token for another upstream cannot overwrite or delete the credential an upstream it cannot call injects", async () => {
    const alice = await harness.token("alice", { scope: "github" });
    assert.equal((await vaultCall(harness, "PUT", alice, "/mcp/github_token", ALICE_SECRET)).status, 201);

    // A token for /other only: refused at /mcp (audience, and it lacks the "github" scope).
    const otherToken = await harness.token("alice", { audience: `${harness.url}/other` });
    const refusedAtGithub = await vaultCall(harness, "PUT", otherToken, "/mcp/github_token", "ghp_attacker");
    assert.equal(refusedAtGithub.status, 401);
    await refusedAtGithub.text();

    // The same token at its own upstream's path must not reach github's credential either.
    const overwrite = await vaultCall(harness, "PUT", otherToken, "/other/github_token", "ghp_attacker");
    assert.equal(overwrite.status, 404, "an entry /other does not use is not enrollable there");
    await overwrite.text();
    const removal = await vaultCall(harness, "DELETE", otherToken, "/other/github_token");
    assert.equal(removal.status, 404);
    await removal.text();

    const session = await initializeSession(`${harness.url}/mcp`, alice);
    const from = github.requests.length;
    assert.equal((await sessionToolsList(`${harness.url}/mcp`, alice, session)).status, 200);
    assert.deepEqual(
      github.requests.slice(from).map((request) => request.headers["authorization"]),
      [`Bearer ${ALICE_SECRET}`],
    );
  });
});

describe("stdio review: an initialize the gateway turns down ends the process it started", () => {
  let harness: Harness;
  const PROBE = new URL("../support/stdio-probe-server.ts", import.meta.url).pathname;

  before(async () => {
    harness = await startHarness({
      extra: {
        upstreams: [
          {
            name: "probe",
            path: "/probe",
            command: process.execPath,
            args: [PROBE],
            stdio: { maxProcessesPerPrincipal: 1, startTimeout: "20s" },
          },
        ],
      },
    });
  });
  after(async () => {
    await harness?.close();
  });

  function initialize(token: string, protocolVersion: string): Promise<Response> {
    return fetch(`${harness.url}/probe`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${token}`,
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
      },
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: 1,
        method: "initialize",
        params: { protocolVersion, capabilities: {}, clientInfo: { name: "review", version: "1" } },
      }),
    });
  }

  it("a version the gateway does not serve: no session, and no process left holding the principal's slot", async () => {
    const alice = await harness.token("alice", { audience: `${harness.gateway.config.publicUrl}/probe` });
    // The probe answers with the version asked for; the gateway serves 2025-03-26 and later only.
    const refused = await initialize(alice, "2024-11-05");
    assert.notEqual(refused.status, 200);
    assert.equal(refused.headers.get("mcp-session-id"), null);
    await refused.text();
    // The process that answered belongs to no session: it must not hold the one slot for the idle timeout.
    let answer: Response | undefined;
    for (let attempt = 0; attempt < 50; attempt++) {
      answer = await initialize(alice, "2025-11-25");
      if (answer.status === 200) break;
      await answer.text();
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(answer?.status, 200, "the principal can start a session again");
    assert.ok(answer?.headers.get("mcp-session-id"));
    await answer?.text();
  });
});
