import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { parseConfig } from "../../src/config/index.ts";
import { isGateError } from "../../src/errors.ts";
import { openStore } from "../../src/store/open-store.ts";
import { minimalConfig, withSetting } from "../support/config-fixtures.ts";

const dir = await mkdtemp(join(tmpdir(), "tenantgate-config-store-"));
after(() => rm(dir, { recursive: true, force: true }));

/** Whether loadConfig's check takes the store URL. */
function configAccepts(url: string): boolean {
  try {
    parseConfig(withSetting(minimalConfig(), "store", url), { env: {}, cwd: dir });
    return true;
  } catch (error) {
    assert.ok(isGateError(error, "ERR_CONFIG_INVALID"));
    return false;
  }
}

/**
 * Whether openStore takes it: it opens memory and SQLite stores, and for Redis and PostgreSQL on a
 * closed port it gets past URL parsing to ERR_STORE_UNAVAILABLE, which is as far as the URL matters.
 */
async function openStoreAccepts(url: string): Promise<boolean> {
  try {
    const store = await openStore(url, { baseDir: dir });
    await store.close();
    return true;
  } catch (error) {
    if (isGateError(error, "ERR_STORE_UNAVAILABLE")) return true;
    assert.ok(isGateError(error, "ERR_STORE_URL_INVALID"), String(error));
    return false;
  }
}

describe("store URL check", () => {
  it("accepts exactly the store URLs openStore accepts, without opening anything itself", async () => {
    const urls = [
      "memory:",
      "memory:?maxEntries=10",
      "memory:?maxEntries=0",
      "memory:?maxEntries=-1",
      "memory:?size=1",
      "memory",
      "sqlite:store.db",
      "sqlite:nested/store.db?busyTimeoutMs=50",
      "sqlite:",
      "sqlite:store.db?busyTimeoutMs=x",
      "sqlite:store.db?journal=off",
      "redis://127.0.0.1:1?timeoutMs=200",
      "redis://:pw@127.0.0.1:1/2?prefix=gw:&timeoutMs=200",
      "rediss://127.0.0.1:1?prefix=a.b-c_d:&timeoutMs=200",
      "redis://127.0.0.1:1?prefix=&timeoutMs=200",
      "redis://127.0.0.1:1?prefix=has space",
      "redis://127.0.0.1:1?db=1",
      "redis://127.0.0.1:1?timeoutMs=0",
      "postgres://u:pw@127.0.0.1:1/db?timeoutMs=200",
      "postgresql://u@127.0.0.1:1/db?schema=gw_1&poolSize=2&sslmode=disable&timeoutMs=200",
      "postgres://u@127.0.0.1:1/db?schema=Bad",
      "postgres://u@127.0.0.1:1/db?sslmode=allow",
      "postgres://u@127.0.0.1:1/db?poolSize=0",
      "postgres://u@127.0.0.1:1/db?search_path=x",
      "mysql://u@127.0.0.1:1/db",
      "http://127.0.0.1:1/",
      "not a url",
      "",
    ];
    const disagreements: string[] = [];
    for (const url of urls) {
      const [byConfig, byOpenStore] = [configAccepts(url), await openStoreAccepts(url)];
      if (byConfig !== byOpenStore)
        disagreements.push(`${url}: config ${byConfig}, openStore ${byOpenStore}`);
    }
    assert.deepEqual(disagreements, []);
  });

  it("is stricter than openStore about a second ? after a SQLite path", () => {
    // openStore ignores everything after a second "?"; a config with one is a mistake worth naming.
    assert.equal(configAccepts("sqlite:store.db?busyTimeoutMs=5?x=1"), false);
  });
});
