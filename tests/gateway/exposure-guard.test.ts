import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { type GateError, isGateError } from "../../src/errors.ts";
import { checkExposure, type ExposureAuth } from "../../src/gateway/exposure-guard.ts";

const anonymousOnly: ExposureAuth = { anonymous: true, hasIssuers: false, hasApiKeys: false };
const issuersOnly: ExposureAuth = { anonymous: false, hasIssuers: true, hasApiKeys: false };
const keysOnly: ExposureAuth = { anonymous: false, hasIssuers: false, hasApiKeys: true };
const anonymousAndIssuers: ExposureAuth = { anonymous: true, hasIssuers: true, hasApiKeys: false };
const none: ExposureAuth = { anonymous: false, hasIssuers: false, hasApiKeys: false };

const LOOPBACK = ["127.0.0.1", "127.5.6.7", "::1"];
// `::ffff:127.0.0.1` is what Node reports for a socket bound to the IPv4-mapped loopback literal;
// it is deliberately read as not loopback (strict, like the config layer).
const NOT_LOOPBACK = [
  "0.0.0.0",
  "::",
  "10.0.0.5",
  "192.168.1.10",
  "::ffff:127.0.0.1",
  "fe80::1",
  "2001:db8::1",
];

function refusal(fn: () => unknown): GateError {
  try {
    fn();
  } catch (error) {
    assert.ok(isGateError(error, "ERR_UNSAFE_EXPOSURE"), String(error));
    return error;
  }
  assert.fail("expected ERR_UNSAFE_EXPOSURE");
}

async function boundAddressOf(host: string): Promise<string> {
  const server = createServer();
  server.listen(0, host);
  await once(server, "listening");
  const { address } = server.address() as AddressInfo;
  server.close();
  await once(server, "close");
  return address;
}

describe("exposure guard", () => {
  it("L3 anonymous on a non-loopback bound address refuses to start and names the setting", () => {
    for (const boundAddress of NOT_LOOPBACK) {
      for (const auth of [anonymousOnly, anonymousAndIssuers]) {
        const error = refusal(() =>
          checkExposure({ boundAddress, auth, allowUnauthenticatedExposure: false }),
        );
        assert.match(error.message, /listen\.allowUnauthenticatedExposure/, boundAddress);
        assert.match(error.message, /auth\.anonymous/, boundAddress);
        assert.equal(error.toWire().status, 500);
      }
    }
  });

  it("L3 with the attestation it starts with a loud warning", () => {
    for (const boundAddress of NOT_LOOPBACK) {
      const { warning } = checkExposure({
        boundAddress,
        auth: anonymousOnly,
        allowUnauthenticatedExposure: true,
      });
      assert.ok(warning !== null, boundAddress);
      assert.match(warning, /^WARNING: UNAUTHENTICATED EXPOSURE/);
      assert.ok(warning.includes(boundAddress));
      assert.match(warning, /listen\.allowUnauthenticatedExposure/);
    }
  });

  it("L3 the bound address decides, not the configured host", async () => {
    // Configured as loopback-looking or not, only the address Node reports after listen counts.
    const wildcard = await boundAddressOf("0.0.0.0");
    assert.equal(wildcard, "0.0.0.0");
    refusal(() =>
      checkExposure({ boundAddress: wildcard, auth: anonymousOnly, allowUnauthenticatedExposure: false }),
    );

    const loopback = await boundAddressOf("localhost");
    assert.ok(["127.0.0.1", "::1"].includes(loopback), loopback);
    assert.deepEqual(
      checkExposure({ boundAddress: loopback, auth: anonymousOnly, allowUnauthenticatedExposure: false }),
      { warning: null },
    );

    // A configured name never reaches the guard: a hostname is not an address and is refused.
    refusal(() =>
      checkExposure({
        boundAddress: "gateway.internal",
        auth: anonymousOnly,
        allowUnauthenticatedExposure: false,
      }),
    );
  });

  it("L3 no authentication at all is refused on any address, attested or not, naming auth", () => {
    for (const boundAddress of [...LOOPBACK, ...NOT_LOOPBACK]) {
      for (const allowUnauthenticatedExposure of [false, true]) {
        const error = refusal(() =>
          checkExposure({ boundAddress, auth: none, allowUnauthenticatedExposure }),
        );
        assert.match(error.message, /auth\.issuers/);
        assert.match(error.message, /auth\.anonymous/);
      }
    }
  });

  it("anonymous on loopback, and authenticated modes anywhere, start without a warning", () => {
    const cases: [string, ExposureAuth][] = [
      ...LOOPBACK.map((address): [string, ExposureAuth] => [address, anonymousOnly]),
      ...[...LOOPBACK, ...NOT_LOOPBACK].flatMap((address): [string, ExposureAuth][] => [
        [address, issuersOnly],
        [address, keysOnly],
      ]),
    ];
    for (const [boundAddress, auth] of cases) {
      assert.deepEqual(checkExposure({ boundAddress, auth, allowUnauthenticatedExposure: false }), {
        warning: null,
      });
      // The attestation does not add a warning where nothing is exposed.
      assert.deepEqual(checkExposure({ boundAddress, auth, allowUnauthenticatedExposure: true }), {
        warning: null,
      });
    }
  });

  it("an attestation that is not exactly true does not count", () => {
    refusal(() =>
      checkExposure({
        boundAddress: "0.0.0.0",
        auth: anonymousOnly,
        allowUnauthenticatedExposure: "true" as unknown as boolean,
      }),
    );
  });

  it("a missing bound address is an argument error, not a pass", () => {
    for (const boundAddress of ["", undefined, null]) {
      assert.throws(
        () =>
          checkExposure({
            boundAddress: boundAddress as unknown as string,
            auth: anonymousOnly,
            allowUnauthenticatedExposure: true,
          }),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
    }
  });
});
