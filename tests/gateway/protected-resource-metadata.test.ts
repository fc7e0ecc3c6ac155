import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { UpstreamConfig } from "../../src/config/gateway-config.ts";
import { isGateError } from "../../src/errors.ts";
import {
  metadataUrl,
  protectedResourceMetadata,
  resourceUrl,
} from "../../src/gateway/protected-resource-metadata.ts";
import { createUpstreamRoutes } from "../../src/gateway/upstream-routes.ts";

const PUBLIC_URL = "https://gw.example";
const ISSUERS = ["https://login.example", "https://idp.example/tenant-a"];

function upstream(name: string, path: string, scopes: string[] = []): UpstreamConfig {
  return {
    name,
    path,
    // The config layer's default (resolve-config.ts): publicUrl + path.
    audience: `${PUBLIC_URL}${path}`,
    scopes,
    protocolVersions: undefined,
    inject: {},
    transport: "http",
    url: `http://127.0.0.1:9000/${name}`,
  };
}

/** What the gateway edge does: find the upstream by metadata path, publish its resource. */
function served(upstreams: UpstreamConfig[], pathname: string) {
  const found = createUpstreamRoutes({ upstreams }).matchMetadata(pathname);
  if (found === undefined) return undefined;
  return protectedResourceMetadata(found, {
    resource: resourceUrl(PUBLIC_URL, found.path),
    issuers: ISSUERS,
  });
}

describe("protected resource metadata", () => {
  it("builds metadata URLs by inserting the well-known string after the host (RFC 9728 §3.1)", () => {
    const table: [string, string, string][] = [
      ["https://gw.example", "/mcp", "https://gw.example/.well-known/oauth-protected-resource/mcp"],
      ["https://gw.example", "/a/b", "https://gw.example/.well-known/oauth-protected-resource/a/b"],
      ["https://gw.example", "/", "https://gw.example/.well-known/oauth-protected-resource"],
      ["http://127.0.0.1:8787", "/mcp", "http://127.0.0.1:8787/.well-known/oauth-protected-resource/mcp"],
      ["http://[::1]:8787", "/mcp", "http://[::1]:8787/.well-known/oauth-protected-resource/mcp"],
      [
        "https://host.example/base",
        "/mcp",
        "https://host.example/.well-known/oauth-protected-resource/base/mcp",
      ],
      ["https://host.example/base", "/", "https://host.example/.well-known/oauth-protected-resource/base/"],
    ];
    for (const [publicUrl, path, expected] of table) {
      assert.equal(metadataUrl(publicUrl, path), expected, `${publicUrl} ${path}`);
    }
  });

  it("publishes the resource as given, configured issuers, the upstream's scopes and header bearer only", () => {
    const files = upstream("files", "/files", ["files:read", "files:write"]);
    const table: [UpstreamConfig, Parameters<typeof protectedResourceMetadata>[1], object][] = [
      [
        files,
        { resource: "https://gw.example/files", issuers: ISSUERS },
        {
          resource: "https://gw.example/files",
          authorization_servers: ISSUERS,
          scopes_supported: ["files:read", "files:write"],
          bearer_methods_supported: ["header"],
        },
      ],
      [
        upstream("plain", "/plain"),
        { resource: "https://gw.example/plain", issuers: [] },
        { resource: "https://gw.example/plain", bearer_methods_supported: ["header"] },
      ],
      [
        files,
        { resource: "https://gw.example/files", issuers: ["https://login.example"], scopes: ["files:read"] },
        {
          resource: "https://gw.example/files",
          authorization_servers: ["https://login.example"],
          scopes_supported: ["files:read"],
          bearer_methods_supported: ["header"],
        },
      ],
      [
        upstream("root", "/"),
        { resource: "https://gw.example/", issuers: ISSUERS },
        {
          resource: "https://gw.example/",
          authorization_servers: ISSUERS,
          bearer_methods_supported: ["header"],
        },
      ],
    ];
    for (const [config, options, expected] of table) {
      const metadata = protectedResourceMetadata(config, options);
      assert.deepEqual(metadata, expected);
      // Serialises to the same object: nothing hidden in getters or prototypes.
      assert.deepEqual(JSON.parse(JSON.stringify(metadata)), expected);
    }
  });

  it("A1 upstream X's metadata names X's resource and audience and never Y's", () => {
    const x = upstream("x", "/x", ["x:use"]);
    const y = upstream("y", "/y", ["y:use"]);
    const nested = upstream("xy", "/x/y", ["xy:use"]);
    const all = [x, y, nested];
    for (const target of all) {
      const metadata = served(all, `/.well-known/oauth-protected-resource${target.path}`);
      assert.ok(metadata, target.name);
      // RFC 9728 §3.3: the resource is exactly the identifier the metadata URL was derived from,
      // and (with the default audience) exactly what a token for this upstream must carry as aud.
      assert.equal(metadata.resource, `${PUBLIC_URL}${target.path}`);
      assert.equal(metadata.resource, target.audience);
      assert.equal(
        metadataUrl(PUBLIC_URL, target.path),
        `${PUBLIC_URL}/.well-known/oauth-protected-resource${target.path}`,
      );
      assert.deepEqual(metadata.scopes_supported, target.scopes);
      const text = JSON.stringify(metadata);
      for (const other of all.filter((candidate) => candidate !== target)) {
        assert.notEqual(metadata.resource, other.audience);
        assert.ok(!text.includes(`"${other.audience}"`), `${target.name} names ${other.name}'s audience`);
        for (const scope of other.scopes) {
          assert.ok(!text.includes(`"${scope}"`), `${target.name} lists ${scope}`);
        }
      }
    }
    // Spellings that are not X's metadata path serve nothing rather than some upstream's metadata.
    for (const pathname of [
      "/.well-known/oauth-protected-resource/X",
      "/.well-known/oauth-protected-resource/x/",
    ]) {
      assert.equal(served(all, pathname), undefined, pathname);
    }
  });

  it("refuses resources that are not plain http(s) URLs, and malformed issuers or scopes", () => {
    const files = upstream("files", "/files", ["files:read"]);
    const bad: Parameters<typeof protectedResourceMetadata>[1][] = [
      { resource: "gw.example/files", issuers: ISSUERS },
      { resource: "ftp://gw.example/files", issuers: ISSUERS },
      { resource: "https://gw.example/files#frag", issuers: ISSUERS },
      { resource: "https://gw.example/files?x=1", issuers: ISSUERS },
      { resource: "https://user:pw@gw.example/files", issuers: ISSUERS },
      { resource: "https://GW.example/files", issuers: ISSUERS },
      { resource: "https://gw.example/fi les", issuers: ISSUERS },
      { resource: "https://gw.example/files\r\nX: y", issuers: ISSUERS },
      { resource: "https://gw.example/files", issuers: [""] },
      { resource: "https://gw.example/files", issuers: ISSUERS, scopes: ['a"b'] },
      { resource: "https://gw.example/files", issuers: ISSUERS, scopes: ["a b"] },
      { resource: undefined as unknown as string, issuers: ISSUERS },
    ];
    for (const options of bad) {
      assert.throws(
        () => protectedResourceMetadata(files, options),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
        JSON.stringify(options),
      );
    }
    assert.throws(
      () => metadataUrl("not a url", "/mcp"),
      (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
  });
});
