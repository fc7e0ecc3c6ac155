/**
 * The vault end to end (issue 6), on every store backend, over real HTTP: principals enroll their own
 * credentials through /.tenantgate/vault, and upstreams[].inject puts the caller's own, and only the
 * caller's own, into the upstream request (THREATS C1), whatever the caller sends.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  assertCredentialRequired,
  type Harness,
  INITIALIZE,
  initializeSession,
  mcpHeaders,
  sessionToolsList,
  startHarness,
} from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const ALICE_SECRET = "ghp_alice_0123456789abcdefALICE";
const BOB_SECRET = "ghp_bob_0123456789abcdefBOB";

function enroll(
  harness: Harness,
  token: string,
  name: string,
  value: unknown,
  path = "/mcp",
): Promise<Response> {
  return fetch(`${harness.url}/.tenantgate/vault${path}/${name}`, {
    method: "PUT",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ value }),
  });
}

/** The Authorization header of every request the upstream received since `from`. */
function injectedSince(upstream: RecordingUpstream, from: number): string[] {
  return upstream.requests.slice(from).map((request) => String(request.headers["authorization"] ?? "(none)"));
}

for (const backend of await storeBackendCases("vault-e2e")) {
  describe(`vault: enrollment and injection on ${backend.name}`, { skip: backend.skip }, () => {
    let harness: Harness;
    let upstream: RecordingUpstream;
    let cleanup: () => Promise<void>;
    let alice: string;
    let bob: string;
    const url = () => `${harness.url}/mcp`;

    before(async () => {
      const store = await backend.open();
      cleanup = store.cleanup;
      upstream = await startRecordingUpstream();
      harness = await startHarness({
        store: store.url,
        upstreams: [{ name: "github", path: "/mcp", url: upstream.url }],
        extra: {
          upstreams: [
            {
              name: "github",
              path: "/mcp",
              url: upstream.url,
              protocolVersions: ["2025-06-18", "2025-11-25"],
              inject: { Authorization: "Bearer {vault:github_token}" },
            },
          ],
        },
      });
      alice = await harness.token("alice");
      bob = await harness.token("bob");
      assert.equal((await enroll(harness, alice, "github_token", ALICE_SECRET)).status, 201);
      assert.equal((await enroll(harness, bob, "github_token", BOB_SECRET)).status, 201);
    });
    after(async () => {
      await harness?.close();
      await upstream?.close();
      await cleanup?.();
    });

    it("C1 each principal's upstream calls carry its own credential and never another's, whatever it sends", async () => {
      const aliceSession = await initializeSession(url(), alice);
      const bobSession = await initializeSession(url(), bob);
      const from = upstream.requests.length;
      assert.equal((await sessionToolsList(url(), alice, aliceSession)).status, 200);
      // Bob names Alice every way a request can: in arguments, in headers, in the path's neighbours.
      const bobCall = await fetch(url(), {
        method: "POST",
        headers: mcpHeaders({
          authorization: `Bearer ${bob}`,
          "mcp-session-id": bobSession,
          "x-vault-owner": "alice",
          "x-tenantgate-principal": "alice",
          "tenantgate-assertion": "forged",
        }),
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 7,
          method: "tools/call",
          params: {
            name: "whoami",
            arguments: { user_google_email: "alice", owner: "alice", vault: "github_token" },
          },
        }),
      });
      assert.equal(bobCall.status, 200);
      await bobCall.text();
      assert.deepEqual(injectedSince(upstream, from), [`Bearer ${ALICE_SECRET}`, `Bearer ${BOB_SECRET}`]);
      // Bob's own client headers never reach the upstream; the credential is the gateway's to set.
      const bobRequest = upstream.requests.at(-1);
      assert.equal(bobRequest?.headers["x-vault-owner"], undefined);
      assert.ok(
        !JSON.stringify(upstream.requests.slice(from)).includes(bob),
        "the client's token never goes upstream",
      );
    });

    it("C1 a principal without the entry gets ERR_CREDENTIAL_REQUIRED naming it, and nothing is forwarded", async () => {
      const carol = await harness.token("carol");
      const from = upstream.requests.length;
      const response = await fetch(url(), {
        method: "POST",
        headers: mcpHeaders({ authorization: `Bearer ${carol}` }),
        body: JSON.stringify(INITIALIZE),
      });
      await assertCredentialRequired(response, "github_token");
      assert.equal(upstream.requests.length, from, "nothing reached the upstream");
      assert.ok(
        harness.events.some(
          (event) => event.type === "request.refused" && event.reason === "credential-missing",
        ),
      );
    });

    it("enrollment is write-only: the list shows names, no method answers a value", async () => {
      const list = await fetch(`${harness.url}/.tenantgate/vault/mcp`, {
        headers: { authorization: `Bearer ${alice}` },
      });
      assert.equal(list.status, 200);
      const text = await list.text();
      assert.ok(!text.includes(ALICE_SECRET));
      const listed = JSON.parse(text) as { entries: Array<{ name: string; updatedAt: string }> };
      assert.deepEqual(
        listed.entries.map((entry) => entry.name),
        ["github_token"],
      );
      const read = await fetch(`${harness.url}/.tenantgate/vault/mcp/github_token`, {
        headers: { authorization: `Bearer ${alice}` },
      });
      assert.equal(read.status, 405);
      assert.ok(!(await read.text()).includes(ALICE_SECRET));
    });

    it("a principal replaces and deletes only its own entry; the next call asks for it again", async () => {
      const dave = await harness.token("dave");
      assert.equal((await enroll(harness, dave, "github_token", "ghp_dave_first")).status, 201);
      assert.equal((await enroll(harness, dave, "github_token", "ghp_dave_second")).status, 204);
      const session = await initializeSession(url(), dave);
      const from = upstream.requests.length;
      assert.equal((await sessionToolsList(url(), dave, session)).status, 200);
      assert.deepEqual(injectedSince(upstream, from), ["Bearer ghp_dave_second"]);
      const removal = await fetch(`${harness.url}/.tenantgate/vault/mcp/github_token`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${dave}` },
      });
      assert.equal(removal.status, 204);
      const refused = await sessionToolsList(url(), dave, session);
      assert.equal(refused.status, 403);
      await refused.text();
      // Alice's entry is untouched by Dave's delete.
      const aliceSession = await initializeSession(url(), alice);
      const next = upstream.requests.length;
      assert.equal((await sessionToolsList(url(), alice, aliceSession)).status, 200);
      assert.deepEqual(injectedSince(upstream, next), [`Bearer ${ALICE_SECRET}`]);
      const again = await fetch(`${harness.url}/.tenantgate/vault/mcp/github_token`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${dave}` },
      });
      assert.equal(again.status, 404);
      await again.text();
    });

    it("refuses values that could split a header, unauthenticated callers and tokens for another audience", async () => {
      for (const value of ["a\r\nX-Evil: 1", "nul\u0000", "ünïcode", "", 42]) {
        const response = await enroll(harness, alice, "github_token", value);
        assert.equal(response.status, 400, JSON.stringify(value));
        assert.ok(!(await response.text()).includes("Evil"));
      }
      const anonymous = await fetch(`${harness.url}/.tenantgate/vault/mcp/github_token`, {
        method: "PUT",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ value: "x" }),
      });
      assert.equal(anonymous.status, 401);
      await anonymous.text();
      const elsewhere = await harness.token("alice", { audience: "https://elsewhere.example/mcp" });
      const foreign = await enroll(harness, elsewhere, "github_token", "ghp_overwrite");
      assert.equal(foreign.status, 401);
      await foreign.text();
      const unknownRoute = await enroll(harness, alice, "github_token", "x", "/nope");
      assert.equal(unknownRoute.status, 404);
      await unknownRoute.text();
      const badName = await enroll(harness, alice, "GitHub-Token", "x");
      assert.equal(badName.status, 404);
      await badName.text();
      // An entry no upstream at that path uses is not enrollable there.
      const unused = await enroll(harness, alice, "other_token", "x");
      assert.equal(unused.status, 404);
      await unused.text();
    });
  });
}
