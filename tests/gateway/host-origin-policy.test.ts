import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { type GateErrorCode, isGateError } from "../../src/errors.ts";
import { createHostOriginPolicy } from "../../src/gateway/host-origin-policy.ts";
import type { DistinctHeaders } from "../../src/identity/index.ts";

const policy = createHostOriginPolicy({
  allowedHosts: ["gateway.example.com", "localhost:8787", "127.0.0.1:8787", "[::1]:8787"],
  allowedOrigins: ["https://app.example.com", "http://localhost:8787"],
});

function outcome(headers: DistinctHeaders): "ok" | GateErrorCode {
  try {
    policy.check(headers);
    return "ok";
  } catch (error) {
    assert.ok(isGateError(error), String(error));
    return error.code;
  }
}

/** Runs the check and asserts that nothing it threw carries any of the given header values. */
function refusalText(headers: DistinctHeaders): string {
  try {
    policy.check(headers);
  } catch (error) {
    assert.ok(isGateError(error));
    return JSON.stringify([error.message, error.detail, error.toWire(), String(error.stack)]);
  }
  assert.fail("expected a refusal");
}

const HOST_OK = { host: ["gateway.example.com"] };

describe("host and origin policy", () => {
  it("accepts allowlisted hosts exactly, in any letter case, with the port as listed", () => {
    const table: [string, "ok" | GateErrorCode][] = [
      ["gateway.example.com", "ok"],
      ["GATEWAY.Example.COM", "ok"],
      ["localhost:8787", "ok"],
      ["127.0.0.1:8787", "ok"],
      ["[::1]:8787", "ok"],
      // The port is part of the match: an allowlist entry without a port matches only no port.
      ["gateway.example.com:443", "ERR_HOST_FORBIDDEN"],
      ["localhost", "ERR_HOST_FORBIDDEN"],
      ["localhost:8788", "ERR_HOST_FORBIDDEN"],
      ["127.0.0.1", "ERR_HOST_FORBIDDEN"],
      // No normalisation: trailing dots, other spellings of loopback, suffixes.
      ["gateway.example.com.", "ERR_HOST_FORBIDDEN"],
      ["127.1:8787", "ERR_HOST_FORBIDDEN"],
      ["[0:0:0:0:0:0:0:1]:8787", "ERR_HOST_FORBIDDEN"],
      ["gateway.example.com.evil.test", "ERR_HOST_FORBIDDEN"],
      ["", "ERR_HOST_FORBIDDEN"],
    ];
    for (const [host, expected] of table) assert.equal(outcome({ host: [host] }), expected, host);
  });

  it("L4 a hostile Host gets 403", () => {
    const table: [string, DistinctHeaders][] = [
      ["rebinding name", { host: ["attacker.test"] }],
      ["rebinding name with the gateway's port", { host: ["attacker.test:8787"] }],
      ["missing", {}],
      ["empty list", { host: [] }],
      ["duplicated, first allowed", { host: ["gateway.example.com", "attacker.test"] }],
      ["duplicated, both allowed", { host: ["gateway.example.com", "gateway.example.com"] }],
      ["duplicated across letter case of the name", { host: ["gateway.example.com"], Host: ["x.test"] }],
    ];
    for (const [name, headers] of table) {
      assert.equal(outcome(headers), "ERR_HOST_FORBIDDEN", name);
      assert.throws(
        () => policy.check(headers),
        (error) => isGateError(error) && error.toWire().status === 403,
      );
    }
  });

  it("L4 a hostile Origin gets 403 even when it equals the Host", () => {
    // DNS rebinding: the page at attacker.test resolves to the gateway, so Host and Origin agree.
    const rebinding = createHostOriginPolicy({
      allowedHosts: ["attacker.test", "gateway.example.com"],
      allowedOrigins: ["https://app.example.com"],
    });
    assert.throws(
      () => rebinding.check({ host: ["attacker.test"], origin: ["http://attacker.test"] }),
      (error) => isGateError(error, "ERR_ORIGIN_FORBIDDEN") && error.toWire().status === 403,
    );
    const table: [string, readonly string[]][] = [
      ["same as Host", ["https://gateway.example.com"]],
      ["hostile", ["https://evil.test"]],
      ["null", ["null"]],
      ["NULL", ["NULL"]],
      ["empty", [""]],
      ["with a path", ["https://app.example.com/"]],
      ["default port written out", ["https://app.example.com:443"]],
      ["other scheme", ["http://app.example.com"]],
      ["suffix", ["https://app.example.com.evil.test"]],
      ["duplicated, both allowed", ["https://app.example.com", "https://app.example.com"]],
      ["duplicated, one hostile", ["https://app.example.com", "https://evil.test"]],
    ];
    for (const [name, origin] of table) {
      assert.equal(outcome({ ...HOST_OK, origin }), "ERR_ORIGIN_FORBIDDEN", name);
    }
    // The Host check runs first: a bad Host is reported as such even with an allowed Origin.
    assert.equal(outcome({ host: ["evil.test"], origin: ["https://app.example.com"] }), "ERR_HOST_FORBIDDEN");
  });

  it("allows requests without Origin and allowlisted origins in any letter case", () => {
    assert.equal(outcome(HOST_OK), "ok");
    assert.equal(outcome({ ...HOST_OK, origin: undefined }), "ok");
    assert.equal(outcome({ ...HOST_OK, origin: ["https://app.example.com"] }), "ok");
    assert.equal(outcome({ ...HOST_OK, origin: ["HTTPS://APP.Example.com"] }), "ok");
    assert.equal(outcome({ host: ["localhost:8787"], origin: ["http://localhost:8787"] }), "ok");
  });

  it("a header value that spells a sentinel word is still just a value", () => {
    assert.equal(outcome({ ...HOST_OK, origin: ["missing"] }), "ERR_ORIGIN_FORBIDDEN");
    assert.equal(outcome({ host: ["missing"] }), "ERR_HOST_FORBIDDEN");
  });

  it("L4 refusals never echo the hostile header value", () => {
    const hostile = "evil.test\r\nX-Injected: 1\u001b[31m";
    const cases: DistinctHeaders[] = [
      { host: [hostile] },
      { host: [hostile, hostile] },
      { ...HOST_OK, origin: [`https://${hostile}`] },
      { ...HOST_OK, origin: [`https://${hostile}`, "https://app.example.com"] },
    ];
    for (const headers of cases) {
      const text = refusalText(headers);
      assert.ok(!text.includes("evil.test"), text);
      assert.ok(!text.includes("Injected"), text);
    }
  });

  it("refuses `request.headers` (joined strings) and bad allowlists as argument errors", () => {
    assert.throws(
      () => policy.check({ host: "gateway.example.com" } as unknown as DistinctHeaders),
      (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
    for (const options of [
      { allowedHosts: [], allowedOrigins: [] },
      { allowedHosts: [""], allowedOrigins: [] },
      { allowedHosts: ["a"], allowedOrigins: undefined as unknown as string[] },
      { allowedHosts: "a" as unknown as string[], allowedOrigins: [] },
    ]) {
      assert.throws(
        () => createHostOriginPolicy(options),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
    }
    // An empty origin allowlist is allowed: it refuses every browser request.
    const noBrowsers = createHostOriginPolicy({ allowedHosts: ["a"], allowedOrigins: [] });
    noBrowsers.check({ host: ["a"] });
    assert.throws(() => noBrowsers.check({ host: ["a"], origin: ["https://a"] }));
  });

  it("sees duplicate Host headers through Node's headersDistinct", async () => {
    const seen: (string | GateErrorCode)[] = [];
    const server = createServer((req, res) => {
      seen.push(outcome(req.headersDistinct));
      res.end();
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    try {
      for (const headers of [
        [["Host", "gateway.example.com"]],
        [
          ["Host", "gateway.example.com"],
          ["Host", "attacker.test"],
        ],
      ]) {
        const req = request({ port, host: "127.0.0.1", path: "/", setHost: false, headers: headers.flat() });
        req.end();
        const [res] = await once(req, "response");
        res.resume();
        await once(res, "end");
      }
    } finally {
      server.close();
    }
    // Node's parser lets a duplicated Host through to the handler; only headersDistinct shows both.
    assert.deepEqual(seen, ["ok", "ERR_HOST_FORBIDDEN"]);
  });
});
