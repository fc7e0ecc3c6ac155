import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isLoopbackHost } from "../../src/config/index.ts";

describe("isLoopbackHost", () => {
  it("accepts localhost, ::1 and dotted-decimal 127.0.0.0/8", () => {
    for (const host of [
      "localhost",
      "LOCALHOST",
      "LocalHost",
      "::1",
      "[::1]",
      "127.0.0.1",
      "127.0.0.0",
      "127.1.2.3",
      "127.255.255.255",
    ]) {
      assert.equal(isLoopbackHost(host), true, host);
    }
  });

  it("refuses shorthand, octal, hex, mapped, expanded, suffixed and look-alike forms", () => {
    for (const host of [
      "127.1",
      "127.0.1",
      "0x7f.0.0.1",
      "0x7f000001",
      "2130706433",
      "0177.0.0.1",
      "127.000.0.1",
      "127.0.0.01",
      "127.0.0.1.nip.io",
      "localhost.",
      "a.localhost",
      "localhost.example.com",
      "::ffff:127.0.0.1",
      "::ffff:7f00:1",
      "0:0:0:0:0:0:0:1",
      "::0:1",
      "[::1]:8080",
      "127.0.0.1:8080",
      "128.0.0.1",
      "126.255.255.255",
      "0.0.0.0",
      "::",
      "",
      " 127.0.0.1",
      "127.0.0.1 ",
      "127.0.0.256",
    ]) {
      assert.equal(isLoopbackHost(host), false, host);
    }
  });

  it("answers false for a value that is not a string", () => {
    assert.equal(isLoopbackHost(undefined as unknown as string), false);
    assert.equal(isLoopbackHost(2130706433 as unknown as string), false);
  });
});
