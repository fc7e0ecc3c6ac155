import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { digest } from "../../src/crypto/ids.ts";

const run = promisify(execFile);
const cli = fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url));
const dir = await mkdtemp(join(tmpdir(), "tenantgate-cli-"));
after(() => rm(dir, { recursive: true, force: true }));

function tenantgate(args: string[], input?: string) {
  const child = run(process.execPath, [cli, ...args]);
  if (input !== undefined) {
    child.child.stdin?.end(input);
  }
  return child;
}

describe("tenantgate keys", () => {
  it("generate prints a fresh 32-byte base64url key", async () => {
    const { stdout } = await tenantgate(["keys", "generate"]);
    assert.match(stdout, /^[A-Za-z0-9_-]{43}\n$/);
    assert.equal(Buffer.from(stdout.trim(), "base64url").byteLength, 32);
  });

  it("generate --out writes the key with mode 0600 and never overwrites a key file", async () => {
    const path = join(dir, "master.key");
    const { stdout } = await tenantgate(["keys", "generate", "--out", path]);
    assert.equal(stdout, "", "the key is not printed when written to a file");
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    const key = await readFile(path, "utf8");
    await assert.rejects(
      tenantgate(["keys", "generate", "--out", path]),
      (error: { code?: number }) => error.code === 1,
    );
    assert.equal(await readFile(path, "utf8"), key);
  });

  it("digest prints the digest an API key is stored under, and refuses a short key", async () => {
    const apiKey = "tg_live_example_key_with_enough_length";
    const { stdout } = await tenantgate(["keys", "digest"], `${apiKey}\n`);
    assert.equal(stdout.trim(), digest("api-key", apiKey));
    await assert.rejects(
      tenantgate(["keys", "digest"], "password\n"),
      (error: { code?: number; stderr?: string }) => {
        assert.equal(error.code, 1);
        assert.ok(!(error.stderr ?? "").includes("password"), "the key is not echoed");
        return true;
      },
    );
  });

  it("api-key prints a 256-bit key and its digest", async () => {
    const { stdout } = await tenantgate(["keys", "api-key"]);
    const apiKey = /api key[^:]*: (tg_[A-Za-z0-9_-]+)/.exec(stdout)?.[1];
    assert.ok(apiKey && Buffer.from(apiKey.slice(3), "base64url").byteLength === 32);
    assert.match(stdout, new RegExp(`digest[^:]*: ${digest("api-key", apiKey).replace(/[-]/g, "\\-")}`));
  });

  it("an unknown command exits 2 with the usage, without echoing it", async () => {
    await assert.rejects(tenantgate(["sk_pasted_secret"]), (error: { code?: number; stderr?: string }) => {
      assert.equal(error.code, 2);
      assert.match(error.stderr ?? "", /usage: tenantgate/);
      assert.ok(!(error.stderr ?? "").includes("sk_pasted_secret"));
      return true;
    });
  });
});
