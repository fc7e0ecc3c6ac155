/**
 * THREATS C3 for what the gateway stores today (sessions): a copy of the store alone yields no usable
 * session id, upstream session id or token. The SQLite file (and its WAL) is read byte for byte after
 * real sessions were created through the gateway; every secret the clients and the upstream used must
 * be absent from it, while the session's digest (what operators see) is there.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ownershipKey } from "../../src/store/keys.ts";
import { type Harness, initializeSession, mcpHeaders, startHarness } from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";

describe("C3 a storage dump alone", () => {
  let dir: string;
  let upstream: RecordingUpstream;
  let harness: Harness;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "tenantgate-dump-"));
    upstream = await startRecordingUpstream();
    harness = await startHarness({
      store: `sqlite:${join(dir, "store.db")}`,
      upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
    });
  });
  after(async () => {
    await harness.close();
    await upstream.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("C3 holds no session id, upstream session id or bearer token, only digests and sealed values", async () => {
    const tokens = [await harness.token("alice"), await harness.token("bob")];
    const sessionIds: string[] = [];
    for (const token of tokens) {
      const sessionId = await initializeSession(`${harness.url}/mcp`, token);
      sessionIds.push(sessionId);
      const answer = await fetch(`${harness.url}/mcp`, {
        method: "POST",
        headers: mcpHeaders({
          authorization: `Bearer ${token}`,
          "mcp-session-id": sessionId,
          "mcp-protocol-version": "2025-11-25",
        }),
        body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
      });
      assert.equal(answer.status, 200);
      await answer.arrayBuffer();
    }
    assert.equal(upstream.sessionIds.length, 2);

    const files = (await readdir(dir)).filter((name) => name.startsWith("store.db"));
    const dump = Buffer.concat(await Promise.all(files.map((name) => readFile(join(dir, name)))));
    const secrets = [...sessionIds, ...upstream.sessionIds, ...tokens];
    for (const secret of secrets) {
      assert.equal(dump.includes(Buffer.from(secret)), false, "a raw secret is in the store");
      // Nor a recognisable part of one (a token's signature, half an id).
      assert.equal(dump.includes(Buffer.from(secret.slice(-16))), false, "part of a secret is in the store");
    }
    // The dump is of a store that was used: each session is there under its id's digest, and each
    // upstream mapping as a sealed value.
    for (const sessionId of sessionIds) {
      const sessionDigest = ownershipKey("session", sessionId).segments[1] ?? "";
      assert.ok(dump.includes(Buffer.from(sessionDigest)), "a session's digest is in the dump");
    }
    assert.ok(dump.includes(Buffer.from("session-upstream")), "the sealed mappings are in the dump");
  });
});
