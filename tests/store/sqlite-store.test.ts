import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { after, before, describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import type { Store } from "../../src/store/contract.ts";
import { counterKey, ownedKey, ownerIndexKey, ownershipKey } from "../../src/store/keys.ts";
import { openStore } from "../../src/store/open-store.ts";
import { openSqliteStore } from "../../src/store/sqlite-store.ts";
import { openRemoteStore } from "../support/remote-store.ts";
import { describeStoreConformance, type StoreHarness } from "./conformance.ts";

/**
 * Generous for the race cases, where two processes contend for the write lock 1,000 times on a
 * machine that may be busy with other tests; the lock tests below use a short timeout of their own.
 */
const BUSY_TIMEOUT_MS = 2_000;
/** Liveness, not speed: a call must give up within its busy timeout plus this. */
const LIVENESS_MARGIN_MS = 4_000;

function sqliteUrl(file: string, busyTimeoutMs = BUSY_TIMEOUT_MS): string {
  return `sqlite:${file}?busyTimeoutMs=${busyTimeoutMs}`;
}

function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), "tenantgate-sqlite-"));
}

export const sqliteHarness: StoreHarness = {
  name: "sqlite",
  async fixture() {
    const dir = await tempDir();
    const url = sqliteUrl(join(dir, "store.db"));
    return {
      durable: true,
      timeoutMs: BUSY_TIMEOUT_MS,
      open: () => openStore(url),
      openInOtherProcess: () => openRemoteStore(url, "sqlite"),
      cleanup: () => rm(dir, { recursive: true, force: true }),
    };
  },
};

describeStoreConformance(sqliteHarness);

const scope = { tenant: "t", issuer: "https://i.example", subject: "s" };

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A second connection on the file, outside the store, as another process's would be. */
function rawConnection(file: string): DatabaseSync {
  return new DatabaseSync(file);
}

function seedCounter(file: string, encodedKey: string, value: number): void {
  const db = rawConnection(file);
  db.prepare("UPDATE counters SET value = ? WHERE key = ?").run(value, encodedKey);
  db.close();
}

function scalar(db: DatabaseSync, sql: string): unknown {
  const row = db.prepare(sql).get();
  return row ? Object.values(row)[0] : undefined;
}

/**
 * Another process takes the write lock, runs `statements`, reports "locked", and commits `holdMs`
 * later. Resolves once it holds the lock, with a promise of its exit.
 */
async function peerWritesUnderLock(
  file: string,
  statements: [sql: string, ...params: (string | number | null)[]][],
  holdMs: number,
): Promise<{ exited: Promise<number | null> }> {
  const script = `
    const { DatabaseSync } = require("node:sqlite");
    const [file, statements, holdMs] = JSON.parse(process.argv[1]);
    const db = new DatabaseSync(file);
    db.exec("PRAGMA busy_timeout = 5000");
    db.exec("BEGIN IMMEDIATE");
    for (const [sql, ...params] of statements) db.prepare(sql).run(...params);
    process.stdout.write("locked\\n");
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, holdMs);
    db.exec("COMMIT");
    db.close();`;
  const child = spawn(process.execPath, ["-e", script, JSON.stringify([file, statements, holdMs])], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  await new Promise<void>((resolve, reject) => {
    child.stdout.once("data", () => resolve());
    exited.then((code) => reject(new Error(`peer exited with ${code} before locking`)));
  });
  return { exited };
}

function mode(stats: { mode: number }): string {
  return (stats.mode & 0o777).toString(8);
}

describe("sqlite store", () => {
  let dir: string;
  before(async () => {
    dir = await tempDir();
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function freshFile(): string {
    return join(dir, `${randomUUID()}.db`);
  }

  describe("locking", () => {
    it("a write blocked beyond busy_timeout by another connection's exclusive lock rejects with ERR_STORE_UNAVAILABLE, reads still answer, and writes work once the lock is released", async () => {
      const file = freshFile();
      const busyTimeoutMs = 250;
      const store = await openStore(sqliteUrl(file, busyTimeoutMs));
      const record = ownedKey(scope, "note", "locked");
      const claimed = ownershipKey("session", "locked");
      const counter = counterKey("locked", "c");
      const index = ownerIndexKey(scope, "session");
      const secretValue = `value-${randomUUID()}`;
      await store.put(record, "before");
      await store.indexAdd(index, "m");
      const holder = rawConnection(file);
      holder.exec("BEGIN EXCLUSIVE");
      try {
        const writes: [string, () => Promise<unknown>][] = [
          ["put", () => store.put(record, secretValue)],
          ["claim", () => store.claim(claimed, secretValue)],
          ["take", () => store.take(record)],
          ["takeIfEquals", () => store.takeIfEquals(record, "before")],
          ["delete", () => store.delete(record)],
          ["increment", () => store.increment(counter, 1, { limit: 5, ttlMs: 60_000 })],
          ["indexAdd", () => store.indexAdd(index, "n")],
          ["indexRemove", () => store.indexRemove(index, "m")],
        ];
        for (const [name, write] of writes) {
          const started = Date.now();
          await assert.rejects(write(), (error: unknown) => {
            assert.ok(isGateError(error, "ERR_STORE_UNAVAILABLE"), `${name}: ${String(error)}`);
            const said = `${error.message} ${error.detail ?? ""} ${String(error.cause)}`;
            assert.ok(!said.includes(record.encoded) && !said.includes(claimed.encoded), `${name}: a key`);
            assert.ok(!said.includes(secretValue), `${name}: a value`);
            return true;
          });
          const elapsed = Date.now() - started;
          assert.ok(elapsed < busyTimeoutMs + LIVENESS_MARGIN_MS, `${name} gave up after ${elapsed} ms`);
        }
        // WAL: readers never wait for the writer.
        assert.equal(await store.get(record), "before");
        assert.deepEqual(await store.indexList(index), ["m"]);
        await store.ping();
      } finally {
        holder.exec("ROLLBACK");
        holder.close();
      }
      assert.deepEqual(await store.claim(claimed, "owner"), { won: true, winner: "owner" });
      assert.equal(await store.take(record), "before");
      assert.deepEqual(await store.increment(counter, 1, { limit: 5 }), { applied: true, value: 1 });
      await store.close();
    });

    it("claim, takeIfEquals and increment wait for a peer process's write lock before they read, so they act on what the peer committed", async () => {
      const file = freshFile();
      const store = await openStore(sqliteUrl(file, 10_000));
      const holdMs = 500;
      const upsertRecord =
        "INSERT INTO records (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value";

      const claimed = ownershipKey("session", "contested");
      const claimPeer = await peerWritesUnderLock(file, [[upsertRecord, claimed.encoded, "peer"]], holdMs);
      assert.deepEqual(await store.claim(claimed, "mine"), { won: false, winner: "peer" });
      assert.equal(await claimPeer.exited, 0);

      const code = ownershipKey("code", "contested");
      await store.put(code, "client-a");
      const swapPeer = await peerWritesUnderLock(file, [[upsertRecord, code.encoded, "client-b"]], holdMs);
      assert.equal(await store.takeIfEquals(code, "client-a"), false);
      assert.equal(await store.get(code), "client-b");
      assert.equal(await swapPeer.exited, 0);

      const counter = counterKey("contested", "c");
      await store.increment(counter, 1);
      const countPeer = await peerWritesUnderLock(
        file,
        [["UPDATE counters SET value = 5 WHERE key = ?", counter.encoded]],
        holdMs,
      );
      assert.deepEqual(await store.increment(counter, 1, { limit: 5 }), { applied: false, value: 5 });
      assert.equal(await countPeer.exited, 0);

      const single = ownershipKey("code", "single-use");
      await store.put(single, "grant");
      const takePeer = await peerWritesUnderLock(
        file,
        [["DELETE FROM records WHERE key = ?", single.encoded]],
        holdMs,
      );
      assert.equal(await store.take(single), null);
      assert.equal(await takePeer.exited, 0);
      await store.close();
    });

    it("a failed transaction does not leave the connection holding the write lock", async () => {
      const file = freshFile();
      const store = await openStore(sqliteUrl(file, 250));
      const counter = counterKey("overflow", "c");
      await store.increment(counter, 1);
      seedCounter(file, counter.encoded, Number.MAX_SAFE_INTEGER);
      // Refused inside the BEGIN IMMEDIATE transaction, after the lock was taken.
      await assert.rejects(store.increment(counter, 1), (error) =>
        isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
      const other = await openStore(sqliteUrl(file, 250));
      await other.put(ownedKey(scope, "note", "after"), "written by another connection");
      await other.close();
      await store.close();
    });

    it("opening a new file that another connection holds locked fails with ERR_STORE_UNAVAILABLE within the busy timeout", async () => {
      const file = freshFile();
      const holder = rawConnection(file);
      holder.exec("BEGIN EXCLUSIVE");
      holder.exec("CREATE TABLE squatter (x)");
      try {
        const started = Date.now();
        await assert.rejects(openStore(sqliteUrl(file, 250)), (error) =>
          isGateError(error, "ERR_STORE_UNAVAILABLE"),
        );
        assert.ok(Date.now() - started < 250 + LIVENESS_MARGIN_MS);
      } finally {
        holder.exec("ROLLBACK");
        holder.close();
      }
      const store = await openStore(sqliteUrl(file, 250));
      await store.ping();
      await store.close();
    });
  });

  describe("file and folder", () => {
    it("creates a missing folder 0700 and the database 0600, and SQLite's -wal and -shm files follow the database's mode", async () => {
      const parent = join(dir, randomUUID());
      const folder = join(parent, "nested");
      const file = join(folder, "store.db");
      const store = await openStore(sqliteUrl(file));
      await store.put(ownedKey(scope, "note", "k"), "v");
      assert.equal(mode(await stat(parent)), "700");
      assert.equal(mode(await stat(folder)), "700");
      assert.equal(mode(await stat(file)), "600");
      assert.equal(mode(await stat(`${file}-wal`)), "600");
      assert.equal(mode(await stat(`${file}-shm`)), "600");
      await store.close();
    });

    it("puts the file in write-ahead-log mode, so readers never wait for a writer", async () => {
      const file = freshFile();
      const store = await openSqliteStore({ path: file });
      const raw = rawConnection(file);
      assert.equal(scalar(raw, "PRAGMA journal_mode"), "wal");
      raw.close();
      await store.close();
    });
  });

  describe("migrations", () => {
    it("opening an existing file again keeps its data and schema and does not migrate twice", async () => {
      const file = freshFile();
      const first = await openSqliteStore({ path: file });
      await first.put(ownedKey(scope, "note", "k"), "kept");
      await first.close();
      const raw = rawConnection(file);
      const schemaBefore = scalar(raw, "SELECT group_concat(sql, ';') FROM sqlite_schema");
      assert.equal(scalar(raw, "PRAGMA user_version"), 2);
      const [second, third] = await Promise.all([
        openSqliteStore({ path: file }),
        openSqliteStore({ path: file }),
      ]);
      assert.equal(await second.get(ownedKey(scope, "note", "k")), "kept");
      assert.equal(await third.get(ownedKey(scope, "note", "k")), "kept");
      await Promise.all([second.close(), third.close()]);
      assert.equal(scalar(raw, "SELECT group_concat(sql, ';') FROM sqlite_schema"), schemaBefore);
      assert.equal(scalar(raw, "PRAGMA user_version"), 2);
      raw.close();
    });

    it("processes opening the same new file at once all succeed and share one schema", async () => {
      for (let round = 0; round < 3; round++) {
        const file = freshFile();
        const url = sqliteUrl(file);
        const stores: Store[] = await Promise.all([
          openRemoteStore(url, "sqlite"),
          openRemoteStore(url, "sqlite"),
          openStore(url),
        ]);
        try {
          const key = ownershipKey("session", `round-${round}`);
          const outcomes = await Promise.all(stores.map((store, i) => store.claim(key, `owner-${i}`)));
          assert.equal(outcomes.filter((outcome) => outcome.won).length, 1, `round ${round}`);
        } finally {
          await Promise.all(stores.map((store) => store.close()));
        }
        const raw = rawConnection(file);
        assert.equal(scalar(raw, "PRAGMA user_version"), 2);
        assert.equal(scalar(raw, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"), 5);
        raw.close();
      }
    });

    it("refuses a file whose schema is newer than this build, and leaves it untouched", async () => {
      const file = freshFile();
      const store = await openSqliteStore({ path: file });
      await store.put(ownedKey(scope, "note", "k"), "v");
      await store.close();
      const raw = rawConnection(file);
      raw.exec("PRAGMA user_version = 99");
      await assert.rejects(openSqliteStore({ path: file }), (error) =>
        isGateError(error, "ERR_STORE_UNAVAILABLE"),
      );
      assert.equal(scalar(raw, "PRAGMA user_version"), 99);
      assert.equal(scalar(raw, "SELECT count(*) FROM records"), 1);
      raw.close();
    });
  });

  describe("expiry sweep", () => {
    it("deletes expired records, counters and index members from the file and keeps live ones", async () => {
      const file = freshFile();
      const store = await openSqliteStore({ path: file, sweepIntervalMs: 50 });
      await store.put(ownedKey(scope, "note", "short"), "v", { ttlMs: 20 });
      await store.put(ownedKey(scope, "note", "lasting"), "v");
      await store.increment(counterKey("window", "c"), 1, { ttlMs: 20 });
      await store.indexAdd(ownerIndexKey(scope, "session"), "short", { ttlMs: 20 });
      await store.indexAdd(ownerIndexKey(scope, "session"), "lasting", { ttlMs: 60_000 });
      const raw = rawConnection(file);
      const counts = () =>
        ["records", "counters", "index_members"].map((table) => scalar(raw, `SELECT count(*) FROM ${table}`));
      assert.deepEqual(counts(), [2, 1, 2]);
      const deadline = Date.now() + 10_000;
      while (JSON.stringify(counts()) !== JSON.stringify([1, 0, 1]) && Date.now() < deadline) await sleep(50);
      assert.deepEqual(counts(), [1, 0, 1]);
      raw.close();
      await store.close();
    });

    it("an open store does not keep its process alive (the sweep timer is unref'd)", async () => {
      const file = freshFile();
      const module = new URL("../../src/store/sqlite-store.ts", import.meta.url).href;
      const script = `import { openSqliteStore } from ${JSON.stringify(module)};
        await openSqliteStore({ path: ${JSON.stringify(file)}, sweepIntervalMs: 50 });`;
      const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: "inherit" });
      const watchdog = setTimeout(() => child.kill(), 20_000);
      const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
      clearTimeout(watchdog);
      assert.equal(code, 0, "the process was still running after 20 s");
    });
  });

  describe("values and arguments", () => {
    it("values with NUL characters, emoji and the maximum length round-trip exactly", async () => {
      const store = await openSqliteStore({ path: freshFile() });
      for (const value of ["a\0b", "\0", "🙂 é \u2028", "x".repeat(1 << 20), "🙂".repeat(1 << 19)]) {
        const key = ownedKey(scope, "note", randomUUID());
        await store.put(key, value);
        assert.equal(await store.get(key), value);
        assert.deepEqual(await store.claim(ownershipKey("code", randomUUID()), value), {
          won: true,
          winner: value,
        });
        assert.equal(await store.take(key), value);
      }
      await store.close();
    });

    it("an ill-formed expected value or member never matches a stored U+FFFD (SQLite would bind it as one)", async () => {
      const store = await openSqliteStore({ path: freshFile() });
      const key = ownershipKey("code", "replacement");
      await store.put(key, "\ufffd");
      assert.equal(await store.takeIfEquals(key, "\ud800"), false);
      assert.equal(await store.get(key), "\ufffd");
      const index = ownerIndexKey(scope, "session");
      await store.indexAdd(index, "\ufffd");
      assert.equal(await store.indexRemove(index, "\udc00"), false);
      assert.deepEqual(await store.indexList(index), ["\ufffd"]);
      await store.close();
    });

    it("an increment that would take a counter past 2^53 is refused and leaves it unchanged", async () => {
      const file = freshFile();
      const store = await openSqliteStore({ path: file });
      const counter = counterKey("big", "c");
      await store.increment(counter, 1);
      // Reaching 2^53 through the API takes 2^21 maximal increments; put the counter there directly.
      seedCounter(file, counter.encoded, Number.MAX_SAFE_INTEGER);
      await assert.rejects(store.increment(counter, 1), (error) =>
        isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
      assert.deepEqual(await store.increment(counter, 0), {
        applied: true,
        value: Number.MAX_SAFE_INTEGER,
      });
      await store.close();
    });

    it("after close every method rejects with ERR_STORE_UNAVAILABLE and close can be called again", async () => {
      const store = await openSqliteStore({ path: freshFile() });
      await store.close();
      await store.close();
      const record = ownedKey(scope, "note", "k");
      const index = ownerIndexKey(scope, "session");
      const calls: Promise<unknown>[] = [
        store.get(record),
        store.put(record, "v"),
        store.claim(record, "v"),
        store.take(record),
        store.takeIfEquals(record, "v"),
        store.delete(record),
        store.increment(counterKey("c", "c"), 1),
        store.indexAdd(index, "m"),
        store.indexRemove(index, "m"),
        store.indexList(index),
        store.ping(),
      ];
      for (const call of calls) {
        await assert.rejects(call, (error) => isGateError(error, "ERR_STORE_UNAVAILABLE"));
      }
    });
  });
});
