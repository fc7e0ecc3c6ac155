/**
 * Review of admission (connection caps in two stages, the per-principal rate limit),
 * sessions.maxPerTenant and client binding: each test here failed before the fix committed with it.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { createAdmission, RETRY_AFTER_DETAIL_PREFIX } from "../../src/gateway/admission.ts";

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
