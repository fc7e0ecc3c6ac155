import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { createClientAddressResolver, MAX_FORWARDED_HOPS } from "../../src/gateway/client-address.ts";

const PROXY_A = "10.0.0.5";
const PROXY_B = "10.0.1.9";
const CLIENT = "198.51.100.23";
const SPOOFED = "203.0.113.1";

describe("client address", () => {
  const resolve = createClientAddressResolver(["10.0.0.0/8", "2001:db8:ffff::/48"]);

  it("ignores X-Forwarded-For from an untrusted peer, whatever it says", () => {
    assert.equal(resolve(CLIENT, [SPOOFED]), CLIENT);
    assert.equal(resolve(CLIENT, [`${SPOOFED}, ${PROXY_A}`]), CLIENT);
    assert.equal(resolve(CLIENT, ["garbage"]), CLIENT);
    assert.equal(resolve("2001:db8:1::7", [SPOOFED]), "2001:db8:1::7");
  });

  it("with no trusted proxies, always the socket address", () => {
    const none = createClientAddressResolver([]);
    assert.equal(none(PROXY_A, [SPOOFED]), PROXY_A);
    assert.equal(none("::ffff:10.0.0.5", [SPOOFED]), PROXY_A);
    assert.equal(none(undefined, [SPOOFED]), undefined);
  });

  it("a trusted peer's entry names the client", () => {
    assert.equal(resolve(PROXY_A, [CLIENT]), CLIENT);
    // Without the header, the trusted peer is all there is.
    assert.equal(resolve(PROXY_A, undefined), PROXY_A);
    assert.equal(resolve(PROXY_A, []), PROXY_A);
    assert.equal(resolve(PROXY_A, [""]), PROXY_A);
  });

  it("walks through two trusted proxies and stops at the first untrusted address", () => {
    // client -> PROXY_B -> PROXY_A -> gateway; the client sent a spoofed header of its own.
    assert.equal(resolve(PROXY_A, [`${SPOOFED}, ${CLIENT}, ${PROXY_B}`]), CLIENT);
    assert.equal(resolve(PROXY_A, [`${SPOOFED},${CLIENT},${PROXY_B}`]), CLIENT);
    // A trusted address on the client's side of an untrusted one is the client's word: ignored.
    assert.equal(resolve(PROXY_A, [`${PROXY_B}, ${CLIENT}`]), CLIENT);
  });

  it("reads every header line, in order, as one list", () => {
    assert.equal(resolve(PROXY_A, [SPOOFED, `${CLIENT}, ${PROXY_B}`]), CLIENT);
    assert.equal(resolve(PROXY_A, [`${SPOOFED}, ${CLIENT}`, PROXY_B]), CLIENT);
    assert.equal(resolve(PROXY_A, [SPOOFED, CLIENT, PROXY_B]), CLIENT);
  });

  it("a malformed entry stops the walk at the hop that wrote it", () => {
    // PROXY_A (the peer) wrote the malformed entry: it is the nearest address anyone vouches for.
    for (const entry of [
      "unknown",
      "1.2.3.4:5678",
      "[2001:db8::1]",
      "010.0.0.1",
      "0x7f.1",
      "1.2.3",
      "_hidden",
    ]) {
      assert.equal(resolve(PROXY_A, [`${SPOOFED}, ${entry}`]), PROXY_A, entry);
    }
    // One hop further: PROXY_B wrote it, so PROXY_B is the answer; the client-side entry is not taken.
    assert.equal(resolve(PROXY_A, [`${SPOOFED}, not-an-ip, ${PROXY_B}`]), PROXY_B);
    // Whitespace and empty elements are list syntax, not malformed entries.
    assert.equal(resolve(PROXY_A, [` ${CLIENT}\t,, ${PROXY_B} ,`]), CLIENT);
  });

  it("handles IPv6 and IPv4-mapped addresses in one form", () => {
    // A dual-stack socket reports IPv4 peers as mapped addresses: trusted as the IPv4 rule says.
    assert.equal(resolve("::ffff:10.0.0.5", [CLIENT]), CLIENT);
    assert.equal(resolve("::FFFF:a00:5", [CLIENT]), CLIENT);
    assert.equal(resolve("::ffff:198.51.100.23", [SPOOFED]), CLIENT);
    // IPv6 proxies and clients, written in any valid form, come back in RFC 5952 form.
    assert.equal(resolve("2001:DB8:FFFF:0::1", ["2001:0DB8:0001:0000:0000:0000:0000:0007"]), "2001:db8:1::7");
    assert.equal(resolve("2001:db8:ffff::1", [`2001:db8:1::7, ${PROXY_B}`]), "2001:db8:1::7");
    assert.equal(resolve("2001:db8:ffff::1", ["::ffff:198.51.100.23"]), CLIENT);
    // A zone index names an interface, not a host.
    assert.equal(resolve("fe80::1%eth0", [SPOOFED]), "fe80::1");
  });

  it("a rule written as an IPv4-mapped block covers IPv4 peers too", () => {
    const mapped = createClientAddressResolver(["::ffff:10.0.0.0/104"]);
    assert.equal(mapped(PROXY_A, [CLIENT]), CLIENT);
    assert.equal(mapped("::ffff:10.0.0.5", [CLIENT]), CLIENT);
    assert.equal(mapped(CLIENT, [SPOOFED]), CLIENT);
  });

  it("caps the walk", () => {
    const trustedHops = Array.from(
      { length: MAX_FORWARDED_HOPS + 5 },
      (_, i) => `10.0.${i >> 8}.${i & 0xff}`,
    );
    // Every hop trusted beyond the cap: the furthest address read, never the client's word past it.
    const answer = resolve(PROXY_A, [[SPOOFED, ...trustedHops].join(", ")]);
    assert.equal(answer, trustedHops[trustedHops.length - MAX_FORWARDED_HOPS]);
    // An all-trusted chain within the cap answers its leftmost address.
    assert.equal(resolve(PROXY_A, [`${PROXY_B}, 10.9.9.9`]), PROXY_B);
  });

  it("a socket without an IP address has no client address", () => {
    assert.equal(resolve(undefined, [CLIENT]), undefined);
    assert.equal(resolve("not-an-address", [CLIENT]), undefined);
  });

  it("refuses trusted proxies that are not CIDR blocks", () => {
    for (const bad of [["10.0.0.1/8"], ["proxy.internal"], [42], "10.0.0.0/8", ["10.0.0.0/0"]]) {
      assert.throws(
        () => createClientAddressResolver(bad as readonly string[]),
        (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
      );
    }
  });
});
