import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { generateMasterKey, Keyring, loadMasterKey, parseMasterKey } from "../../src/crypto/keyring.ts";
import { GateError, isGateError } from "../../src/errors.ts";

const dir = await mkdtemp(join(tmpdir(), "tenantgate-keyring-"));
after(() => rm(dir, { recursive: true, force: true }));

function rejectsWithout(secret: string, code: string) {
  return (error: unknown) => {
    assert.ok(error instanceof GateError, String(error));
    assert.equal(error.code, code);
    assert.ok(!error.message.includes(secret), "the message must not contain the key");
    return true;
  };
}

describe("master keys", () => {
  it("generates 32 random bytes as canonical base64url", () => {
    const key = generateMasterKey();
    assert.match(key, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(parseMasterKey(key, "test").byteLength, 32);
    assert.notEqual(generateMasterKey(), key);
  });

  it("refuses keys of the wrong length or in a non-canonical encoding, without echoing them", () => {
    const short = randomBytes(16).toString("base64url");
    assert.throws(() => parseMasterKey(short, "secrets.masterKey"), rejectsWithout(short, "ERR_KEY_INVALID"));
    const padded = `${randomBytes(32).toString("base64")}`;
    assert.throws(
      () => parseMasterKey(padded, "secrets.masterKey"),
      rejectsWithout(padded, "ERR_KEY_INVALID"),
    );
    const withJunk = `${generateMasterKey()}!`;
    assert.throws(
      () => parseMasterKey(withJunk, "secrets.masterKey"),
      rejectsWithout(withJunk, "ERR_KEY_INVALID"),
    );
  });

  it("loads from env:NAME and names the variable when it is missing", async () => {
    const key = generateMasterKey();
    assert.equal((await loadMasterKey("env:TG_KEY", { env: { TG_KEY: key } })).toString("base64url"), key);
    await assert.rejects(loadMasterKey("env:TG_MISSING", { env: {} }), (error: unknown) => {
      assert.ok(isGateError(error, "ERR_KEY_INVALID"));
      assert.match(error.message, /TG_MISSING/);
      return true;
    });
  });

  it("loads from file:PATH with mode 0600, relative to a base folder", async () => {
    const key = generateMasterKey();
    await writeFile(join(dir, "good.key"), `${key}\n`, { mode: 0o600 });
    assert.equal((await loadMasterKey("file:good.key", { baseDir: dir })).toString("base64url"), key);
  });

  it("refuses a key file readable by group or others, naming the file and never the key", async () => {
    const key = generateMasterKey();
    for (const mode of [0o640, 0o604, 0o644]) {
      const path = join(dir, `exposed-${mode.toString(8)}.key`);
      await writeFile(path, key);
      await chmod(path, mode);
      await assert.rejects(loadMasterKey(`file:${path}`), (error: unknown) => {
        assert.ok(rejectsWithout(key, "ERR_KEY_FILE_EXPOSED")(error));
        assert.ok((error as Error).message.includes(path), "names the file");
        return true;
      });
    }
  });

  it("refuses a key path that is not a regular file (a FIFO would block, a folder is not a key)", async () => {
    const { execFileSync } = await import("node:child_process");
    const fifo = join(dir, "key.fifo");
    execFileSync("mkfifo", ["-m", "600", fifo]);
    await assert.rejects(loadMasterKey(`file:${fifo}`), (e: unknown) => isGateError(e, "ERR_KEY_INVALID"));
    await assert.rejects(loadMasterKey(`file:${dir}`), (e: unknown) => isGateError(e, "ERR_KEY_INVALID"));
  });

  it("refuses an unknown reference scheme and a missing file", async () => {
    await assert.rejects(loadMasterKey("plain-key-text"), (e: unknown) => isGateError(e, "ERR_KEY_INVALID"));
    await assert.rejects(loadMasterKey(`file:${join(dir, "nope.key")}`), (e: unknown) =>
      isGateError(e, "ERR_KEY_INVALID"),
    );
  });
});

describe("keyring", () => {
  it("derives distinct purpose keys per purpose and per master key, stable across calls", () => {
    const ring = Keyring.fromKeys(
      [
        { id: "k1", key: randomBytes(32) },
        { id: "k2", key: randomBytes(32) },
      ],
      "k2",
    );
    const a = ring.purposeKey("seal/vault");
    assert.deepEqual(ring.purposeKey("seal/vault"), a);
    assert.deepEqual(ring.purposeKey("seal/vault", "k2"), a, "the active key is the default");
    assert.notDeepEqual(ring.purposeKey("seal/vault", "k1"), a);
    assert.notDeepEqual(ring.purposeKey("audit-chain"), a);
    assert.equal(a.byteLength, 32);
  });

  it("refuses bad key sets: empty, duplicate ids, wrong size, unknown active id, bad id", () => {
    const key = randomBytes(32);
    assert.throws(
      () => Keyring.fromKeys([], "k"),
      (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
    assert.throws(
      () =>
        Keyring.fromKeys(
          [
            { id: "k", key },
            { id: "k", key },
          ],
          "k",
        ),
      (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
    assert.throws(
      () => Keyring.fromKeys([{ id: "k", key: randomBytes(31) }], "k"),
      (e: unknown) => isGateError(e, "ERR_KEY_INVALID"),
    );
    assert.throws(
      () => Keyring.fromKeys([{ id: "k", key }], "other"),
      (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
    assert.throws(
      () => Keyring.fromKeys([{ id: "k.1", key }], "k.1"),
      (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
  });

  it("hands out copies of derived keys: a caller that zeroes its key changes nothing for others", () => {
    const ring = Keyring.fromKeys([{ id: "k", key: randomBytes(32) }], "k");
    const first = ring.purposeKey("assertion-signing");
    const expected = Buffer.from(first);
    first.fill(0);
    assert.deepEqual(ring.purposeKey("assertion-signing"), expected);
    const sealing = ring.sealingKey("vault");
    const sealingExpected = Buffer.from(sealing);
    sealing.fill(0);
    assert.deepEqual(ring.sealingKey("vault"), sealingExpected);
  });

  it("keeps its own copy of the key material", () => {
    const key = randomBytes(32);
    const ring = Keyring.fromKeys([{ id: "k", key }], "k");
    const before = ring.purposeKey("x");
    const fresh = Keyring.fromKeys([{ id: "k", key: Buffer.from(key) }], "k");
    key.fill(0);
    assert.deepEqual(fresh.purposeKey("x"), before);
    assert.deepEqual(Keyring.fromKeys([{ id: "k", key }], "k").purposeKey("y").byteLength, 32);
  });
});
