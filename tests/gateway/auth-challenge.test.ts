import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { GateError, type GateErrorCode, gateErrorCodes, isGateError, toWire } from "../../src/errors.ts";
import { type ChallengeOptions, challengeHeaders, quotedString } from "../../src/gateway/auth-challenge.ts";

const META = "https://gw.example/.well-known/oauth-protected-resource/mcp";

describe("auth challenge", () => {
  it("answers each auth code with its status and challenge", () => {
    const table: [GateErrorCode, ChallengeOptions, number, Record<string, string>][] = [
      [
        "ERR_AUTH_REQUIRED",
        { metadataUrl: META, requiredScopes: ["ignored"] },
        401,
        { "WWW-Authenticate": `Bearer resource_metadata="${META}"` },
      ],
      [
        "ERR_AUTH_INVALID",
        { metadataUrl: META },
        401,
        { "WWW-Authenticate": `Bearer error="invalid_token", resource_metadata="${META}"` },
      ],
      [
        "ERR_INSUFFICIENT_SCOPE",
        { metadataUrl: META, requiredScopes: ["files:read", "files:write", "files:read"] },
        403,
        {
          "WWW-Authenticate": `Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata="${META}"`,
        },
      ],
      [
        "ERR_INSUFFICIENT_SCOPE",
        { metadataUrl: META },
        403,
        { "WWW-Authenticate": `Bearer error="insufficient_scope", resource_metadata="${META}"` },
      ],
      ["ERR_AUTH_RATE_LIMITED", { metadataUrl: META }, 429, { "Retry-After": "60" }],
      ["ERR_AUTH_RATE_LIMITED", { metadataUrl: META, retryAfterSeconds: 5 }, 429, { "Retry-After": "5" }],
      ["ERR_HOST_FORBIDDEN", { metadataUrl: META }, 403, {}],
      ["ERR_STORE_UNAVAILABLE", { metadataUrl: META }, 503, {}],
    ];
    for (const [code, options, status, headers] of table) {
      const error = new GateError(code, "internal message", { detail: "internal detail" });
      assert.deepEqual(challengeHeaders(error, options), { status, headers }, code);
      assert.deepEqual(challengeHeaders(code, options), { status, headers }, code);
    }
  });

  it("agrees with toWire for every code and never puts message or detail in a header", () => {
    const secret = "tenant-secret-ZZZ";
    for (const code of gateErrorCodes) {
      const error = new GateError(code, `message ${secret}`, { detail: `detail ${secret}`, cause: secret });
      const { status, headers } = challengeHeaders(error, { metadataUrl: META, requiredScopes: ["s"] });
      assert.equal(status, toWire(code).status, code);
      for (const value of Object.values(headers)) assert.ok(!value.includes(secret), code);
    }
    // A code outside the union (a cast or plain JavaScript) is internal, like toWire.
    assert.deepEqual(challengeHeaders("ERR_NOPE" as GateErrorCode, { metadataUrl: META }), {
      status: 500,
      headers: {},
    });
  });

  it("escapes quoted-strings per RFC 9110 §5.6.4 and refuses what cannot be quoted", () => {
    const table: [string, string][] = [
      ["", '""'],
      ["plain", '"plain"'],
      ['a"b', '"a\\"b"'],
      ["a\\b", '"a\\\\b"'],
      ['\\"', '"\\\\\\""'],
      ["tab\there", '"tab\there"'],
    ];
    for (const [value, expected] of table) assert.equal(quotedString(value), expected, value);
    for (const value of ["a\r\nb", "a\nb", "a\u0000b", "a\u007fb", "caf\u00e9", "\u2028", "😀"]) {
      assert.throws(
        () => quotedString(value),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
        JSON.stringify(value),
      );
    }
  });

  it("refuses metadata URLs, scopes and delays that would make a malformed header", () => {
    const bad: [GateErrorCode, ChallengeOptions][] = [
      ["ERR_AUTH_REQUIRED", { metadataUrl: 'https://gw.example/"x' }],
      ["ERR_AUTH_REQUIRED", { metadataUrl: "https://gw.example/a\\b" }],
      ["ERR_AUTH_REQUIRED", { metadataUrl: "https://gw.example/a b" }],
      ["ERR_AUTH_REQUIRED", { metadataUrl: "https://gw.example/\r\nSet-Cookie: x=1" }],
      ["ERR_AUTH_INVALID", { metadataUrl: "javascript:alert(1)" }],
      ["ERR_AUTH_INVALID", { metadataUrl: "" }],
      ["ERR_INSUFFICIENT_SCOPE", { metadataUrl: META, requiredScopes: ['a"b'] }],
      ["ERR_INSUFFICIENT_SCOPE", { metadataUrl: META, requiredScopes: ["a b"] }],
      ["ERR_INSUFFICIENT_SCOPE", { metadataUrl: META, requiredScopes: ["a\\b"] }],
      ["ERR_INSUFFICIENT_SCOPE", { metadataUrl: META, requiredScopes: [""] }],
      ["ERR_AUTH_RATE_LIMITED", { metadataUrl: META, retryAfterSeconds: 0 }],
      ["ERR_AUTH_RATE_LIMITED", { metadataUrl: META, retryAfterSeconds: 1.5 }],
      ["ERR_AUTH_RATE_LIMITED", { metadataUrl: META, retryAfterSeconds: Number.NaN }],
      ["ERR_AUTH_RATE_LIMITED", { metadataUrl: META, retryAfterSeconds: 86_401 }],
    ];
    for (const [code, options] of bad) {
      assert.throws(
        () => challengeHeaders(code, options),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
        `${code} ${JSON.stringify(options)}`,
      );
    }
  });
});
