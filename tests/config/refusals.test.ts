import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseConfig } from "../../src/config/index.ts";
import { minimalConfig, refusalLines, withSetting } from "../support/config-fixtures.ts";

const DIGEST = "A".repeat(43);
const OTHER_DIGEST = `${"B".repeat(42)}A`;
const issuer = (fields: Record<string, unknown>) => ({
  issuer: "https://login.example.com",
  jwksUrl: "https://login.example.com/jwks",
  ...fields,
});
const apiKey = (fields: Record<string, unknown>) => ({
  id: "ci",
  digest: DIGEST,
  subject: "bot",
  tenant: "acme",
  ...fields,
});
const upstream = (fields: Record<string, unknown>) => ({
  name: "demo",
  path: "/mcp",
  url: "http://127.0.0.1:9000/mcp",
  ...fields,
});

/** [what is refused, setting path, value (undefined removes it), the one line expected]. */
const table: Array<[string, string, unknown, string]> = [
  // publicUrl
  [
    "a publicUrl that is not http(s)",
    "publicUrl",
    "ftp://gw.example.com",
    "publicUrl must be an http(s) URL",
  ],
  [
    "a publicUrl with a query",
    "publicUrl",
    "https://gw.example.com/?a=1",
    "publicUrl must be an http(s) URL",
  ],
  [
    "a publicUrl with a fragment",
    "publicUrl",
    "https://gw.example.com/#x",
    "publicUrl must be an http(s) URL",
  ],
  [
    "a publicUrl with credentials",
    "publicUrl",
    "https://u:p@gw.example.com",
    "publicUrl must be an http(s) URL",
  ],
  ["a relative publicUrl", "publicUrl", "/gw", "publicUrl must be an http(s) URL"],
  // listen
  ["a port above 65535", "listen.port", 70000, "listen.port must be a whole number from 0 to 65535"],
  ["a fractional port", "listen.port", 80.5, "listen.port must be a whole number from 0 to 65535"],
  ["a port given as text", "listen.port", "8080", "listen.port must be a number"],
  [
    "a shorthand IPv4 listen host",
    "listen.host",
    "127.1",
    "listen.host must be an IP address or a host name",
  ],
  ["a hex listen host", "listen.host", "0x7f.0.0.1", "listen.host must be an IP address or a host name"],
  [
    "a listen host with a port",
    "listen.host",
    "127.0.0.1:80",
    "listen.host must be an IP address or a host name",
  ],
  ["an IPv6 zone id", "listen.host", "fe80::1%eth0", "listen.host must be an IP address or a host name"],
  [
    "a trusted proxy that is not a CIDR",
    "listen.trustedProxies",
    ["10.0.0.0/33"],
    "listen.trustedProxies[0] must be an IP address or CIDR block",
  ],
  [
    "a trusted proxy CIDR with host bits set",
    "listen.trustedProxies",
    ["10.0.0.1/8"],
    "listen.trustedProxies[0] must be an IP address or CIDR block",
  ],
  [
    "trusting every address as a proxy",
    "listen.trustedProxies",
    ["0.0.0.0/0"],
    "listen.trustedProxies[0] must be an IP address or CIDR block",
  ],
  ["an empty Host allowlist", "listen.allowedHosts", [], "listen.allowedHosts must have at least 1 entries"],
  [
    "a Host allowlist entry with a scheme",
    "listen.allowedHosts",
    ["https://gw.example.com"],
    "listen.allowedHosts[0] must be a host name or address",
  ],
  [
    "a wildcard Host allowlist entry",
    "listen.allowedHosts",
    ["*.example.com"],
    "listen.allowedHosts[0] must be a host name or address",
  ],
  [
    "an Origin allowlist entry with a path",
    "listen.allowedOrigins",
    ["https://app.example.com/x"],
    "listen.allowedOrigins[0] must be an origin",
  ],
  ["the null origin", "listen.allowedOrigins", ["null"], "listen.allowedOrigins[0] must be an origin"],
  [
    "a repeated Origin",
    "listen.allowedOrigins",
    ["https://a.example", "HTTPS://A.example/"],
    "listen.allowedOrigins[1] repeats an earlier entry",
  ],
  [
    "a non-boolean attestation",
    "listen.allowUnauthenticatedExposure",
    "true",
    "listen.allowUnauthenticatedExposure must be true or false",
  ],
  [
    "publicUrl unset on a wildcard listen host",
    "listen.host",
    "0.0.0.0",
    "publicUrl must be set when listen.host",
  ],
  // store
  ["an unknown store scheme", "store", "mysql://db/x", "store must start with memory:, sqlite:"],
  ["a SQLite store without a path", "store", "sqlite:", "store must name a file after sqlite:"],
  ["an unknown store parameter", "store", "redis://db:6379?db=1", "store has an unknown parameter"],
  ["a bad Redis prefix", "store", "redis://db?prefix=has space", "store parameter prefix must be"],
  ["a bad PostgreSQL schema", "store", "postgres://db/x?schema=Bad", "store parameter schema must match"],
  ["a bad sslmode", "store", "postgres://db/x?sslmode=allow", "store parameter sslmode must be"],
  [
    "a zero timeout",
    "store",
    "postgres://db/x?timeoutMs=0",
    "store parameter timeoutMs must be a positive integer",
  ],
  ["a memory store with a bad bound", "store", "memory:?maxEntries=-1", "store parameter maxEntries must be"],
  // secrets
  ["no master key", "secrets", {}, "secrets must set secrets.masterKey, or secrets.masterKeys"],
  [
    "a key written inline",
    "secrets.masterKey",
    "c2VjcmV0",
    "secrets.masterKey must be env:NAME or file:PATH",
  ],
  [
    "an env reference without a name",
    "secrets.masterKey",
    "env:",
    "secrets.masterKey must be env:NAME or file:PATH",
  ],
  [
    "both key forms at once",
    "secrets",
    { masterKey: "env:A", masterKeys: [{ id: "a", key: "env:A" }], activeKeyId: "a" },
    "secrets.masterKeys cannot be set together with secrets.masterKey",
  ],
  [
    "an active key id with the single-key form",
    "secrets",
    { masterKey: "env:A", activeKeyId: "a" },
    "secrets.activeKeyId belongs with secrets.masterKeys",
  ],
  [
    "a key list without an active id",
    "secrets",
    { masterKeys: [{ id: "a", key: "env:A" }] },
    "secrets.activeKeyId is required with secrets.masterKeys",
  ],
  [
    "an active id naming no key",
    "secrets",
    { masterKeys: [{ id: "a", key: "env:A" }], activeKeyId: "b" },
    "secrets.activeKeyId must be the id of one of secrets.masterKeys",
  ],
  [
    "repeated key ids",
    "secrets",
    {
      masterKeys: [
        { id: "a", key: "env:A" },
        { id: "a", key: "env:B" },
      ],
      activeKeyId: "a",
    },
    "secrets.masterKeys[1].id repeats an earlier entry's value",
  ],
  [
    "a key id with bad characters",
    "secrets",
    { masterKeys: [{ id: "a.b", key: "env:A" }], activeKeyId: "a.b" },
    "secrets.masterKeys[0].id must be 1-32 characters",
  ],
  [
    "an empty key list",
    "secrets",
    { masterKeys: [], activeKeyId: "a" },
    "secrets.masterKeys must have at least 1",
  ],
  ["a tag key written inline", "secrets.tagKey", "abc", "secrets.tagKey must be env:NAME or file:PATH"],
  // auth.issuers
  [
    "an http issuer off loopback",
    "auth.issuers",
    [issuer({ issuer: "http://login.example.com" })],
    "auth.issuers[0].issuer must be an https URL",
  ],
  [
    "an http issuer on a shorthand loopback",
    "auth.issuers",
    [issuer({ issuer: "http://127.1:9000" })],
    "auth.issuers[0].issuer must be an https URL",
  ],
  [
    "an http issuer on a nip.io name",
    "auth.issuers",
    [issuer({ issuer: "http://127.0.0.1.nip.io" })],
    "auth.issuers[0].issuer must be an https URL",
  ],
  [
    "an issuer with a query",
    "auth.issuers",
    [issuer({ issuer: "https://login.example.com/?a=b" })],
    "auth.issuers[0].issuer must be an https URL",
  ],
  [
    "an http JWKS URL off loopback",
    "auth.issuers",
    [issuer({ jwksUrl: "http://login.example.com/jwks" })],
    "auth.issuers[0].jwksUrl must be an https URL",
  ],
  [
    "both JWKS sources",
    "auth.issuers",
    [issuer({ jwksFile: "jwks.json" })],
    "auth.issuers[0] must set exactly one of jwksUrl and jwksFile",
  ],
  [
    "no JWKS source",
    "auth.issuers",
    [issuer({ jwksUrl: undefined })],
    "auth.issuers[0] must set exactly one of jwksUrl and jwksFile",
  ],
  [
    "the none algorithm",
    "auth.issuers",
    [issuer({ algorithms: ["none"] })],
    "auth.issuers[0].algorithms[0] must be one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA",
  ],
  [
    "an HMAC algorithm",
    "auth.issuers",
    [issuer({ algorithms: ["RS256", "HS256"] })],
    "auth.issuers[0].algorithms[1] must be one of RS256",
  ],
  [
    "an empty algorithm list",
    "auth.issuers",
    [issuer({ algorithms: [] })],
    "auth.issuers[0].algorithms must have at least 1 entries",
  ],
  [
    "a clock skew over 5m",
    "auth.issuers",
    [issuer({ clockSkew: "6m" })],
    "auth.issuers[0].clockSkew must be at most 5m",
  ],
  [
    "a clock skew in days",
    "auth.issuers",
    [issuer({ clockSkew: "1d" })],
    "auth.issuers[0].clockSkew must be a whole number followed by ms, s, m or h",
  ],
  [
    "an audience on an issuer",
    "auth.issuers",
    [issuer({ audience: "x" })],
    "auth.issuers[0].audience is not a known setting",
  ],
  [
    "a repeated issuer",
    "auth.issuers",
    [issuer({}), issuer({})],
    "auth.issuers[1].issuer repeats an earlier entry's value",
  ],
  // auth.apiKeys
  [
    "a short digest",
    "auth.apiKeys",
    [apiKey({ digest: "abc" })],
    "auth.apiKeys[0].digest must be a 43-character base64url digest",
  ],
  [
    "a non-canonical digest",
    "auth.apiKeys",
    [apiKey({ digest: `${"A".repeat(42)}B` })],
    "auth.apiKeys[0].digest must be a 43-character base64url digest",
  ],
  [
    "a repeated API key id",
    "auth.apiKeys",
    [apiKey({}), apiKey({ digest: OTHER_DIGEST })],
    "auth.apiKeys[1].id repeats an earlier entry's value",
  ],
  [
    "a repeated API key digest",
    "auth.apiKeys",
    [apiKey({}), apiKey({ id: "other" })],
    "auth.apiKeys[1].digest repeats an earlier entry's value",
  ],
  [
    "an API key without a tenant",
    "auth.apiKeys",
    [apiKey({ tenant: undefined })],
    "auth.apiKeys[0].tenant is required",
  ],
  [
    "an API key subject with a newline",
    "auth.apiKeys",
    [apiKey({ subject: "a\nb" })],
    "auth.apiKeys[0].subject must be 1-256 printable characters",
  ],
  [
    "a scope with a space",
    "auth.apiKeys",
    [apiKey({ scopes: ["a b"] })],
    "auth.apiKeys[0].scopes[0] must be an OAuth scope token",
  ],
  ["a non-boolean anonymous", "auth.anonymous", 1, "auth.anonymous must be true or false"],
  // upstreams
  ["no upstream", "upstreams", [], "upstreams must list at least one upstream"],
  ["a missing upstream list", "upstreams", undefined, "upstreams must list at least one upstream"],
  [
    "an upper-case upstream name",
    "upstreams",
    [upstream({ name: "Demo" })],
    "upstreams[0].name must be 1-40 characters of a-z 0-9 -",
  ],
  [
    "a path without a leading slash",
    "upstreams",
    [upstream({ path: "mcp" })],
    'upstreams[0].path must start with "/"',
  ],
  [
    "a path under /.well-known/",
    "upstreams",
    [upstream({ path: "/.well-known/oauth-protected-resource" })],
    "upstreams[0].path must not be under /.well-known/",
  ],
  [
    "the /.well-known path itself",
    "upstreams",
    [upstream({ path: "/.well-known" })],
    "upstreams[0].path must not be under /.well-known/",
  ],
  [
    "a path under /.tenantgate/",
    "upstreams",
    [upstream({ path: "/.tenantgate/admin" })],
    "upstreams[0].path must not be under /.tenantgate/",
  ],
  [
    "a reserved path in another case",
    "upstreams",
    [upstream({ path: "/.Well-Known/x" })],
    "upstreams[0].path must not be under /.well-known/",
  ],
  [
    "a percent-encoded reserved path",
    "upstreams",
    [upstream({ path: "/%2Ewell-known/x" })],
    "upstreams[0].path must be segments of",
  ],
  [
    "a dot segment",
    "upstreams",
    [upstream({ path: "/a/../.well-known" })],
    "upstreams[0].path must be segments of",
  ],
  ["an empty segment", "upstreams", [upstream({ path: "/a//b" })], "upstreams[0].path must be segments of"],
  [
    "a path with a query",
    "upstreams",
    [upstream({ path: "/mcp?x=1" })],
    "upstreams[0].path must not contain a query or fragment",
  ],
  [
    "a trailing slash",
    "upstreams",
    [upstream({ path: "/mcp/" })],
    "upstreams[0].path must not end with a slash",
  ],
  [
    "a repeated upstream name",
    "upstreams",
    [upstream({}), upstream({ path: "/b" })],
    "upstreams[1].name repeats an earlier entry's value",
  ],
  [
    "a repeated upstream path",
    "upstreams",
    [upstream({}), upstream({ name: "b" })],
    "upstreams[1].path repeats an earlier entry's value",
  ],
  [
    "both url and command",
    "upstreams",
    [upstream({ command: "server" })],
    "upstreams[0] must set exactly one of url and command",
  ],
  [
    "neither url nor command",
    "upstreams",
    [upstream({ url: undefined })],
    "upstreams[0] must set exactly one of url and command",
  ],
  [
    "arguments for a URL upstream",
    "upstreams",
    [upstream({ args: ["x"] })],
    "upstreams[0].args applies only to a command upstream",
  ],
  [
    "an upstream URL that is not http(s)",
    "upstreams",
    [upstream({ url: "ws://127.0.0.1:9000" })],
    "upstreams[0].url must be an http(s) URL",
  ],
  [
    "an upstream URL with credentials",
    "upstreams",
    [upstream({ url: "http://u:p@127.0.0.1:9000" })],
    "upstreams[0].url must be an http(s) URL",
  ],
  [
    "an environment value that is not a string",
    "upstreams",
    [upstream({ url: undefined, command: "s", env: { A: 1 } })],
    "upstreams[0].env.A must be a string",
  ],
  [
    "an environment name with a dash",
    "upstreams",
    [upstream({ url: undefined, command: "s", env: { "A-B": "x" } })],
    'upstreams[0].env["A-B"] must be a variable name',
  ],
  [
    "a protocol version that is not a date",
    "upstreams",
    [upstream({ protocolVersions: ["2025-02-30"] })],
    "upstreams[0].protocolVersions[0] must be a protocol revision (YYYY-MM-DD)",
  ],
  [
    "an empty protocol version list",
    "upstreams",
    [upstream({ protocolVersions: [] })],
    "upstreams[0].protocolVersions must have at least 1 entries",
  ],
  [
    "an injected header with a bad name",
    "upstreams",
    [upstream({ inject: { "X Bad": "v" } })],
    'upstreams[0].inject["X Bad"] must be an HTTP header name',
  ],
  [
    "an injected header that names no vault entry",
    "upstreams",
    [upstream({ inject: { "X-Api-Key": "static-secret" } })],
    'upstreams[0].inject["X-Api-Key"] names no {vault:NAME} entry',
  ],
  [
    "an injected header with another placeholder",
    "upstreams",
    [upstream({ inject: { Authorization: "Bearer {vault:gh} {{tenant}}" } })],
    "upstreams[0].inject.Authorization has a brace that is not a {vault:NAME} placeholder",
  ],
  [
    "an injected header naming a bad entry",
    "upstreams",
    [upstream({ inject: { Authorization: "Bearer {vault:GitHub-Token}" } })],
    "upstreams[0].inject.Authorization names a vault entry that is not",
  ],
  [
    "a command environment naming a malformed vault entry",
    "upstreams",
    [{ name: "files", path: "/files", command: "files-server", env: { TOKEN: "vault:Files-Token" } }],
    "upstreams[0].env.TOKEN names a vault entry that is not",
  ],
  [
    "a command upstream declaring a modern version without a process per principal",
    "upstreams",
    [
      {
        name: "files",
        path: "/files",
        command: "files-server",
        protocolVersions: ["2025-11-25", "2026-07-28"],
      },
    ],
    'upstreams[0].protocolVersions lists 2026-07-28: a command upstream serves modern requests only with stdio.modern "per-principal"',
  ],
  [
    "a process per principal for modern requests on a command upstream declaring none",
    "upstreams",
    [
      {
        name: "files",
        path: "/files",
        command: "files-server",
        protocolVersions: ["2025-11-25"],
        stdio: { modern: "per-principal" },
      },
    ],
    'upstreams[0].stdio.modern "per-principal" needs protocolVersions to list 2026-07-28 or to be unset',
  ],
  [
    "stdio settings on a url upstream",
    "upstreams",
    [upstream({ stdio: { maxProcesses: 2 } })],
    "upstreams[0].stdio applies only to a command upstream",
  ],
  [
    "injecting a framing header",
    "upstreams",
    [upstream({ inject: { "Content-Length": "1" } })],
    'upstreams[0].inject["Content-Length"] is a header the gateway sets or forbids',
  ],
  [
    "injecting the gateway's assertion",
    "upstreams",
    [upstream({ inject: { "Tenantgate-Assertion": "x" } })],
    'upstreams[0].inject["Tenantgate-Assertion"] is a header the gateway sets or forbids',
  ],
  [
    "injecting an MCP header",
    "upstreams",
    [upstream({ inject: { "Mcp-Session-Id": "x" } })],
    'upstreams[0].inject["Mcp-Session-Id"] is a header the gateway sets or forbids',
  ],
  [
    "a header template with a newline",
    "upstreams",
    [upstream({ inject: { "X-A": "a\r\nX-B: b" } })],
    'upstreams[0].inject["X-A"] must be a template',
  ],
  [
    "a header injected twice in different case",
    "upstreams",
    [upstream({ inject: { "X-A": "1", "x-a": "2" } })],
    'upstreams[0].inject["x-a"] repeats a header name',
  ],
  // sessions, limits, audit, log, admin
  [
    "an absolute timeout shorter than the idle timeout",
    "sessions",
    { idleTimeout: "2h", absoluteTimeout: "1h" },
    "sessions.absoluteTimeout must be at least sessions.idleTimeout",
  ],
  [
    "a fractional idle timeout",
    "sessions.idleTimeout",
    "1.5s",
    "sessions.idleTimeout must be a whole number followed by ms, s, m or h",
  ],
  [
    "a bare-number idle timeout",
    "sessions.idleTimeout",
    "10",
    "sessions.idleTimeout must be a whole number followed by ms, s, m or h",
  ],
  [
    "a negative idle timeout",
    "sessions.idleTimeout",
    "-1s",
    "sessions.idleTimeout must be a whole number followed by ms, s, m or h",
  ],
  ["a zero idle timeout", "sessions.idleTimeout", "0s", "sessions.idleTimeout must be from 1s to 168h"],
  ["a numeric duration", "sessions.idleTimeout", 1800, "sessions.idleTimeout must be a string"],
  [
    "a zero session cap",
    "sessions.maxPerPrincipal",
    0,
    "sessions.maxPerPrincipal must be a whole number from 1 to 100000",
  ],
  [
    "an unknown limit behaviour",
    "sessions.onLimit",
    "evict-all",
    "sessions.onLimit must be one of evict-oldest, reject",
  ],
  ["an unknown limits scope", "limits.scope", "global", "limits.scope must be one of local, cluster"],
  ["cluster limits on a memory store", "store", "memory:", "__cluster__"],
  [
    "a zero body limit",
    "limits.maxBodyBytes",
    0,
    "limits.maxBodyBytes must be a whole number from 1 to 1073741824",
  ],
  [
    "a tiny header limit",
    "limits.maxHeaderBytes",
    100,
    "limits.maxHeaderBytes must be a whole number from 1024 to 1048576",
  ],
  [
    "a zero batch size",
    "limits.maxBatchSize",
    0,
    "limits.maxBatchSize must be a whole number from 1 to 1000",
  ],
  [
    "a zero per-IP stream cap",
    "limits.streams.perIp",
    0,
    "limits.streams.perIp must be a whole number from 1 to 10000000",
  ],
  [
    "a fractional in-flight cap",
    "limits.inflight.global",
    1.5,
    "limits.inflight.global must be a whole number from 1 to 10000000",
  ],
  ["a negative rate", "limits.rate.perSecond", -1, "limits.rate.perSecond must be a number above 0"],
  [
    "a fallback share above one",
    "limits.rate.fallbackFactor",
    2,
    "limits.rate.fallbackFactor must be a number above 0",
  ],
  ["an unknown cap level", "limits.streams.perTenant", 5, "limits.streams.perTenant is not a known setting"],
  ["a zero tenant cap", "sessions.maxPerTenant", 0, "sessions.maxPerTenant must be a whole number from 1"],
  ["no audit sink", "audit", { stdout: false }, "audit.stdout must keep stdout on when no audit.file is set"],
  ["an empty audit file name", "audit.file", "", "audit.file must be a file path"],
  [
    "an unknown log level",
    "log.level",
    "verbose",
    "log.level must be one of fatal, error, warn, info, debug, trace, silent",
  ],
  ["an empty log file name", "log.file", "", "log.file must be a file path"],
  ["an unknown log setting", "log.format", "text", "log.format is not a known setting"],
  [
    "an audit rotation size under 1 MiB",
    "audit.maxFileBytes",
    65_536,
    "audit.maxFileBytes must be a whole number from 1048576 to 1099511627776",
  ],
  [
    "an audit rotation size over 1 TiB",
    "audit.maxFileBytes",
    2 ** 41,
    "audit.maxFileBytes must be a whole number from 1048576 to 1099511627776",
  ],
  [
    "a fractional audit rotation size",
    "audit.maxFileBytes",
    1_048_576.5,
    "audit.maxFileBytes must be a whole number from 1048576 to 1099511627776",
  ],
  [
    "an admin API off loopback without a token",
    "admin.listen.host",
    "0.0.0.0",
    "admin.tokenDigest is required when admin.listen.host is not a loopback address",
  ],
  [
    "an admin token that is not a digest",
    "admin.tokenDigest",
    "tg_secret",
    "admin.tokenDigest must be a 43-character base64url digest",
  ],
  [
    "the admin API on the gateway's port",
    "admin.listen.port",
    8787,
    "admin.listen.port must differ from listen.port",
  ],
  // unknown keys
  ["an unknown top-level key", "listner", {}, "listner is not a known setting"],
  ["an unknown nested key", "listen.hots", "x", "listen.hots is not a known setting"],
  [
    "an unknown key in a list entry",
    "upstreams",
    [upstream({ timeout: "5s" })],
    "upstreams[0].timeout is not a known setting",
  ],
];

describe("config refusals", () => {
  for (const [what, path, value, expected] of table) {
    it(`refuses ${what}, naming ${path.split(".")[0]}`, () => {
      let input = withSetting(minimalConfig(), path, value);
      let line = expected;
      if (expected === "__cluster__") {
        input = withSetting(input, "limits.scope", "cluster");
        line = "limits.scope must be local with a memory: store";
      }
      const lines = refusalLines(() => parseConfig(input, { env: {} }));
      assert.ok(
        lines.some((text) => text.startsWith(`config: ${line}`)),
        `${lines.join("\n")}\n  expected: config: ${line}…`,
      );
    });
  }

  it("L3 with no authentication configured the gateway refuses to start and names auth", () => {
    for (const auth of [undefined, {}, { issuers: [], apiKeys: [], anonymous: false }]) {
      const lines = refusalLines(() => parseConfig(withSetting(minimalConfig(), "auth", auth), { env: {} }));
      assert.deepEqual(lines, [
        "config: auth configures no authentication: add auth.issuers or auth.apiKeys, or set auth.anonymous",
      ]);
    }
    // The environment cannot switch the last way to authenticate off either.
    const lines = refusalLines(() =>
      parseConfig(minimalConfig(), { env: { TENANTGATE_AUTH__ANONYMOUS: "false" } }),
    );
    assert.match(lines[0] ?? "", /^config: auth configures no authentication/);
  });

  it("accepts each way to authenticate on its own", () => {
    for (const auth of [
      { anonymous: true },
      { apiKeys: [apiKey({})] },
      { issuers: [issuer({})] },
      { issuers: [issuer({ issuer: "http://127.0.0.1:9999", jwksUrl: undefined, jwksFile: "jwks.json" })] },
      { issuers: [issuer({ issuer: "http://localhost:9999/", jwksUrl: "http://[::1]:9999/jwks" })] },
    ]) {
      parseConfig(withSetting(minimalConfig(), "auth", auth), { env: {} });
    }
  });

  it("collects every problem into one message, one sorted line each", () => {
    const input = {
      zzz: 1,
      listen: { port: -1 },
      secrets: {},
      auth: {},
      upstreams: [upstream({ path: "/.tenantgate/x" }), upstream({ name: "B" })],
      sessions: { idleTimeout: "1d" },
    };
    const lines = refusalLines(() => parseConfig(input, { env: { TENANTGATE_NOPE: "1" } }));
    assert.deepEqual(lines, [
      "config: auth configures no authentication: add auth.issuers or auth.apiKeys, or set auth.anonymous",
      "config: environment variable TENANTGATE_NOPE names no setting (levels are joined by __)",
      "config: listen.port must be a whole number from 0 to 65535",
      "config: secrets must set secrets.masterKey, or secrets.masterKeys with secrets.activeKeyId",
      "config: sessions.idleTimeout must be a whole number followed by ms, s, m or h (30s, 5m)",
      "config: upstreams[0].path must not be under /.tenantgate/",
      "config: upstreams[1].name must be 1-40 characters of a-z 0-9 -",
      "config: zzz is not a known setting",
    ]);
    assert.deepEqual(lines, [...lines].sort());
  });

  it("refuses input that is not plain data with ERR_CONFIG_INVALID, not a crash", () => {
    for (const input of [null, 42, "text", [], { listen: () => 1 }, { upstreams: new Map() }]) {
      refusalLines(() => parseConfig(input, { env: {} }));
    }
  });

  it("does not modify the object it is given", () => {
    const input = minimalConfig();
    const before = structuredClone(input);
    parseConfig(input, { env: { TENANTGATE_UPSTREAMS__0__URL: "http://127.0.0.1:1/" } });
    assert.deepEqual(input, before);
  });

  it("never puts a value in the message: passwords, digests, tokens and templates stay out", () => {
    const secrets = [
      "hunter2",
      DIGEST,
      "tg_live_token_value",
      "Bearer s3cr3t-template",
      "sk-upstream-credential",
      "inline-master-key-material",
    ];
    const input = {
      publicUrl: "https://admin:hunter2@gw.example.com",
      store: "redis://:hunter2@cache:6379?prefix=bad prefix&password=hunter2",
      secrets: { masterKey: "inline-master-key-material" },
      auth: {
        apiKeys: [apiKey({}), apiKey({ id: "dup" }), apiKey({ id: "x", digest: "tg_live_token_value" })],
        issuers: [issuer({ issuer: "http://user:hunter2@login.example.com", clockSkew: "hunter2" })],
      },
      upstreams: [
        upstream({
          url: "http://svc:hunter2@127.0.0.1:9000/mcp#hunter2",
          inject: { Authorization: "Bearer s3cr3t-template\n", "Content-Length": "sk-upstream-credential" },
        }),
        upstream({
          name: "cmd",
          path: "/cmd",
          url: undefined,
          command: "x",
          env: { TOKEN: 42 },
          audience: "",
        }),
      ],
      admin: { tokenDigest: "tg_live_token_value" },
      sessions: { onLimit: "hunter2" },
      limits: { scope: "hunter2" },
    };
    const lines = refusalLines(() =>
      parseConfig(input, {
        env: {
          TENANTGATE_LISTEN__ALLOWEDORIGINS: "[hunter2",
          TENANTGATE_LISTEN__PORT: "hunter2",
          TENANTGATE_AUDIT__STDOUT: "hunter2",
        },
      }),
    );
    assert.ok(lines.length >= 14, lines.join("\n"));
    const message = lines.join("\n");
    for (const secret of secrets) assert.ok(!message.includes(secret), `leaked ${secret}:\n${message}`);
  });
});
