import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import {
  classifyProtocolVersion,
  DEFAULT_PROTOCOL_VERSION,
  GATEWAY_PROTOCOL_VERSIONS,
  type ProtocolEra,
  UNSUPPORTED_PROTOCOL_VERSION_CODE,
  unsupportedVersionError,
} from "../../src/gateway/protocol-era.ts";

const ALL_NEWEST_FIRST = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"];
const legacyOnly = { legacy: GATEWAY_PROTOCOL_VERSIONS.legacy, modern: [] };

function classify(values: string[] | undefined): ProtocolEra {
  return classifyProtocolVersion(values, GATEWAY_PROTOCOL_VERSIONS);
}

describe("protocol era", () => {
  it("classifies the supported versions, and an absent header as 2025-03-26", () => {
    const table: [string[] | undefined, ProtocolEra][] = [
      [undefined, { era: "legacy", version: "2025-03-26" }],
      [[], { era: "legacy", version: "2025-03-26" }],
      [["2025-03-26"], { era: "legacy", version: "2025-03-26" }],
      [["2025-06-18"], { era: "legacy", version: "2025-06-18" }],
      [["2025-11-25"], { era: "legacy", version: "2025-11-25" }],
      [["2026-07-28"], { era: "modern", version: "2026-07-28" }],
    ];
    for (const [values, expected] of table) assert.deepEqual(classify(values), expected, String(values));
    assert.equal(DEFAULT_PROTOCOL_VERSION, "2025-03-26");
  });

  it("M2 an unknown or future protocol version is unsupported with the supported list", () => {
    const table: [string, string[], string][] = [
      ["future", ["2027-01-01"], "2027-01-01"],
      ["older than the gateway polices", ["2024-11-05"], "2024-11-05"],
      ["draft-like date", ["1900-01-01"], "1900-01-01"],
      ["duplicated, same value", ["2025-06-18", "2025-06-18"], ""],
      ["duplicated, different values", ["2025-06-18", "2026-07-28"], ""],
      ["comma-joined list", ["2025-06-18, 2026-07-28"], ""],
      ["empty value", [""], ""],
      ["padded", [" 2025-06-18"], ""],
      ["not a date", ["latest"], ""],
      ["trailing text", ["2025-06-18x"], ""],
      ["injection attempt", ["2025-06-18\r\nX: 1"], ""],
    ];
    for (const [name, values, requested] of table) {
      assert.deepEqual(
        classify(values),
        { era: "unsupported", supported: ALL_NEWEST_FIRST, requested },
        name,
      );
    }
    // A modern request for a legacy-only upstream: the gateway answers -32022 listing legacy versions.
    assert.deepEqual(classifyProtocolVersion(["2026-07-28"], legacyOnly), {
      era: "unsupported",
      supported: ["2025-11-25", "2025-06-18", "2025-03-26"],
      requested: "2026-07-28",
    });
    // An absent header is unsupported when the caller's list lacks the default version.
    assert.deepEqual(classifyProtocolVersion(undefined, { legacy: ["2025-11-25"], modern: ["2026-07-28"] }), {
      era: "unsupported",
      supported: ["2026-07-28", "2025-11-25"],
      requested: "2025-03-26",
    });
  });

  it("M2 the error body is the 2026-07-28 UnsupportedProtocolVersionError", () => {
    const era = classify(["2027-01-01"]);
    assert.equal(era.era, "unsupported");
    const body = unsupportedVersionError(7, era.supported, era.requested);
    assert.equal(
      JSON.stringify(body),
      '{"jsonrpc":"2.0","id":7,"error":{"code":-32022,"message":"Unsupported protocol version",' +
        '"data":{"supported":["2026-07-28","2025-11-25","2025-06-18","2025-03-26"],"requested":"2027-01-01"}}}',
    );
    assert.equal(UNSUPPORTED_PROTOCOL_VERSION_CODE, -32022);
    for (const [id, expected] of [
      ["abc", "abc"],
      [0, 0],
      [null, null],
      [undefined, null],
    ] as const) {
      assert.equal(unsupportedVersionError(id, ["2025-11-25"]).id, expected);
    }
    assert.equal(unsupportedVersionError(null, ["2025-11-25"]).error.data.requested, "");
  });

  it("M2 the error body never echoes a malformed header value", () => {
    const hostile = "2025-06-18\r\n<script>";
    const era = classify([hostile]);
    assert.equal(era.era, "unsupported");
    const text = JSON.stringify(unsupportedVersionError(1, era.supported, era.requested));
    assert.ok(!text.includes("script"), text);
    // And the builder refuses to be handed one directly.
    assert.throws(
      () => unsupportedVersionError(1, ["2025-11-25"], hostile),
      (error) => isGateError(error, "ERR_ARGUMENT_INVALID") && !error.message.includes("script"),
    );
  });

  it("refuses bad supported lists and ids as argument errors", () => {
    const badLists = [
      { legacy: ["2025-11-25"], modern: ["2025-11-25"] },
      { legacy: ["v1"], modern: [] },
      { legacy: undefined as unknown as string[], modern: [] },
    ];
    for (const supported of badLists) {
      assert.throws(
        () => classifyProtocolVersion(["2025-11-25"], supported),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
    }
    assert.throws(
      () => classifyProtocolVersion("2025-11-25" as unknown as string[], GATEWAY_PROTOCOL_VERSIONS),
      (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
    for (const id of [Number.NaN, Number.POSITIVE_INFINITY, {}, true]) {
      assert.throws(
        () => unsupportedVersionError(id as unknown as number, ["2025-11-25"]),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
    }
    assert.throws(
      () => unsupportedVersionError(1, []),
      (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
  });
});
