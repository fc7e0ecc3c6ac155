import assert from "node:assert/strict";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { openStore } from "../../src/store/open-store.ts";

const dir = await mkdtemp(join(tmpdir(), "tenantgate-open-store-"));
after(() => rm(dir, { recursive: true, force: true }));

describe("openStore URLs", () => {
  it("refuses malformed URLs with ERR_STORE_URL_INVALID, naming the parameter and never the password", async () => {
    const cases = [
      "mysql://root:hunter2@db/x",
      "redis://:hunter2@127.0.0.1:1?prefix=has space",
      "redis://:hunter2@127.0.0.1:1?prefix=p&db=1",
      "postgres://u:hunter2@127.0.0.1:1/test?schema=Bad-Name",
      "postgres://u:hunter2@127.0.0.1:1/test?sslmode=allow",
      "postgres://u:hunter2@127.0.0.1:1/test?timeoutMs=0",
      "memory:?maxEntries=-1",
      "sqlite:",
      "sqlite:a.db?busyTimeoutMs=5?x=1",
      "not a url with hunter2",
    ];
    for (const url of cases) {
      await assert.rejects(openStore(url), (error: unknown) => {
        assert.ok(isGateError(error, "ERR_STORE_URL_INVALID"), `${url}: ${String(error)}`);
        assert.ok(!error.message.includes("hunter2"), `${url}: the password leaked into the message`);
        return true;
      });
    }
  });

  it("resolves a relative SQLite path against the config's folder", async () => {
    const store = await openStore("sqlite:data/store.db", { baseDir: dir });
    await store.ping();
    await store.close();
    assert.ok((await stat(join(dir, "data", "store.db"))).isFile());
  });
});
