import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { parseAllowances, parseIpAddress, vetAddress } from "../../src/server/address-policy.ts";

const none = parseAllowances([]);

/** Every blocked range (both ends where they matter), and the IPv6 forms that carry a blocked IPv4. */
const refused: readonly (readonly [string, string])[] = [
  ["0.0.0.0", "this-network"],
  ["0.255.255.255", "this-network"],
  ["10.0.0.1", "private"],
  ["10.255.255.255", "private"],
  ["100.64.0.1", "shared-cgnat"],
  ["100.127.255.254", "shared-cgnat"],
  ["127.0.0.1", "loopback"],
  ["127.255.255.254", "loopback"],
  ["169.254.0.1", "link-local"],
  ["169.254.169.254", "metadata"],
  ["169.254.170.2", "metadata"],
  ["100.100.100.200", "metadata"],
  ["168.63.129.16", "metadata"],
  ["192.0.0.192", "metadata"],
  ["172.16.0.1", "private"],
  ["172.31.255.255", "private"],
  ["192.168.0.1", "private"],
  ["192.168.255.255", "private"],
  ["192.0.0.170", "ietf-protocol"],
  ["192.0.2.1", "documentation"],
  ["198.18.0.1", "benchmarking"],
  ["224.0.0.1", "multicast"],
  ["239.255.255.250", "multicast"],
  ["240.0.0.1", "reserved"],
  ["255.255.255.255", "reserved"],
  ["::", "unspecified"],
  ["::1", "loopback"],
  ["0:0:0:0:0:0:0:1", "loopback"],
  ["::127.0.0.1", "ipv4-compatible"],
  ["::8.8.8.8", "ipv4-compatible"],
  ["::ffff:127.0.0.1", "loopback"],
  ["::ffff:7f00:1", "loopback"],
  ["::ffff:10.1.2.3", "private"],
  ["::ffff:169.254.169.254", "metadata"],
  ["::ffff:0:127.0.0.1", "ipv4-translated"],
  ["64:ff9b::127.0.0.1", "nat64-loopback"],
  ["64:ff9b::a00:1", "nat64-private"],
  ["64:ff9b::a9fe:a9fe", "metadata"],
  ["64:ff9b:1::1", "nat64-local"],
  ["2002:7f00:1::", "6to4-loopback"],
  ["2002:c0a8:101::1", "6to4-private"],
  ["fc00::1", "unique-local"],
  ["fd12:3456::1", "unique-local"],
  ["fd00:ec2::254", "metadata"],
  ["fe80::1", "link-local"],
  ["fe80::1%eth0", "link-local"],
  ["febf::1", "link-local"],
  ["fec0::1", "site-local"],
  ["ff02::1", "multicast"],
  ["ff0e::1", "multicast"],
  ["100::1", "discard"],
  ["2001::1", "ietf-protocol"],
  ["2001:db8::1", "documentation"],
  ["3fff::1", "documentation"],
  ["4000::1", "not-global-unicast"],
  ["not-an-address", "not-an-address"],
  ["127.1", "not-an-address"],
  ["", "not-an-address"],
];

describe("address policy", () => {
  for (const [address, reason] of refused) {
    it(`refuses ${address || "(empty)"} as ${reason}`, () => {
      assert.deepEqual(vetAddress(address, none), { allowed: false, reason });
    });
  }

  it("allows public unicast, and dials an IPv4-mapped address as its IPv4 address", () => {
    assert.deepEqual(vetAddress("8.8.8.8", none), { allowed: true, address: "8.8.8.8", family: 4 });
    assert.deepEqual(vetAddress("::ffff:8.8.8.8", none), { allowed: true, address: "8.8.8.8", family: 4 });
    assert.deepEqual(vetAddress("2606:4700::1111", none), {
      allowed: true,
      address: "2606:4700::1111",
      family: 6,
    });
    // NAT64 and 6to4 of a public IPv4 address reach that address: allowed, dialled as written.
    assert.equal(vetAddress("64:ff9b::808:808", none).allowed, true);
    assert.equal(vetAddress("2002:808:808::1", none).allowed, true);
    // Just outside the private and CGNAT ranges.
    for (const edge of ["172.15.255.255", "172.32.0.0", "100.63.255.255", "100.128.0.0", "11.0.0.1"]) {
      assert.equal(vetAddress(edge, none).allowed, true, edge);
    }
  });

  it("explicit allowances open a blocked range, IPv4-mapped forms included, but never metadata", () => {
    const loopback = parseAllowances(["127.0.0.1/32", "::1"]);
    assert.deepEqual(vetAddress("127.0.0.1", loopback), { allowed: true, address: "127.0.0.1", family: 4 });
    assert.deepEqual(vetAddress("::ffff:127.0.0.1", loopback), {
      allowed: true,
      address: "127.0.0.1",
      family: 4,
    });
    assert.equal(vetAddress("::1", loopback).allowed, true);
    assert.deepEqual(vetAddress("127.0.0.2", loopback), { allowed: false, reason: "loopback" });

    const everything = parseAllowances(["0.0.0.0/0", "::/0", "169.254.0.0/16", "fd00::/8"]);
    assert.equal(vetAddress("10.0.0.1", everything).allowed, true);
    assert.equal(vetAddress("169.254.1.1", everything).allowed, true);
    for (const metadata of [
      "169.254.169.254",
      "::ffff:169.254.169.254",
      "fd00:ec2::254",
      "64:ff9b::a9fe:a9fe",
    ]) {
      assert.deepEqual(vetAddress(metadata, everything), { allowed: false, reason: "metadata" }, metadata);
    }
  });

  it("allowances must be addresses or CIDR ranges", () => {
    for (const bad of ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/", "10.0.0.0/-1", "fe80::1%eth0"]) {
      assert.throws(
        () => parseAllowances([bad]),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID") && !error.message.includes(bad),
        bad,
      );
    }
  });

  it("parses IPv6 text into the same bytes whatever the spelling", () => {
    const spellings = ["::ffff:127.0.0.1", "::ffff:7f00:1", "0:0:0:0:0:ffff:7f00:0001", "::FFFF:7F00:1"];
    const [first, ...rest] = spellings.map((text) => parseIpAddress(text));
    for (const parsed of rest) assert.deepEqual(parsed, first);
  });
});
