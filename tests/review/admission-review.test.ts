/**
 * Review of admission (connection caps in two stages, the per-principal rate limit),
 * sessions.maxPerTenant and client binding: each test here failed before the fix committed with it.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Keyring } from "../../src/crypto/keyring.ts";
import { isGateError } from "../../src/errors.ts";
import { createAdmission, RETRY_AFTER_DETAIL_PREFIX } from "../../src/gateway/admission.ts";
import { makePrincipal } from "../../src/identity/principal.ts";
import { createSessionRegistry } from "../../src/sessions/session-registry.ts";
import { openStore } from "../../src/store/open-store.ts";
import { type Harness, INITIALIZE, mcpHeaders, startHarness } from "../support/gateway-harness.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";
import { storeBackendCases } from "../support/store-cases.ts";

describe("admission: the 429's Retry-After carries digits only", () => {
  for (const odd of [Number.NaN, Number.POSITIVE_INFINITY, 1.5, -3, 1e21]) {
    it(`a rate limiter answering retryAfterSeconds=${odd} still yields a whole number of seconds`, async () => {
      const admission = createAdmission({
        caps: undefined,
        rateLimiter: { take: async () => ({ allowed: false, retryAfterSeconds: odd, degraded: false }) },
      });
      const ticket = await admission.enter("inflight", "203.0.113.1", new Promise(() => undefined));
      await assert.rejects(
        ticket.admitOwner({ principal: null, clientAddress: "203.0.113.1" }),
        (error: unknown) => {
          assert.ok(isGateError(error, "ERR_RATE_LIMITED"));
          assert.match(error.detail ?? "", new RegExp(`^${RETRY_AFTER_DETAIL_PREFIX}[1-9][0-9]{0,8}$`));
          return true;
        },
      );
    });
  }
});

describe("sessions.maxPerTenant: the kill switch gives the tenant's slots back", () => {
  it("sessions created after a kill switch are admitted although the killed ones have not expired", async () => {
    const store = await openStore("memory:");
    try {
      // No idle timeout: a killed session's lease would otherwise last until its absolute expiry.
      const registry = createSessionRegistry({
        store,
        keyring: Keyring.ephemeral(),
        absoluteTimeoutMs: 3_600_000,
        maxPerTenant: 2,
      });
      const who = makePrincipal({
        kind: "jwt",
        issuer: "https://issuer.test",
        subject: "alice",
        tenant: "acme",
        scopes: [],
        expiresAt: null,
      });
      const create = () =>
        registry.create({ principal: who, upstream: "notes", protocolVersion: "2025-11-25" });
      const first = await create();
      await create();
      await assert.rejects(create(), (error: unknown) => isGateError(error, "ERR_SESSION_LIMIT"));
      await registry.killSwitch();
      // The killed sessions answer 404 to everyone: they must not hold the tenant's room.
      assert.equal(await registry.resolve(first.sessionId, who, "notes"), null);
      await create();
      await create();
      await assert.rejects(create(), (error: unknown) => isGateError(error, "ERR_SESSION_LIMIT"));
    } finally {
      await store.close();
    }
  });
});

describe("client binding across a master-key rotation (decision 103)", async () => {
  const redis = (await storeBackendCases("admission-review")).find((backend) => backend.name === "redis");
  let dir: string;
  let upstream: RecordingUpstream;
  let before_: Harness;
  let after_: Harness;
  let cleanup: () => Promise<void>;
  const agent = "agent/1.0";
  const address = "203.0.113.10";

  before(async () => {
    assert.ok(redis && !redis.skip, "the review needs the real Redis");
    const opened = await redis.open();
    cleanup = opened.cleanup;
    dir = await mkdtemp(join(tmpdir(), "tg-admission-review-"));
    await writeFile(join(dir, "k1"), randomBytes(32).toString("base64url"), { mode: 0o600 });
    await writeFile(join(dir, "k2"), randomBytes(32).toString("base64url"), { mode: 0o600 });
    upstream = await startRecordingUpstream();
    const start = (keys: string[], active: string) =>
      startHarness({
        store: opened.url,
        upstreams: [{ name: "recording", path: "/mcp", url: upstream.url }],
        extra: {
          secrets: {
            masterKeys: keys.map((id) => ({ id, key: `file:${join(dir, id)}` })),
            activeKeyId: active,
          },
          sessions: { clientBinding: "reject" },
          listen: { host: "127.0.0.1", port: 0, trustedProxies: ["127.0.0.1/32"] },
        },
      });
    before_ = await start(["k1"], "k1");
    // The rotated replica: k1 still loaded, k2 now active.
    after_ = await start(["k1", "k2"], "k2");
  });
  after(async () => {
    await before_?.close();
    await after_?.close();
    await upstream?.close();
    await rm(dir, { recursive: true, force: true });
    await cleanup?.();
  });

  it("the creating client is still served by a replica whose active key changed", async () => {
    const created = await fetch(`${before_.url}/mcp`, {
      method: "POST",
      headers: mcpHeaders({
        authorization: `Bearer ${await before_.token("alice")}`,
        "user-agent": agent,
        "x-forwarded-for": address,
      }),
      body: JSON.stringify(INITIALIZE),
    });
    await created.arrayBuffer();
    assert.equal(created.status, 200);
    const sessionId = created.headers.get("mcp-session-id");
    assert.ok(sessionId);
    const listed = await fetch(`${after_.url}/mcp`, {
      method: "POST",
      headers: mcpHeaders({
        authorization: `Bearer ${await after_.token("alice")}`,
        "mcp-session-id": sessionId,
        "mcp-protocol-version": "2025-11-25",
        "user-agent": agent,
        "x-forwarded-for": address,
      }),
      body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
    });
    await listed.arrayBuffer();
    assert.equal(listed.status, 200);
  });
});
