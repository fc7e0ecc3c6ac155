import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { addressKey, createFailedAuthLimiter } from "../../src/identity/index.ts";

function limiterWithClock(options: Parameters<typeof createFailedAuthLimiter>[0] = {}) {
  let clock = 1_000_000;
  const limiter = createFailedAuthLimiter({ maxFailures: 5, windowMs: 60_000, ...options, now: () => clock });
  return {
    limiter,
    advance: (ms: number) => {
      clock += ms;
    },
  };
}

describe("failed-auth limiter", () => {
  it("L2 an address is refused after maxFailures and recovers as failures drain", () => {
    const { limiter, advance } = limiterWithClock();
    for (let i = 0; i < 5; i++) {
      assert.equal(limiter.check("192.0.2.1"), true, `attempt ${i + 1}`);
      limiter.recordFailure("192.0.2.1");
    }
    assert.equal(limiter.check("192.0.2.1"), false);
    assert.equal(limiter.check("192.0.2.2"), true, "other addresses are unaffected");
    // One failure drains every windowMs / maxFailures = 12 s.
    advance(11_000);
    assert.equal(limiter.check("192.0.2.1"), false);
    advance(1_000);
    assert.equal(limiter.check("192.0.2.1"), true);
    limiter.recordFailure("192.0.2.1");
    assert.equal(limiter.check("192.0.2.1"), false);
  });

  it("L2 the count decays: no permanent lockout however long the abuse went on", () => {
    const { limiter, advance } = limiterWithClock();
    for (let i = 0; i < 100_000; i++) limiter.recordFailure("192.0.2.1");
    assert.equal(limiter.check("192.0.2.1"), false);
    advance(12_000);
    assert.equal(limiter.check("192.0.2.1"), true, "one attempt per drain interval, not a lockout");
    advance(60_000);
    for (let i = 0; i < 5; i++) {
      assert.equal(limiter.check("192.0.2.1"), true);
      limiter.recordFailure("192.0.2.1");
    }
    assert.equal(limiter.check("192.0.2.1"), false);
  });

  it("a clock stepping backwards does not add failures", () => {
    const { limiter, advance } = limiterWithClock();
    for (let i = 0; i < 4; i++) limiter.recordFailure("192.0.2.1");
    advance(-3_600_000);
    assert.equal(limiter.check("192.0.2.1"), true);
  });

  it("L2 is bounded: when full, new addresses count in hashed overflow buckets and nobody is evicted", () => {
    const { limiter, advance } = limiterWithClock({ maxTrackedAddresses: 3, overflowMaxFailures: 2 });
    // The victim of an abuser is limited; then the table fills.
    for (let i = 0; i < 5; i++) limiter.recordFailure("198.51.100.1");
    limiter.recordFailure("198.51.100.2");
    limiter.recordFailure("198.51.100.3");
    assert.equal(limiter.trackedAddresses, 3);
    // Thousands of new addresses do not grow the table or free the limited address.
    for (let i = 0; i < 5_000; i++) limiter.recordFailure(`203.0.113.${i % 250}`);
    assert.equal(limiter.trackedAddresses, 3);
    assert.equal(limiter.check("198.51.100.1"), false);
    // An abusing address is limited through its overflow bucket...
    assert.equal(limiter.check("203.0.113.7"), false);
    // ...but the abuse cannot lock out every address it never shared a bucket with: the overflow is
    // spread over many buckets by a keyed hash (250 abusers fill about 60% of 256 buckets).
    const fresh = Array.from({ length: 100 }, (_, i) => `192.0.2.${i + 1}`);
    assert.ok(
      fresh.some((address) => limiter.check(address)),
      "every fresh address was locked out",
    );
    // Tracked addresses keep their own state.
    assert.equal(limiter.check("198.51.100.2"), true);
    // Once buckets drain, the table makes room again.
    advance(60_000);
    assert.ok(fresh.every((address) => limiter.check(address)));
    limiter.recordFailure("192.0.2.99");
    assert.equal(limiter.trackedAddresses, 1);
  });

  it("L2 groups IPv6 addresses by /64, and IPv4-mapped IPv6 with its IPv4 address", () => {
    const { limiter } = limiterWithClock();
    const sameSixtyFour = [
      "2001:db8:1:2::1",
      "2001:DB8:1:2:ffff:ffff:ffff:ffff",
      "2001:0db8:0001:0002::abcd%eth0",
    ];
    for (let i = 0; i < 5; i++) limiter.recordFailure(sameSixtyFour[i % sameSixtyFour.length]);
    for (const address of sameSixtyFour) assert.equal(limiter.check(address), false, address);
    assert.equal(limiter.check("2001:db8:1:3::1"), true, "the neighbouring /64 is another bucket");

    for (let i = 0; i < 5; i++) limiter.recordFailure("::ffff:192.0.2.1");
    assert.equal(limiter.check("192.0.2.1"), false);
    assert.equal(limiter.check("::ffff:c000:201"), false);
  });

  it("address keys", () => {
    const cases: [string | undefined, string][] = [
      ["192.0.2.1", "ipv4:192.0.2.1"],
      ["::ffff:192.0.2.1", "ipv4:192.0.2.1"],
      ["::FFFF:C000:0201", "ipv4:192.0.2.1"],
      ["2001:db8::1", "ipv6:2001:db8:0:0::/64"],
      ["2001:db8:0:0:1::", "ipv6:2001:db8:0:0::/64"],
      ["::1", "ipv6:0:0:0:0::/64"],
      ["::", "ipv6:0:0:0:0::/64"],
      ["fe80::1%eth0", "ipv6:fe80:0:0:0::/64"],
      ["64:ff9b::192.0.2.1", "ipv6:64:ff9b:0:0::/64"],
      ["1:2:3:4:5:6:7:8", "ipv6:1:2:3:4::/64"],
      ["not an address", "unknown"],
      ["", "unknown"],
      [undefined, "unknown"],
    ];
    for (const [address, key] of cases) assert.equal(addressKey(address), key, String(address));
  });

  it("refuses nonsensical limits", () => {
    for (const options of [{ maxFailures: 0 }, { windowMs: -1 }, { maxTrackedAddresses: 1.5 }]) {
      assert.throws(
        () => createFailedAuthLimiter(options),
        (error: unknown) => isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
    }
  });

  it("L2 attempts in flight count: a burst from one address is cut at the limit, not after it", () => {
    const { limiter } = limiterWithClock({ maxFailures: 5 });
    const attempts = Array.from({ length: 50 }, () => limiter.begin("192.0.2.50"));
    assert.equal(attempts.filter((attempt) => attempt !== null).length, 5);
    for (const attempt of attempts) attempt?.failed();
    assert.equal(limiter.begin("192.0.2.50"), null);
    // A successful attempt frees its place without counting as a failure.
    const other = limiter.begin("192.0.2.51");
    other?.done();
    other?.failed();
    assert.equal(limiter.check("192.0.2.51"), true);
  });
});
