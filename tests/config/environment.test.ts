import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { loadConfig, parseConfig } from "../../src/config/index.ts";
import { minimalConfig, refusalLines, withSetting } from "../support/config-fixtures.ts";

const dir = await mkdtemp(join(tmpdir(), "tenantgate-config-env-"));
after(() => rm(dir, { recursive: true, force: true }));

describe("environment overrides", () => {
  it("environment beats file beats default", async () => {
    const file = join(dir, "precedence.json");
    await writeFile(
      file,
      JSON.stringify(
        withSetting(withSetting(minimalConfig(), "listen.port", 9100), "sessions.idleTimeout", "10m"),
      ),
    );
    const fromFile = await loadConfig({ file, env: {} });
    assert.equal(fromFile.listen.port, 9100, "file beats default");
    assert.equal(fromFile.sessions.idleTimeoutMs, 600_000);
    assert.equal(fromFile.sessions.absoluteTimeoutMs, 8 * 3_600_000, "default where neither sets it");

    const fromEnv = await loadConfig({
      file,
      env: { TENANTGATE_LISTEN__PORT: "9000", TENANTGATE_SESSIONS__IDLETIMEOUT: "5m" },
    });
    assert.equal(fromEnv.listen.port, 9000, "environment beats file");
    assert.equal(fromEnv.sessions.idleTimeoutMs, 300_000);
    assert.equal(fromEnv.publicUrl, "http://127.0.0.1:9000", "derived defaults follow the override");
  });

  it("matches names ignoring case, camelCase keys written as one word", () => {
    const config = parseConfig(minimalConfig(), {
      env: {
        TENANTGATE_PUBLICURL: "https://gw.example.com",
        tenantgate_listen__allowunauthenticatedexposure: "true",
        TENANTGATE_Sessions__MaxPerPrincipal: "7",
      },
    });
    assert.equal(config.publicUrl, "https://gw.example.com");
    assert.equal(config.listen.allowUnauthenticatedExposure, true);
    assert.equal(config.sessions.maxPerPrincipal, 7);
  });

  it("coerces numbers, booleans, enums, durations and JSON lists and objects by the schema's type", () => {
    const config = parseConfig(minimalConfig(), {
      env: {
        TENANTGATE_LISTEN__PORT: "0",
        TENANTGATE_LIMITS__MAXBODYBYTES: "1048576",
        TENANTGATE_AUTH__ANONYMOUS: "FALSE",
        TENANTGATE_AUTH__APIKEYS: JSON.stringify([
          { id: "ci", digest: `${"B".repeat(42)}A`, subject: "bot", tenant: "acme", scopes: ["read"] },
        ]),
        TENANTGATE_AUDIT__STDOUT: "true",
        TENANTGATE_SESSIONS__ONLIMIT: "evict-oldest",
        TENANTGATE_LISTEN__TRUSTEDPROXIES: '["10.0.0.0/8","192.168.1.1"]',
        TENANTGATE_ADMIN__LISTEN: '{"port": 9999}',
      },
    });
    assert.equal(config.listen.port, 0);
    assert.equal(config.limits.maxBodyBytes, 1_048_576);
    assert.equal(config.auth.anonymous, false);
    assert.deepEqual(config.auth.apiKeys[0]?.scopes, ["read"]);
    assert.equal(config.sessions.onLimit, "evict-oldest");
    assert.deepEqual(config.listen.trustedProxies, ["10.0.0.0/8", "192.168.1.1/32"]);
    assert.deepEqual(config.admin.listen, { host: "127.0.0.1", port: 9999 });
  });

  it("refuses a value that does not coerce, naming the setting and the variable", () => {
    const lines = refusalLines(() =>
      parseConfig(minimalConfig(), {
        env: {
          TENANTGATE_LISTEN__PORT: "80a",
          TENANTGATE_AUTH__ANONYMOUS: "yes",
          TENANTGATE_LIMITS__MAXBATCHSIZE: "",
          TENANTGATE_UPSTREAMS: "[not json hunter2",
        },
      }),
    );
    assert.deepEqual(lines, [
      "config: auth.anonymous (from environment variable TENANTGATE_AUTH__ANONYMOUS) must be true or false",
      "config: limits.maxBatchSize (from environment variable TENANTGATE_LIMITS__MAXBATCHSIZE) must be a number",
      "config: listen.port (from environment variable TENANTGATE_LISTEN__PORT) must be a number",
      "config: upstreams (from environment variable TENANTGATE_UPSTREAMS) must be JSON (a whole list or object)",
    ]);
  });

  it("names the variable when a value it set fails validation", () => {
    const lines = refusalLines(() =>
      parseConfig(minimalConfig(), { env: { TENANTGATE_UPSTREAMS__0__PATH: "/.well-known/oauth" } }),
    );
    assert.deepEqual(lines, [
      "config: upstreams[0].path (from environment variable TENANTGATE_UPSTREAMS__0__PATH) must not be under /.well-known/",
    ]);
  });

  it("edits list entries by index and appends at the end, but refuses a gap", () => {
    const config = parseConfig(minimalConfig(), {
      env: {
        TENANTGATE_UPSTREAMS__0__URL: "https://mcp.internal/mcp",
        TENANTGATE_UPSTREAMS__1__NAME: "files",
        TENANTGATE_UPSTREAMS__1__PATH: "/files",
        TENANTGATE_UPSTREAMS__1__COMMAND: "files-server",
        TENANTGATE_UPSTREAMS__1__ARGS__0: "--stdio",
      },
    });
    assert.equal(config.upstreams.length, 2);
    assert.equal(
      config.upstreams[0]?.transport === "http" && config.upstreams[0].url,
      "https://mcp.internal/mcp",
    );
    assert.equal(config.upstreams[0]?.name, "demo", "the file's other settings stay");
    assert.deepEqual(config.upstreams[1]?.transport === "stdio" && config.upstreams[1].args, ["--stdio"]);

    const lines = refusalLines(() =>
      parseConfig(minimalConfig(), { env: { TENANTGATE_UPSTREAMS__2__NAME: "far" } }),
    );
    assert.deepEqual(lines, [
      "config: environment variable TENANTGATE_UPSTREAMS__2__NAME cannot apply: index 2 leaves a gap in upstreams",
    ]);
  });

  it("lets a whole list replace the file's, then applies entry overrides on top", () => {
    const config = parseConfig(minimalConfig(), {
      env: {
        TENANTGATE_UPSTREAMS: JSON.stringify([{ name: "other", path: "/other", url: "http://127.0.0.1:1/" }]),
        TENANTGATE_UPSTREAMS__0__SCOPES: '["tools:call"]',
      },
    });
    assert.deepEqual(
      config.upstreams.map((upstream) => [upstream.name, upstream.scopes]),
      [["other", ["tools:call"]]],
    );
  });

  it("keeps the case of record keys: an upstream's environment and injected headers", () => {
    const input = withSetting(minimalConfig(), "upstreams", [
      { name: "files", path: "/files", command: "files-server" },
    ]);
    const config = parseConfig(input, {
      env: {
        TENANTGATE_UPSTREAMS__0__ENV__Api_Token: "vault:files",
        "TENANTGATE_UPSTREAMS__0__INJECT__X-Tenant": "Bearer {vault:files_token}",
      },
    });
    const [upstream] = config.upstreams;
    assert.ok(upstream?.transport === "stdio");
    assert.deepEqual(upstream.env, { Api_Token: "vault:files" });
    assert.deepEqual(upstream.inject, { "X-Tenant": "Bearer {vault:files_token}" });
  });

  it("refuses a TENANTGATE_ variable that names no setting, naming the variable", () => {
    const lines = refusalLines(() =>
      parseConfig(minimalConfig(), {
        env: {
          TENANTGATE_LISTEN_PORT: "9000",
          TENANTGATE_LISTEN__PORT__X: "1",
          TENANTGATE_PUBLIC_URL: "https://gw.example.com",
          TENANTGATE_UPSTREAMS__first__URL: "http://127.0.0.1:1/",
          TENANTGATE_: "x",
          OTHER_VARIABLE: "ignored",
        },
      }),
    );
    assert.deepEqual(lines, [
      "config: environment variable TENANTGATE_ names no setting (levels are joined by __)",
      "config: environment variable TENANTGATE_LISTEN_PORT names no setting (levels are joined by __)",
      "config: environment variable TENANTGATE_LISTEN__PORT__X names no setting (levels are joined by __)",
      "config: environment variable TENANTGATE_PUBLIC_URL names no setting (levels are joined by __)",
      "config: environment variable TENANTGATE_UPSTREAMS__first__URL names no setting (levels are joined by __)",
    ]);
  });

  it("ignores the CLI's TENANTGATE_ADMIN_URL and TENANTGATE_ADMIN_TOKEN", () => {
    const config = parseConfig(minimalConfig(), {
      env: { TENANTGATE_ADMIN_URL: "http://127.0.0.1:8788", TENANTGATE_ADMIN_TOKEN: "tg_secret" },
    });
    assert.equal(config.admin.listen.port, 8788);
  });

  it("leaves alone a TENANTGATE_ variable that a secret reference reads", () => {
    const input = withSetting(minimalConfig(), "secrets", {
      masterKeys: [{ id: "k1", key: "env:TENANTGATE_MASTER_KEY" }],
      activeKeyId: "k1",
      tagKey: "env:TENANTGATE_TAG_KEY",
    });
    const config = parseConfig(input, {
      env: { TENANTGATE_MASTER_KEY: "a-key-value", TENANTGATE_TAG_KEY: "another-key-value" },
    });
    assert.equal(config.secrets.masterKeys[0]?.key, "env:TENANTGATE_MASTER_KEY");
    // Set through the environment itself, the reference still excuses the variable it names.
    parseConfig(minimalConfig(), {
      env: { TENANTGATE_SECRETS__MASTERKEY: "env:TENANTGATE_KEY", TENANTGATE_KEY: "a-key-value" },
    });
  });

  it("refuses a __proto__ key inside JSON from a variable instead of dropping it", () => {
    const lines = refusalLines(() =>
      parseConfig(minimalConfig(), {
        env: { TENANTGATE_UPSTREAMS__0__INJECT: '{"__proto__": {"X-B": "1"}, "X-A": "{vault:a}"}' },
      }),
    );
    assert.deepEqual(lines, [
      "config: upstreams[0].inject.__proto__ (from environment variable TENANTGATE_UPSTREAMS__0__INJECT) is not an allowed key name",
    ]);
  });

  it("refuses two variables that set the same setting", () => {
    const lines = refusalLines(() =>
      parseConfig(minimalConfig(), { env: { TENANTGATE_LISTEN__PORT: "1", tenantgate_listen__port: "2" } }),
    );
    assert.deepEqual(lines, [
      "config: environment variable tenantgate_listen__port sets the same setting as TENANTGATE_LISTEN__PORT",
    ]);
  });

  it("refuses an override below a file value that is not an object", () => {
    const lines = refusalLines(() =>
      parseConfig(withSetting(minimalConfig(), "listen", 5), { env: { TENANTGATE_LISTEN__PORT: "1" } }),
    );
    assert.ok(
      lines.includes(
        "config: environment variable TENANTGATE_LISTEN__PORT cannot apply: listen is not an object or list",
      ),
      lines.join("\n"),
    );
    assert.ok(lines.includes("config: listen must be an object"), lines.join("\n"));
  });

  it("reads process.env when no env is given", () => {
    const name = "TENANTGATE_SESSIONS__MAXPERPRINCIPAL";
    process.env[name] = "3";
    try {
      assert.equal(parseConfig(minimalConfig()).sessions.maxPerPrincipal, 3);
    } finally {
      delete process.env[name];
    }
  });
});
