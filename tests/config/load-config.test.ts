import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { loadConfig, parseConfig } from "../../src/config/index.ts";
import { minimalConfig, refusalLines, refusalLinesAsync, withSetting } from "../support/config-fixtures.ts";

const dir = await mkdtemp(join(tmpdir(), "tenantgate-config-"));
after(() => rm(dir, { recursive: true, force: true }));

/** A fresh folder under `dir` holding `name` with `text`; returns the file's path. */
async function configFile(name: string, text: string): Promise<string> {
  const folder = await mkdtemp(join(dir, "case-"));
  const file = join(folder, name);
  await mkdir(join(file, ".."), { recursive: true });
  await writeFile(file, text);
  return file;
}

describe("config defaults", () => {
  it("fills every unset setting with the operator contract's default", () => {
    const config = parseConfig(minimalConfig(), { env: {}, cwd: "/srv/gw" });
    assert.equal(config.configDir, "/srv/gw");
    assert.equal(config.publicUrl, "http://127.0.0.1:8787");
    assert.deepEqual(config.listen, {
      host: "127.0.0.1",
      port: 8787,
      trustedProxies: [],
      allowedHosts: ["localhost", "localhost:8787", "127.0.0.1", "127.0.0.1:8787", "[::1]", "[::1]:8787"],
      allowedOrigins: ["http://127.0.0.1:8787"],
      allowUnauthenticatedExposure: false,
    });
    assert.equal(config.store, "sqlite:/srv/gw/.tenantgate/store.db");
    assert.deepEqual(config.secrets, {
      masterKeys: [{ id: "default", key: "env:TEST_MASTER_KEY" }],
      activeKeyId: "default",
      tagKey: undefined,
    });
    assert.deepEqual(config.auth, { issuers: [], apiKeys: [], anonymous: true });
    assert.deepEqual(config.upstreams, [
      {
        name: "demo",
        path: "/mcp",
        audience: "http://127.0.0.1:8787/mcp",
        scopes: [],
        protocolVersions: undefined,
        inject: {},
        transport: "http",
        url: "http://127.0.0.1:9000/mcp",
      },
    ]);
    assert.deepEqual(config.sessions, {
      idleTimeoutMs: 30 * 60_000,
      absoluteTimeoutMs: 8 * 3_600_000,
      maxPerPrincipal: 100,
      onLimit: "reject",
      maxPerTenant: undefined,
      clientBinding: "off",
    });
    assert.deepEqual(config.limits, {
      scope: "local",
      maxBodyBytes: 4 * 1024 * 1024,
      maxHeaderBytes: 16 * 1024,
      maxBatchSize: 50,
      streams: { global: 10_000, perIp: 200, perPrincipal: 50, perSession: 8 },
      inflight: { global: 4_000, perIp: 400, perPrincipal: 100, perSession: 32 },
      rate: { enabled: true, perSecond: 20, burst: 100, fallbackFactor: 0.25 },
    });
    assert.deepEqual(config.audit, { file: undefined, stdout: true, maxFileBytes: 128 * 1024 * 1024 });
    assert.deepEqual(config.log, { level: "info", file: undefined });
    assert.deepEqual(config.admin, {
      enabled: true,
      listen: { host: "127.0.0.1", port: 8788 },
      tokenDigest: undefined,
    });
  });

  it("gives an issuer the default algorithms and clock skew", () => {
    const input = withSetting(minimalConfig(), "auth", {
      issuers: [{ issuer: "https://login.example.com/", jwksUrl: "https://login.example.com/jwks" }],
    });
    const [issuer] = parseConfig(input, { env: {} }).auth.issuers;
    assert.deepEqual(issuer, {
      issuer: "https://login.example.com/",
      jwksUrl: "https://login.example.com/jwks",
      jwksFile: undefined,
      algorithms: ["RS256", "ES256", "EdDSA"],
      clockSkewMs: 30_000,
      tenantClaim: undefined,
    });
  });

  /** The same minimal config, authenticating with an API key (anonymous access may not be exposed). */
  const authenticatedConfig = () =>
    withSetting(withSetting(minimalConfig(), "auth.anonymous", false), "auth.apiKeys", [
      { id: "k", digest: "A".repeat(43), subject: "svc", tenant: "t" },
    ]);

  it("derives publicUrl, Host and Origin allowlists and audiences from the listen address", () => {
    const ipv6 = parseConfig(withSetting(minimalConfig(), "listen", { host: "::1", port: 9000 }), {
      env: {},
    });
    assert.equal(ipv6.publicUrl, "http://[::1]:9000");
    assert.ok(ipv6.listen.allowedHosts.includes("[::1]:9000"));
    assert.equal(ipv6.upstreams[0]?.audience, "http://[::1]:9000/mcp");

    const named = parseConfig(withSetting(authenticatedConfig(), "listen", { host: "gw.internal" }), {
      env: {},
    });
    assert.equal(named.publicUrl, "http://gw.internal:8787");
    assert.deepEqual(named.listen.allowedHosts, ["gw.internal:8787"]);
    assert.deepEqual(named.listen.allowedOrigins, ["http://gw.internal:8787"]);
  });

  it("canonicalises publicUrl and takes its host and origin for the allowlists", () => {
    let input = withSetting(authenticatedConfig(), "publicUrl", "HTTPS://GW.Example.com:443/tenants/");
    input = withSetting(input, "listen", { host: "10.0.0.5" });
    const config = parseConfig(input, { env: {} });
    assert.equal(config.publicUrl, "https://gw.example.com/tenants");
    assert.deepEqual(config.listen.allowedHosts, ["gw.example.com"]);
    assert.deepEqual(config.listen.allowedOrigins, ["https://gw.example.com"]);
    assert.equal(config.upstreams[0]?.audience, "https://gw.example.com/tenants/mcp");
  });

  it("L3 anonymous access on an exposed gateway is refused unless attested", () => {
    for (const exposure of [
      withSetting(minimalConfig(), "listen", { host: "gw.internal" }),
      withSetting(minimalConfig(), "publicUrl", "https://gw.example.com"),
      withSetting(minimalConfig(), "listen.trustedProxies", ["10.0.0.0/8"]),
    ]) {
      const lines = refusalLines(() => parseConfig(exposure, { env: {} }));
      assert.ok(
        lines.some(
          (line) => line.includes("auth.anonymous") && line.includes("allowUnauthenticatedExposure"),
        ),
      );
      const attested = withSetting(exposure, "listen.allowUnauthenticatedExposure", true);
      assert.equal(parseConfig(attested, { env: {} }).auth.anonymous, true);
    }
  });

  it("two upstreams with one audience are refused (a token for one would pass at the other)", () => {
    const input = withSetting(
      withSetting(authenticatedConfig(), "upstreams.1", {
        name: "b",
        path: "/b",
        url: "http://127.0.0.1:9001/b",
      }),
      "upstreams.1.audience",
      "http://127.0.0.1:8787/mcp",
    );
    const lines = refusalLines(() => parseConfig(input, { env: {} }));
    assert.ok(lines.some((line) => line.includes("upstreams[1].audience")));
  });

  it("the default publicUrl is canonical: port 80 dropped", () => {
    const config = parseConfig(withSetting(minimalConfig(), "listen", { host: "127.0.0.1", port: 80 }), {
      env: {},
    });
    assert.equal(config.publicUrl, "http://127.0.0.1");
    assert.equal(config.upstreams[0]?.audience, "http://127.0.0.1/mcp");
  });

  it("on loopback behind a proxy also allows the public URL's host", () => {
    const config = parseConfig(withSetting(authenticatedConfig(), "publicUrl", "https://gw.example.com"), {
      env: {},
    });
    assert.deepEqual(config.listen.allowedHosts, [
      "localhost",
      "localhost:8787",
      "127.0.0.1",
      "127.0.0.1:8787",
      "[::1]",
      "[::1]:8787",
      "gw.example.com",
    ]);
  });

  it("normalises one master key to a one-entry list and keeps a rotation list as written", () => {
    const rotation = withSetting(minimalConfig(), "secrets", {
      masterKeys: [
        { id: "2025", key: "env:OLD_KEY" },
        { id: "2026", key: "file:/etc/tenantgate/2026.key" },
      ],
      activeKeyId: "2026",
      tagKey: "env:TAG_KEY",
    });
    assert.deepEqual(parseConfig(rotation, { env: {} }).secrets, {
      masterKeys: [
        { id: "2025", key: "env:OLD_KEY" },
        { id: "2026", key: "file:/etc/tenantgate/2026.key" },
      ],
      activeKeyId: "2026",
      tagKey: "env:TAG_KEY",
    });
  });

  it("describes a command upstream with its arguments and environment", () => {
    const input = withSetting(minimalConfig(), "upstreams", [
      {
        name: "files",
        path: "/files",
        command: "node",
        args: ["server.js", "--stdio"],
        env: { API_TOKEN: "vault:files_token" },
        stdio: {
          runAs: "distinct-uid",
          uidRange: [200_000, 200_099],
          startTimeout: "20s",
          requestTimeout: "2m",
        },
        scopes: ["files:read"],
        protocolVersions: ["2025-06-18", "2025-11-25"],
        inject: { "X-Tenant": "Bearer {vault:files_token}" },
        audience: "urn:files",
      },
    ]);
    assert.deepEqual(parseConfig(input, { env: {} }).upstreams[0], {
      name: "files",
      path: "/files",
      audience: "urn:files",
      scopes: ["files:read"],
      protocolVersions: ["2025-06-18", "2025-11-25"],
      inject: { "X-Tenant": "Bearer {vault:files_token}" },
      transport: "stdio",
      command: "node",
      args: ["server.js", "--stdio"],
      env: { API_TOKEN: "vault:files_token" },
      stdio: {
        runAs: "distinct-uid",
        uidRange: [200_000, 200_099],
        startTimeoutMs: 20_000,
        requestTimeoutMs: 120_000,
      },
    });
  });

  it("returns a deeply frozen object", () => {
    const config = parseConfig(minimalConfig(), { env: {} });
    assert.ok(Object.isFrozen(config));
    assert.ok(Object.isFrozen(config.listen.allowedHosts));
    assert.ok(Object.isFrozen(config.upstreams[0]));
    assert.throws(() => {
      (config.listen as { port: number }).port = 1;
    }, TypeError);
  });
});

describe("config files", () => {
  const json = JSON.stringify({
    listen: { port: 9100 },
    secrets: { masterKey: "env:TEST_MASTER_KEY" },
    auth: { apiKeys: [{ id: "ci", digest: "A".repeat(43), subject: "ci-bot", tenant: "acme" }] },
    upstreams: [{ name: "demo", path: "/mcp", url: "http://127.0.0.1:9000/mcp" }],
  });
  const yaml = `
# tenantgate config
listen:
  port: 9100
secrets:
  masterKey: env:TEST_MASTER_KEY
auth:
  apiKeys:
    - id: ci
      digest: ${"A".repeat(43)}
      subject: ci-bot
      tenant: acme
upstreams:
  - name: demo
    path: /mcp
    url: http://127.0.0.1:9000/mcp
`;

  it("reads JSON and YAML files to the same config", async () => {
    const fromJson = await loadConfig({ file: await configFile("gw.json", json), env: {} });
    const fromYaml = await loadConfig({ file: await configFile("gw.yaml", yaml), env: {} });
    const fromYml = await loadConfig({ file: await configFile("gw.YML", yaml), env: {} });
    assert.equal(fromJson.listen.port, 9100);
    assert.equal(fromJson.auth.apiKeys[0]?.tenant, "acme");
    assert.deepEqual(fromJson.auth.apiKeys[0]?.scopes, []);
    const { configDir: _a, store: _b, ...jsonRest } = fromJson;
    const { configDir: _c, store: _d, ...yamlRest } = fromYaml;
    const { configDir: _e, store: _f, ...ymlRest } = fromYml;
    assert.deepEqual(yamlRest, jsonRest);
    assert.deepEqual(ymlRest, jsonRest);
  });

  it("resolves a relative file name against cwd", async () => {
    const file = await configFile("gw.json", json);
    const config = await loadConfig({ file: "gw.json", cwd: join(file, ".."), env: {} });
    assert.equal(config.configDir, join(file, ".."));
  });

  it("reads YAML 1.2: yes stays a string and is refused where a boolean is expected", async () => {
    const file = await configFile("gw.yaml", yaml.replace("auth:\n", "auth:\n  anonymous: yes\n"));
    assert.deepEqual(await refusalLinesAsync(loadConfig({ file, env: {} })), [
      "config: auth.anonymous must be true or false",
    ]);
  });

  it("refuses a file without a .json, .yaml or .yml extension", async () => {
    const file = await configFile("gw.toml", json);
    const lines = await refusalLinesAsync(loadConfig({ file, env: {} }));
    assert.deepEqual(lines, [`config: file ${file} must end in .json, .yaml or .yml`]);
  });

  it("refuses a missing file, naming it", async () => {
    const file = join(dir, "absent.yaml");
    assert.deepEqual(await refusalLinesAsync(loadConfig({ file, env: {} })), [
      `config: file ${file} cannot be read`,
    ]);
  });

  it("refuses malformed JSON and YAML by position, without quoting the text", async () => {
    const badJson = await configFile("gw.json", '{\n  "store": "redis://:hunter2@db:6379"\n  "x": 1\n}');
    const jsonLines = await refusalLinesAsync(loadConfig({ file: badJson, env: {} }));
    assert.match(jsonLines[0] ?? "", /^config: file .*gw\.json is not valid JSON \(line 3, column 3\)$/);
    assert.ok(!jsonLines.join("\n").includes("hunter2"));

    const badYaml = await configFile("gw.yaml", "store: 'redis://:hunter2@db:6379\nlisten: [1\n");
    const yamlLines = await refusalLinesAsync(loadConfig({ file: badYaml, env: {} }));
    assert.match(yamlLines[0] ?? "", /^config: file .*gw\.yaml is not valid YAML \(line \d+, column \d+\)$/);
    assert.ok(!yamlLines.join("\n").includes("hunter2"));
  });

  it("refuses a key given twice, in JSON as in YAML", async () => {
    const jsonFile = await configFile(
      "gw.json",
      '{"auth": {"anonymous": false}, "auth": {"anonymous": true}}',
    );
    assert.match(
      (await refusalLinesAsync(loadConfig({ file: jsonFile, env: {} })))[0] ?? "",
      /gw\.json repeats a key \(line 1, column \d+\)$/,
    );
    const yamlFile = await configFile("gw.yaml", "auth:\n  anonymous: false\nauth:\n  anonymous: true\n");
    assert.match(
      (await refusalLinesAsync(loadConfig({ file: yamlFile, env: {} })))[0] ?? "",
      /gw\.yaml repeats a key \(line 3, column 1\)$/,
    );
  });

  it("refuses a YAML tag it does not know rather than reading the value some other way", async () => {
    const file = await configFile("gw.yaml", yaml.replace("port: 9100", "port: !custom 9100"));
    assert.match((await refusalLinesAsync(loadConfig({ file, env: {} })))[0] ?? "", /is not valid YAML/);
  });

  it("refuses a __proto__ key instead of letting it vanish or change a prototype", async () => {
    const file = await configFile(
      "gw.json",
      JSON.stringify(minimalConfig()).replace('"auth":{', '"auth":{"__proto__":{"anonymous":true},'),
    );
    assert.deepEqual(await refusalLinesAsync(loadConfig({ file, env: {} })), [
      "config: auth.__proto__ is not an allowed key name",
    ]);
  });

  it("takes an empty YAML file as no settings, so the environment can supply them all", async () => {
    const file = await configFile("gw.yaml", "");
    const config = await loadConfig({
      file,
      env: {
        TENANTGATE_SECRETS__MASTERKEY: "env:TEST_MASTER_KEY",
        TENANTGATE_AUTH__ANONYMOUS: "true",
        TENANTGATE_UPSTREAMS: JSON.stringify([{ name: "demo", path: "/mcp", url: "http://127.0.0.1:9000/" }]),
      },
    });
    assert.equal(config.auth.anonymous, true);
  });

  it("without a file reads settings from the environment and defaults, relative to cwd", async () => {
    const config = await loadConfig({
      cwd: "/srv/gw",
      env: {
        TENANTGATE_SECRETS__MASTERKEY: "file:keys/master.key",
        TENANTGATE_AUTH__ANONYMOUS: "true",
        TENANTGATE_UPSTREAMS__0__NAME: "demo",
        TENANTGATE_UPSTREAMS__0__PATH: "/mcp",
        TENANTGATE_UPSTREAMS__0__URL: "http://127.0.0.1:9000/",
      },
    });
    assert.equal(config.configDir, "/srv/gw");
    assert.equal(config.store, "sqlite:/srv/gw/.tenantgate/store.db");
    assert.deepEqual(config.secrets.masterKeys, [{ id: "default", key: "file:/srv/gw/keys/master.key" }]);
  });
});

describe("relative paths", () => {
  const withPaths = (): Record<string, unknown> => ({
    store: "sqlite:data/store.db?busyTimeoutMs=2000",
    secrets: {
      masterKeys: [
        { id: "a", key: "file:keys/a.key" },
        { id: "b", key: "env:KEY_B" },
      ],
      activeKeyId: "a",
      tagKey: "file:./keys/tag.key",
    },
    auth: { issuers: [{ issuer: "https://login.example.com", jwksFile: "../shared/jwks.json" }] },
    upstreams: [{ name: "demo", path: "/mcp", url: "http://127.0.0.1:9000/mcp" }],
    audit: { file: "audit/trail.jsonl" },
    log: { level: "debug", file: "logs/gateway.log" },
  });

  it("resolves paths written in the file against the file's folder", async () => {
    const file = await configFile("conf/gw.json", JSON.stringify(withPaths()));
    const folder = join(file, "..");
    const config = await loadConfig({ file, cwd: "/elsewhere", env: {} });
    assert.equal(config.configDir, folder);
    assert.equal(config.store, `sqlite:${join(folder, "data/store.db")}?busyTimeoutMs=2000`);
    assert.deepEqual(config.secrets.masterKeys, [
      { id: "a", key: `file:${join(folder, "keys/a.key")}` },
      { id: "b", key: "env:KEY_B" },
    ]);
    assert.equal(config.secrets.tagKey, `file:${join(folder, "keys/tag.key")}`);
    assert.equal(config.auth.issuers[0]?.jwksFile, join(folder, "../shared/jwks.json"));
    assert.equal(config.audit.file, join(folder, "audit/trail.jsonl"));
    assert.deepEqual(config.log, { level: "debug", file: join(folder, "logs/gateway.log") });
  });

  it("applies the default SQLite path beside the config file", async () => {
    const file = await configFile("gw.json", JSON.stringify(minimalConfig()));
    const config = await loadConfig({ file, cwd: "/elsewhere", env: {} });
    assert.equal(config.store, `sqlite:${join(file, "..", ".tenantgate/store.db")}`);
  });

  it("keeps absolute paths and non-file stores as written", async () => {
    let input = withSetting(withPaths(), "store", "redis://cache:6379?prefix=gw:");
    input = withSetting(input, "audit.file", "/var/log/tenantgate/audit.jsonl");
    const config = await loadConfig({ file: await configFile("gw.json", JSON.stringify(input)), env: {} });
    assert.equal(config.store, "redis://cache:6379?prefix=gw:");
    assert.equal(config.audit.file, "/var/log/tenantgate/audit.jsonl");
  });

  it("resolves paths given in the environment against the working directory", async () => {
    const file = await configFile("gw.json", JSON.stringify(withPaths()));
    const config = await loadConfig({
      file,
      cwd: "/run/gw",
      env: {
        TENANTGATE_STORE: "sqlite:state.db",
        TENANTGATE_AUDIT__FILE: "audit.jsonl",
        TENANTGATE_AUDIT__MAXFILEBYTES: "1048576",
        TENANTGATE_SECRETS__MASTERKEYS__0__KEY: "file:a.key",
        TENANTGATE_LOG__FILE: "gateway.log",
        TENANTGATE_LOG__LEVEL: "warn",
      },
    });
    assert.equal(config.audit.maxFileBytes, 1_048_576, "a number from the environment");
    assert.equal(config.store, "sqlite:/run/gw/state.db");
    assert.equal(config.audit.file, "/run/gw/audit.jsonl");
    assert.deepEqual(config.log, { level: "warn", file: "/run/gw/gateway.log" });
    assert.equal(config.secrets.masterKeys[0]?.key, "file:/run/gw/a.key");
    // Untouched by the environment: still beside the file.
    assert.equal(config.secrets.tagKey, `file:${join(file, "..", "keys/tag.key")}`);
  });
});
