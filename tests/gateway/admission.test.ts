/**
 * Admission's early rate take (AdmissionTicket.takeRateEarly): the caller's own bucket, taken once,
 * alongside the owner check; the caps still decide first once the owner is known.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { createAdmission } from "../../src/gateway/admission.ts";
import { makePrincipal } from "../../src/identity/principal.ts";
import { createLocalLedger } from "../../src/limits/cap-ledger.ts";
import { createConnectionCaps } from "../../src/limits/connection-caps.ts";
import type { RateDecision, RateLimiter } from "../../src/limits/rate-limiter.ts";

const who = (subject: string) =>
  makePrincipal({
    kind: "jwt",
    issuer: "https://issuer.test",
    subject,
    tenant: "acme",
    scopes: [],
    expiresAt: null,
  });

/** A limiter that records each bucket it is asked for and answers from `decide`. */
function recordingLimiter(
  decide: (scopeKey: string) => Promise<RateDecision>,
): RateLimiter & { keys: string[] } {
  const keys: string[] = [];
  return {
    keys,
    take: (scopeKey) => {
      keys.push(scopeKey);
      return decide(scopeKey);
    },
  };
}

const allowed: RateDecision = { allowed: true, retryAfterSeconds: 0, degraded: false };
const refused: RateDecision = { allowed: false, retryAfterSeconds: 3, degraded: false };
const never = new Promise<void>(() => undefined);

describe("admission: the early rate take", () => {
  it("is the one take admitOwner uses for the same principal, refusal included", async () => {
    const limiter = recordingLimiter(async () => refused);
    const ticket = await createAdmission({ caps: undefined, rateLimiter: limiter }).enter(
      "inflight",
      "203.0.113.1",
      never,
    );
    ticket.takeRateEarly(who("alice"));
    ticket.takeRateEarly(who("alice"));
    await assert.rejects(
      ticket.admitOwner({ principal: who("alice"), clientAddress: "203.0.113.1" }),
      (error: unknown) => isGateError(error, "ERR_RATE_LIMITED"),
    );
    assert.equal(limiter.keys.length, 1, "one token for one request");
  });

  it("is not used for another principal: that one's own bucket is taken", async () => {
    const limiter = recordingLimiter(async () => allowed);
    const ticket = await createAdmission({ caps: undefined, rateLimiter: limiter }).enter(
      "inflight",
      "203.0.113.1",
      never,
    );
    ticket.takeRateEarly(who("alice"));
    await ticket.admitOwner({ principal: who("bob"), clientAddress: "203.0.113.1" });
    assert.equal(limiter.keys.length, 2);
    assert.notEqual(limiter.keys[0], limiter.keys[1]);
  });

  it("a take that fails with nobody waiting for it is not an unhandled rejection", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => void unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      const limiter = recordingLimiter(async () => {
        throw new Error("store full");
      });
      const ticket = await createAdmission({ caps: undefined, rateLimiter: limiter }).enter(
        "inflight",
        undefined,
        never,
      );
      ticket.takeRateEarly(who("alice"));
      for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(unhandled, []);
      // The failure still reaches the request that waits for it (fail closed).
      await assert.rejects(
        ticket.admitOwner({ principal: who("alice"), clientAddress: undefined }),
        /store full/,
      );
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  });

  it("the per-principal cap still refuses first, whatever the early take answered", async () => {
    const caps = createConnectionCaps({
      ledger: createLocalLedger(),
      limits: { streams: {}, inflight: { global: 10, perIp: 10, perPrincipal: 1, perSession: 10 } },
    });
    const limiter = recordingLimiter(async () => refused);
    const admission = createAdmission({ caps, rateLimiter: limiter });
    const first = await admission.enter("inflight", "203.0.113.1", never);
    await assert.rejects(
      first.admitOwner({ principal: who("alice"), clientAddress: "203.0.113.1" }),
      (error) => isGateError(error, "ERR_RATE_LIMITED"),
    );
    const second = await admission.enter("inflight", "203.0.113.1", never);
    second.takeRateEarly(who("alice"));
    await assert.rejects(
      second.admitOwner({ principal: who("alice"), clientAddress: "203.0.113.1" }),
      (error) => isGateError(error, "ERR_CONNECTION_LIMIT"),
    );
  });
});
