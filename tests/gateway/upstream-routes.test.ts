import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { UpstreamConfig } from "../../src/config/gateway-config.ts";
import { isGateError } from "../../src/errors.ts";
import { createUpstreamRoutes, metadataPath } from "../../src/gateway/upstream-routes.ts";

function upstream(name: string, path: string): UpstreamConfig {
  return {
    name,
    path,
    audience: `https://gw.example${path}`,
    scopes: [],
    protocolVersions: undefined,
    inject: {},
    transport: "http",
    url: `http://127.0.0.1:9000/${name}`,
  };
}

const mcp = upstream("mcp", "/mcp");
const files = upstream("files", "/tools/files");
const routes = createUpstreamRoutes({ upstreams: [mcp, files] });

describe("upstream routes", () => {
  it("matches configured paths exactly and nothing else", () => {
    const table: [string, UpstreamConfig | undefined][] = [
      ["/mcp", mcp],
      ["/tools/files", files],
      ["/mcp/", undefined],
      ["/MCP", undefined],
      ["/mcp/x", undefined],
      ["/mc", undefined],
      ["/tools", undefined],
      ["/tools/", undefined],
      ["//mcp", undefined],
      ["/./mcp", undefined],
      ["/x/../mcp", undefined],
      ["/%6dcp", undefined],
      ["/mcp%2F", undefined],
      ["/tools%2Ffiles", undefined],
      ["/mcp?x=1", undefined],
      ["/mcp#", undefined],
      ["mcp", undefined],
      ["/mcp\u0000", undefined],
      ["", undefined],
      ["/", undefined],
      ["/__proto__", undefined],
      ["__proto__", undefined],
      ["constructor", undefined],
      ["/.well-known/oauth-protected-resource/mcp", undefined],
    ];
    for (const [pathname, expected] of table) {
      assert.equal(routes.match(pathname), expected, JSON.stringify(pathname));
    }
  });

  it("matches metadata paths exactly: the well-known suffix followed by the upstream path", () => {
    const table: [string, UpstreamConfig | undefined][] = [
      ["/.well-known/oauth-protected-resource/mcp", mcp],
      ["/.well-known/oauth-protected-resource/tools/files", files],
      ["/.well-known/oauth-protected-resource", undefined],
      ["/.well-known/oauth-protected-resource/", undefined],
      ["/.well-known/oauth-protected-resource/mcp/", undefined],
      ["/.well-known/oauth-protected-resource/MCP", undefined],
      ["/.well-known/oauth-protected-resource/tools", undefined],
      ["/.Well-Known/oauth-protected-resource/mcp", undefined],
      ["/.well-known/oauth-protected-resource%2Fmcp", undefined],
      ["/.well-known/oauth-authorization-server/mcp", undefined],
      ["/mcp/.well-known/oauth-protected-resource", undefined],
      ["/mcp", undefined],
    ];
    for (const [pathname, expected] of table) {
      assert.equal(routes.matchMetadata(pathname), expected, JSON.stringify(pathname));
    }
  });

  it("gives the upstream at / the bare well-known path (RFC 9728 §3.1)", () => {
    const root = upstream("root", "/");
    const withRoot = createUpstreamRoutes({ upstreams: [root, mcp] });
    assert.equal(metadataPath("/"), "/.well-known/oauth-protected-resource");
    assert.equal(withRoot.match("/"), root);
    assert.equal(withRoot.match(""), undefined);
    assert.equal(withRoot.matchMetadata("/.well-known/oauth-protected-resource"), root);
    assert.equal(withRoot.matchMetadata("/.well-known/oauth-protected-resource/"), undefined);
    assert.equal(withRoot.matchMetadata("/.well-known/oauth-protected-resource/mcp"), mcp);
  });

  it("refuses reserved, malformed and duplicate paths at construction", () => {
    const table: UpstreamConfig[][] = [
      [upstream("a", "/.well-known/oauth-protected-resource")],
      [upstream("a", "/.tenantgate/admin")],
      [upstream("a", "/.Well-Known/x")],
      [upstream("a", "/mcp/")],
      [upstream("a", "mcp")],
      [upstream("a", "/a/../b")],
      [upstream("a", "/a%2Fb")],
      [upstream("a", "/mcp"), upstream("b", "/mcp")],
    ];
    for (const upstreams of table) {
      assert.throws(
        () => createUpstreamRoutes({ upstreams }),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
        JSON.stringify(upstreams.map((u) => u.path)),
      );
    }
  });

  it("treats non-string input as no route", () => {
    for (const value of [undefined, null, 1, ["/mcp"], { toString: () => "/mcp" }]) {
      assert.equal(routes.match(value as unknown as string), undefined);
      assert.equal(routes.matchMetadata(value as unknown as string), undefined);
    }
  });
});
