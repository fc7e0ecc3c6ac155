import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  canonicalCidr,
  canonicalHost,
  canonicalHostHeader,
  canonicalOrigin,
  canonicalPublicUrl,
  parseHttpUrl,
} from "../../src/config/network-values.ts";

describe("network values in the config", () => {
  it("reads trusted proxy blocks, making a bare address a one-host block", () => {
    const table: Array<[string, string | undefined]> = [
      ["10.0.0.0/8", "10.0.0.0/8"],
      ["192.168.1.7", "192.168.1.7/32"],
      ["192.168.1.7/32", "192.168.1.7/32"],
      ["2001:DB8::/32", "2001:db8::/32"],
      ["fd00::1", "fd00::1/128"],
      ["::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"],
      ["10.0.0.1/8", undefined],
      ["2001:db8::1/32", undefined],
      ["0.0.0.0/0", undefined],
      ["::/0", undefined],
      ["10.0.0.0/33", undefined],
      ["10.0.0.0/08", undefined],
      ["10.0.0.0/", undefined],
      ["10.0.0.0/8/8", undefined],
      ["fe80::1%eth0/128", undefined],
      ["010.0.0.0/8", undefined],
      ["10.0.0", undefined],
    ];
    for (const [text, expected] of table) assert.equal(canonicalCidr(text), expected, text);
  });

  it("reads listen hosts as addresses or DNS names, refusing numeric look-alikes", () => {
    const table: Array<[string, string | undefined]> = [
      ["127.0.0.1", "127.0.0.1"],
      ["0.0.0.0", "0.0.0.0"],
      ["::", "::"],
      ["::1", "::1"],
      ["Gateway.Internal", "gateway.internal"],
      ["localhost", "localhost"],
      ["127.1", undefined],
      ["0x7f.0.0.1", undefined],
      ["2130706433", undefined],
      ["[::1]", undefined],
      ["host_name", undefined],
      ["-bad.example", undefined],
      ["a..b", undefined],
      ["example.com.", undefined],
      ["", undefined],
    ];
    for (const [text, expected] of table) assert.equal(canonicalHost(text), expected, text);
  });

  it("reads Host allowlist entries with an optional port", () => {
    const table: Array<[string, string | undefined]> = [
      ["GW.example.com", "gw.example.com"],
      ["gw.example.com:8443", "gw.example.com:8443"],
      ["[::1]:8787", "[::1]:8787"],
      ["[::1]", "[::1]"],
      ["10.0.0.5:80", "10.0.0.5:80"],
      ["::1", undefined],
      ["gw.example.com:", undefined],
      ["gw.example.com:080", undefined],
      ["gw.example.com:65536", undefined],
      ["[gw.example.com]", undefined],
      ["gw.example.com/path", undefined],
    ];
    for (const [text, expected] of table) assert.equal(canonicalHostHeader(text), expected, text);
  });

  it("canonicalises publicUrl and origins", () => {
    assert.equal(canonicalPublicUrl("https://GW.example.com:443/"), "https://gw.example.com");
    assert.equal(canonicalPublicUrl("http://127.0.0.1:8787"), "http://127.0.0.1:8787");
    assert.equal(canonicalPublicUrl("https://gw.example.com/a/b/"), "https://gw.example.com/a/b");
    assert.equal(canonicalOrigin("https://App.example.com/"), "https://app.example.com");
    assert.equal(canonicalOrigin("http://localhost:3000"), "http://localhost:3000");
    assert.equal(canonicalOrigin("https://app.example.com/."), undefined);
  });

  it("allows http only for a loopback host written plainly, and never credentials or fragments", () => {
    const loopbackOnly = { http: "loopback", allowQuery: false } as const;
    for (const text of ["http://127.0.0.1:9000", "http://localhost/", "http://[::1]:1/x", "https://127.1/"]) {
      assert.ok(parseHttpUrl(text, loopbackOnly), text);
    }
    for (const text of [
      "http://127.1/",
      "http://0x7f.0.0.1/",
      "http://2130706433/",
      "http://127.0.0.1.nip.io/",
      "http://[::ffff:127.0.0.1]/",
      "http://example.com/",
      "http:\\\\127.0.0.1/",
      " http://127.0.0.1/",
      "http://127.0.0.1/\n",
      "https://user@example.com/",
      "https://:pw@example.com/",
      "https://example.com/#frag",
      "https://example.com/?q=1",
      "HTTPS//example.com",
      "javascript://example.com/",
    ]) {
      assert.equal(parseHttpUrl(text, loopbackOnly), undefined, JSON.stringify(text));
    }
    assert.ok(parseHttpUrl("https://example.com/jwks?kid=1", { http: "never", allowQuery: true }));
  });
});
