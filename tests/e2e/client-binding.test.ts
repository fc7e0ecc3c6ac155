/**
 * sessions.clientBinding (defence in depth): a coarse fingerprint of the client (User-Agent and the
 * address's /24 or /48) recorded with the session and compared on every later request. `reject`
 * answers a mismatch like an unknown session; `audit` records it and serves; `off` records nothing.
 * The client address comes through a trusted proxy's X-Forwarded-For here, so the test can move it.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Keyring } from "../../src/crypto/keyring.ts";
import { addressPrefix, createClientFingerprinter } from "../../src/sessions/client-binding.ts";
import { type Harness, INITIALIZE, mcpHeaders, startHarness } from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";

interface Client {
  readonly agent: string;
  readonly address: string;
}

async function initialize(url: string, token: string, client: Client): Promise<string> {
  const response = await fetch(url, {
    method: "POST",
    headers: mcpHeaders({
      authorization: `Bearer ${token}`,
      "user-agent": client.agent,
      "x-forwarded-for": client.address,
    }),
    body: JSON.stringify(INITIALIZE),
  });
  await response.arrayBuffer();
  const sessionId = response.headers.get("mcp-session-id");
  assert.equal(response.status, 200);
  assert.ok(sessionId);
  return sessionId;
}

async function toolsList(url: string, token: string, sessionId: string, client: Client): Promise<number> {
  const response = await fetch(url, {
    method: "POST",
    headers: mcpHeaders({
      authorization: `Bearer ${token}`,
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-11-25",
      "user-agent": client.agent,
      "x-forwarded-for": client.address,
    }),
    body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
  });
  await response.arrayBuffer();
  return response.status;
}

const home: Client = { agent: "agent/1.0", address: "203.0.113.10" };
const sameNetwork: Client = { agent: "agent/1.0", address: "203.0.113.77" };
const otherNetwork: Client = { agent: "agent/1.0", address: "198.51.100.10" };
const otherAgent: Client = { agent: "other/2.0", address: "203.0.113.10" };

for (const policy of ["reject", "audit", "off"] as const) {
  describe(`sessions.clientBinding: ${policy}`, () => {
    let upstream: RecordingUpstream;
    let harness: Harness;
    let url: string;
    before(async () => {
      upstream = await startRecordingUpstream();
      harness = await startHarness({
        upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
        extra: {
          sessions: { clientBinding: policy },
          listen: { host: "127.0.0.1", port: 0, trustedProxies: ["127.0.0.1/32"] },
        },
      });
      url = `${harness.url}/mcp`;
    });
    after(async () => {
      await harness?.close();
      await upstream?.close();
    });

    it(`the creating client, and one on its network with the same agent, are served (${policy})`, async () => {
      const token = await harness.token("alice");
      const sessionId = await initialize(url, token, home);
      assert.equal(await toolsList(url, token, sessionId, home), 200);
      assert.equal(await toolsList(url, token, sessionId, sameNetwork), 200);
    });

    it(`another network or another agent: ${policy === "reject" ? "404, nothing forwarded, a denial recorded" : policy === "audit" ? "served, the mismatch recorded" : "served, nothing recorded"}`, async () => {
      const token = await harness.token("bob");
      const sessionId = await initialize(url, token, home);
      const forwarded = upstream.requests.length;
      const statuses = [
        await toolsList(url, token, sessionId, otherNetwork),
        await toolsList(url, token, sessionId, otherAgent),
      ];
      const denials = harness.events.filter(
        (e) => e.type === "session.denied" && e.reason === "client-binding",
      );
      const mismatches = harness.events.filter((e) => e.type === "session.binding-mismatch");
      if (policy === "reject") {
        assert.deepEqual(statuses, [404, 404]);
        assert.equal(upstream.requests.length, forwarded);
        assert.equal(denials.length, 2);
        // The owner on the original client is still served: a mismatch does not end the session.
        assert.equal(await toolsList(url, token, sessionId, home), 200);
      } else {
        assert.deepEqual(statuses, [200, 200]);
        assert.equal(denials.length, 0);
        assert.equal(mismatches.length, policy === "audit" ? 2 : 0);
      }
    });
  });
}

describe("client fingerprints", () => {
  it("compare addresses by /24 (IPv4) and /48 (IPv6), an IPv4-mapped address as IPv4", () => {
    assert.equal(addressPrefix("203.0.113.10"), "v4:203.0.113");
    assert.equal(addressPrefix("::ffff:203.0.113.10"), "v4:203.0.113");
    assert.equal(addressPrefix("::ffff:cb00:710a"), "v4:203.0.113");
    assert.equal(addressPrefix("0:0:0:0:0:ffff:cb00:710a"), "v4:203.0.113");
    assert.equal(addressPrefix("2001:db8:1::1"), "v6:2001:0db8:0001");
    assert.equal(addressPrefix("2001:0db8:0001:ffff::9"), "v6:2001:0db8:0001");
    assert.equal(addressPrefix("2001:db8::1"), "v6:2001:0db8:0000");
    assert.equal(addressPrefix(undefined), "unknown");
    assert.equal(addressPrefix("not an address"), "unknown");
  });

  it("survive a master-key rotation: a fingerprint names the key it was made under", () => {
    const old = Keyring.ephemeral();
    const recorded = createClientFingerprinter(old).fingerprint("agent/1.0", "203.0.113.10");
    assert.match(recorded, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}$/);
    assert.ok(createClientFingerprinter(old).matches(recorded, "agent/1.0", "203.0.113.99"));
    assert.ok(!createClientFingerprinter(old).matches(recorded, "agent/1.1", "203.0.113.10"));
    // A keyring without that key cannot vouch for it: a mismatch, never a pass.
    assert.ok(!createClientFingerprinter(Keyring.ephemeral()).matches(recorded, "agent/1.0", "203.0.113.10"));
    assert.ok(!createClientFingerprinter(old).matches("garbage", "agent/1.0", "203.0.113.10"));
  });
});
