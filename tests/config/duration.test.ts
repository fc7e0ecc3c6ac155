import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseDuration } from "../../src/config/index.ts";
import { isGateError } from "../../src/errors.ts";

describe("parseDuration", () => {
  it("reads a whole number with one unit of ms, s, m or h as milliseconds", () => {
    const table: Array<[string, number]> = [
      ["0ms", 0],
      ["1ms", 1],
      ["250ms", 250],
      ["0s", 0],
      ["30s", 30_000],
      ["5m", 300_000],
      ["30m", 1_800_000],
      ["8h", 28_800_000],
      ["720h", 2_592_000_000],
    ];
    for (const [text, ms] of table) assert.equal(parseDuration(text), ms, text);
  });

  it("refuses fractions, bare numbers, signs, days, spaces, upper case, compounds and overflow", () => {
    const refused = [
      "1.5s",
      "10",
      "-1s",
      "+1s",
      "1d",
      "1w",
      "",
      "s",
      "1 s",
      " 1s",
      "1s ",
      "1S",
      "1sec",
      "1m30s",
      "1e3ms",
      "0x10s",
      "９s",
      "99999999999999999999h",
    ];
    for (const text of refused) {
      assert.throws(
        () => parseDuration(text, "sessions.idleTimeout"),
        (error: unknown) => {
          assert.ok(isGateError(error, "ERR_CONFIG_INVALID"), text);
          assert.match(error.message, /^sessions\.idleTimeout must be/);
          return true;
        },
        JSON.stringify(text),
      );
    }
  });

  it("refuses a value that is not a string without echoing it", () => {
    assert.throws(() => parseDuration(30 as unknown as string), /^GateError: duration must be/);
  });
});
