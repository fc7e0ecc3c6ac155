import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmod,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  symlink,
  truncate,
  writeFile,
} from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import {
  CHECKPOINT_SUFFIX,
  type ChainedFileSinkOptions,
  createChainedFileSink,
  verifyAuditFile,
  verifyAuditSeries,
} from "../../src/audit/audit-chain.ts";
import { createSecurityEvents, type SecurityEventRecord } from "../../src/audit/security-events.ts";
import { LOCK_SUFFIX } from "../../src/audit/writer-lock.ts";
import { createIdentifierTagger } from "../../src/crypto/identifier-tag.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { isGateError } from "../../src/errors.ts";
import { childEnvironment } from "../support/processes.ts";

const execFileAsync = promisify(execFile);
/** The CLI, with the runner's environment minus `TENANTGATE_` variables (it reads them as settings). */
const run = (file: string, args: readonly string[]) => execFileAsync(file, args, { env: childEnvironment() });
const cli = fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url));
const root = await mkdtemp(join(tmpdir(), "tenantgate-audit-rotation-"));
after(() => rm(root, { recursive: true, force: true }));
const folder = (): Promise<string> => mkdtemp(join(root, "case-"));

const masterKey = randomBytes(32);
const keyring = Keyring.fromKeys([{ id: "default", key: masterKey }], "default");
/** Small enough that a few dozen records rotate several times. */
const SMALL = 2048;

const record = (index: number): SecurityEventRecord => ({
  time: new Date(Date.UTC(2026, 0, 1, 0, 0, index)).toISOString(),
  type: "session.created",
  upstream: `u${index}`,
});

type Line = { seq: number; prev: string; record: Record<string, unknown>; mac: string };

async function lines(path: string): Promise<Line[]> {
  const text = await readFile(path, "utf8");
  return text
    .slice(0, -1)
    .split("\n")
    .map((line) => JSON.parse(line) as Line);
}

/** The archived files beside `path`, oldest first, then `path`: the series as an operator lists it. */
async function series(path: string): Promise<string[]> {
  const directory = join(path, "..");
  const base = path.slice(directory.length + 1);
  const archived = (await readdir(directory))
    .filter((name) => name.startsWith(`${base}.2`) && !name.endsWith(CHECKPOINT_SUFFIX))
    .sort();
  return [...archived.map((name) => join(directory, name)), path];
}

async function writeRotated(
  path: string,
  count: number,
  options: Partial<ChainedFileSinkOptions> = {},
): Promise<string[]> {
  const sink = await createChainedFileSink({ path, keyring, maxFileBytes: SMALL, ...options });
  for (let index = 0; index < count; index += 1) sink.write(record(index));
  await sink.close();
  return series(path);
}

async function expectBad(paths: string[], file: string, line: number, reason: RegExp) {
  const result = await verifyAuditSeries(paths, { keyring });
  assert.equal(result.ok, false, "the damage is detected");
  if (result.ok) return;
  assert.equal(result.file, file, `names ${file} (${result.reason})`);
  assert.equal(result.line, line, `names line ${line} (${result.reason})`);
  assert.match(result.reason, reason);
}

/** Every event record across the series, in order. */
async function upstreams(paths: string[]): Promise<unknown[]> {
  const all: unknown[] = [];
  for (const path of paths) {
    for (const line of await lines(path)) {
      if (line.record["type"] === "session.created") all.push(line.record["upstream"]);
    }
  }
  return all;
}

describe("audit rotation", () => {
  it("E2 rotation by size keeps every line, in order, and the files verify alone and as a series", async () => {
    const path = join(await folder(), "audit.jsonl");
    const files = await writeRotated(path, 60);
    assert.ok(files.length >= 4, `several files (${files.length})`);
    assert.deepEqual(
      await upstreams(files),
      Array.from({ length: 60 }, (_, index) => `u${index}`),
      "no record lost, none repeated, emission order kept across files",
    );
    for (const file of files) {
      assert.ok((await stat(file)).size <= SMALL, "no file passes maxFileBytes");
      assert.equal((await stat(file)).mode & 0o777, 0o600);
    }
    const whole = await verifyAuditSeries(files, { keyring });
    assert.ok(whole.ok, JSON.stringify(whole));
    assert.equal(whole.files, files.length);
    assert.equal(whole.checkedAgainst, "checkpoint");

    // One chain: seq runs on, each file's header names the file before it and its end.
    let seq = 0;
    for (const [index, file] of files.entries()) {
      const written = await lines(file);
      const header = written[0] as Line;
      assert.equal(header.seq, seq, "seq carries on from the previous file");
      seq += written.length;
      if (index === 0) continue;
      const before = await lines(files[index - 1] as string);
      const end = before.at(-1) as Line;
      assert.equal(end.record["type"], "audit.end");
      assert.deepEqual(end.record["next"], { file: "audit.jsonl", fileId: header.record["fileId"] });
      assert.deepEqual(header.record["continues"], {
        file: (files[index - 1] as string).slice(path.length - "audit.jsonl".length),
        seq: end.seq,
        mac: end.mac,
      });
      assert.equal(header.prev, end.mac);
    }
    // Alone: a rotated-out file is sealed by its end record; the current one by its checkpoint.
    for (const file of files.slice(0, -1)) {
      const alone = await verifyAuditFile(file, { keyring });
      assert.deepEqual(alone.ok && alone.checkedAgainst, "end-record", file);
    }
    const current = await verifyAuditFile(path, { keyring });
    assert.deepEqual(current.ok && current.checkedAgainst, "checkpoint");
    assert.match(
      (files[0] as string).slice(path.length),
      /^\.\d{8}T\d{6}\.\d{3}Z-\d+$/,
      "archived as <name>.<UTC time>-<seq>",
    );
  });

  it("E2 a flood of concurrent emits across rotations stays in emission order", async () => {
    const path = join(await folder(), "audit.jsonl");
    const sink = await createChainedFileSink({ path, keyring, maxFileBytes: 16 * 1024 });
    const events = createSecurityEvents({ tagger: createIdentifierTagger(), sinks: [sink] });
    const emitted: string[] = [];
    await Promise.all(
      Array.from({ length: 10 }, async (_, producer) => {
        for (let index = 0; index < 100; index += 1) {
          emitted.push(`p${producer}-${index}`);
          events.emit({ type: "session.created", upstream: `p${producer}-${index}` });
          if (index % 5 === 0) await new Promise((resolve) => setImmediate(resolve));
        }
      }),
    );
    await sink.close();
    assert.equal(events.sinkFailures(), 0);
    const files = await series(path);
    assert.ok(sink.stats().rotations >= 3 && sink.stats().rotations === files.length - 1);
    assert.ok((await verifyAuditSeries(files, { keyring })).ok);
    assert.deepEqual(await upstreams(files), emitted);
  });

  it("E2 a missing file in the middle is named at the next file's first line", async () => {
    const path = join(await folder(), "audit.jsonl");
    const files = await writeRotated(path, 60);
    const without = files.filter((_, index) => index !== 1);
    await expectBad(without, files[2] as string, 1, /does not continue .*a file between them is missing/);
  });

  it("E2 two files swapped are named where the order breaks", async () => {
    const path = join(await folder(), "audit.jsonl");
    const files = await writeRotated(path, 60);
    const swapped = [...files];
    [swapped[1], swapped[2]] = [files[2] as string, files[1] as string];
    await expectBad(swapped, files[2] as string, 1, /does not continue/);
    // The current file given before the archives: it has a successor in the list, so it needs an end.
    const last = (await lines(path)).length;
    await expectBad([path, ...files.slice(0, -1)], path, last + 1, /ends without its audit\.end record/);
  });

  it("E2 a truncated file in the middle is named one past its last line", async () => {
    const path = join(await folder(), "audit.jsonl");
    const files = await writeRotated(path, 60);
    const middle = files[1] as string;
    const kept = (await readFile(middle, "utf8")).split("\n").slice(0, -2);
    // The end record cut off (and the line before it: an appended-then-truncated tail).
    await writeFile(middle, `${kept.slice(0, -1).join("\n")}\n`);
    await expectBad(files, middle, kept.length, /ends without its audit\.end record/);
    // Alone, a clean prefix is all it can see: verify says so instead of claiming it sealed.
    const alone = await verifyAuditFile(middle, { keyring });
    assert.deepEqual(alone.ok && alone.checkedAgainst, "nothing");
  });

  it("E2 an edited end record, or a line after it, is named", async () => {
    const path = join(await folder(), "audit.jsonl");
    const files = await writeRotated(path, 60);
    const middle = files[1] as string;
    const text = await readFile(middle, "utf8");
    const count = text.split("\n").length - 1;
    await writeFile(middle, text.replace('"reason":"rotated"', '"reason":"rotatee"'));
    await expectBad(files, middle, count, /mac does not verify/);
    // A genuine line moved after the end record.
    const original = text.split("\n").slice(0, -1);
    await writeFile(middle, `${[...original, original[1]].join("\n")}\n`);
    await expectBad(files, middle, count + 1, /follows the file's audit\.end record/);
    // A sealed end record of another file (same key) in its place.
    await writeFile(middle, text);
    const other = await writeRotated(join(await folder(), "audit.jsonl"), 60);
    const otherEnd = (await readFile(other[0] as string, "utf8")).split("\n").at(-2) as string;
    await writeFile(middle, `${[...original.slice(0, -1), otherEnd].join("\n")}\n`);
    await expectBad(files, middle, count, /sequence|does not chain/);
  });

  it("E2 a new chain passed off as the successor is named", async () => {
    const path = join(await folder(), "audit.jsonl");
    const files = await writeRotated(path, 60);
    const fresh = join(await folder(), "audit.jsonl");
    const sink = await createChainedFileSink({ path: fresh, keyring });
    sink.write(record(1));
    await sink.close();
    await expectBad([files[0] as string, fresh], fresh, 1, /starts a new chain, so it does not continue/);
  });

  it("tenantgate audit verify takes a series and names the file and line", async () => {
    const dir = await folder();
    await writeFile(join(dir, "master.key"), `${masterKey.toString("base64url")}\n`, { mode: 0o600 });
    const configPath = join(dir, "gateway.json");
    await writeFile(
      configPath,
      JSON.stringify({
        secrets: { masterKey: "file:master.key" },
        auth: { anonymous: true },
        upstreams: [{ name: "demo", path: "/mcp", url: "http://127.0.0.1:9000/mcp" }],
      }),
    );
    const files = await writeRotated(join(dir, "audit.jsonl"), 40);
    const tenantgate = (...args: string[]) =>
      run(process.execPath, [cli, "audit", "verify", ...args, "--config", configPath]);
    const good = await tenantgate(...files);
    assert.match(good.stdout, new RegExp(`^ok: ${files.length} files, \\d+ lines, head \\d+:`));
    assert.equal(good.stderr, "", "checked against the checkpoint, under the active key: no warning");
    await assert.rejects(
      tenantgate(files[0] as string, ...files.slice(2)),
      (error: { code?: number; stdout?: string }) => {
        assert.equal(error.code, 1);
        assert.equal(
          error.stdout?.startsWith(`not ok: ${files[2]}: line 1: does not continue ${files[0]}`),
          true,
          error.stdout,
        );
        return true;
      },
    );
    // An archive alone is sealed by its end record: not truncated, but what continues it was not
    // checked, and verify says so.
    const archived = await tenantgate(files[0] as string);
    assert.match(archived.stderr, /ends with its audit\.end record/);
  });

  it("E2 the newest archive renamed back over the deleted current file (and its checkpoint) does not pass as the whole trail", async () => {
    const dir = await folder();
    await writeFile(join(dir, "master.key"), `${masterKey.toString("base64url")}\n`, { mode: 0o600 });
    const configPath = join(dir, "gateway.json");
    await writeFile(
      configPath,
      JSON.stringify({
        secrets: { masterKey: "file:master.key" },
        auth: { anonymous: true },
        upstreams: [{ name: "demo", path: "/mcp", url: "http://127.0.0.1:9000/mcp" }],
      }),
    );
    const path = join(dir, "audit.jsonl");
    const files = await writeRotated(path, 40);
    assert.ok(files.length >= 3);
    // Everything written since the last rotation goes: the current file and its checkpoint are
    // deleted, and the newest archive takes the current file's name.
    await rm(path);
    await rm(`${path}${CHECKPOINT_SUFFIX}`);
    await rename(files.at(-2) as string, path);
    const listed = await series(path);
    const result = await verifyAuditSeries(listed, { keyring });
    assert.ok(result.ok, "every file that is left is intact");
    assert.equal(result.sealed, true, "but the last file is sealed: its successor is missing");
    const verified = await run(process.execPath, [cli, "audit", "verify", ...listed, "--config", configPath]);
    assert.match(
      verified.stderr,
      /warning: .*audit\.jsonl ends with its audit\.end record/,
      "the operator is told that what continued it was not checked",
    );
  });
});

describe("audit rotation: a crash between steps", () => {
  /**
   * A trail rotated exactly once, closed; then put back into the state a crash at some step leaves.
   * Returns the archive, its end line and the current file's lines.
   */
  async function rotatedOnce() {
    const path = join(await folder(), "audit.jsonl");
    const files = await writeRotated(path, 12, { maxFileBytes: 3000 });
    assert.equal(files.length, 2, "one rotation");
    const archive = files[0] as string;
    const end = (await lines(archive)).at(-1) as Line;
    return { path, archive, archiveName: archive.slice(path.length - "audit.jsonl".length), end };
  }

  const checkpointAt = (path: string, end: Line, archive?: string) =>
    writeFile(
      `${path}${CHECKPOINT_SUFFIX}`,
      `${JSON.stringify(archive === undefined ? { seq: end.seq, mac: end.mac } : { seq: end.seq, mac: end.mac, archive })}\n`,
    );

  async function restartAndVerify(path: string, expectedArchive: string) {
    const sink = await createChainedFileSink({ path, keyring, maxFileBytes: 3000 });
    sink.write(record(99));
    await sink.close();
    const files = await series(path);
    assert.deepEqual(
      files.map((file) => file.slice(path.length - "audit.jsonl".length)),
      [expectedArchive, "audit.jsonl"],
    );
    const result = await verifyAuditSeries(files, { keyring });
    assert.ok(result.ok, JSON.stringify(result));
    const header = (await lines(path))[0] as Line;
    assert.equal((header.record["continues"] as { file: string }).file, expectedArchive);
    return header;
  }

  it("E2 end written, file not yet moved (checkpoint behind or at the end): the start finishes the rotation", async () => {
    for (const withCheckpointAtEnd of [false, true]) {
      const { path, archive, archiveName, end } = await rotatedOnce();
      await rm(path);
      await rename(archive, path);
      if (withCheckpointAtEnd) {
        // The name was reserved and checkpointed, the move had not happened.
        await writeFile(archive, "");
        await checkpointAt(path, end, archiveName);
      } else {
        const before = (await lines(path)).at(-2) as Line;
        await checkpointAt(path, before);
      }
      const header = await restartAndVerify(path, archiveName);
      assert.equal(header.record["resumed"], "unclean");
      assert.equal(header.seq, end.seq + 1);
    }
  });

  it("E2 file moved, successor missing, empty, or with an unchecked header: the start carries on", async () => {
    for (const state of ["missing", "empty", "torn header", "header"] as const) {
      const { path, archiveName, end } = await rotatedOnce();
      const current = await readFile(path, "utf8");
      const headerLine = current.slice(0, current.indexOf("\n") + 1);
      if (state === "missing") await rm(path);
      if (state === "empty") await writeFile(path, "");
      if (state === "torn header") await writeFile(path, headerLine.slice(0, 40));
      if (state === "header") await writeFile(path, headerLine);
      await checkpointAt(path, end, archiveName);
      const header = await restartAndVerify(path, archiveName);
      assert.equal(header.seq, end.seq + 1, state);
      assert.equal(header.prev, end.mac, state);
    }
  });

  it("E2 an empty file whose checkpoint names an archive that does not end there is refused", async () => {
    const { path, archive, archiveName, end } = await rotatedOnce();
    await writeFile(path, "");
    await checkpointAt(path, end, archiveName);
    const text = await readFile(archive, "utf8");
    await writeFile(archive, text.slice(0, text.slice(0, -1).lastIndexOf("\n") + 1));
    await assert.rejects(createChainedFileSink({ path, keyring }), (error) => {
      assert.ok(isGateError(error, "ERR_CONFIG_INVALID"));
      assert.match(error.message, /checkpoint names the end of/);
      return true;
    });
  });
});

describe("audit file hardening", () => {
  it("E2 a second live writer is refused naming the file; the lock goes with close", async () => {
    const path = join(await folder(), "audit.jsonl");
    const first = await createChainedFileSink({ path, keyring });
    const lock = JSON.parse(await readFile(`${path}${LOCK_SUFFIX}`, "utf8"));
    assert.equal(lock.pid, process.pid);
    assert.equal(lock.host, hostname());
    assert.match(lock.token, /^[A-Za-z0-9_-]{22}$/);
    assert.equal((await stat(`${path}${LOCK_SUFFIX}`)).mode & 0o777, 0o600);
    await assert.rejects(createChainedFileSink({ path, keyring }), (error) => {
      assert.ok(isGateError(error, "ERR_CONFIG_INVALID"));
      assert.ok(error.message.includes(path));
      assert.match(error.message, new RegExp(`already being written by process ${process.pid}`));
      return true;
    });
    await first.close();
    await assert.rejects(stat(`${path}${LOCK_SUFFIX}`), { code: "ENOENT" });
    const second = await createChainedFileSink({ path, keyring });
    await second.close();
    assert.ok((await verifyAuditFile(path, { keyring })).ok);
  });

  it("E2 a lock left by a dead process is taken over; one from another host or a symlink is refused", async () => {
    const path = join(await folder(), "audit.jsonl");
    const dead = spawnSync(process.execPath, ["-e", ""]).pid as number;
    await writeFile(`${path}${LOCK_SUFFIX}`, JSON.stringify({ pid: dead, host: hostname(), token: "old" }));
    const sink = await createChainedFileSink({ path, keyring });
    assert.notEqual(JSON.parse(await readFile(`${path}${LOCK_SUFFIX}`, "utf8")).token, "old");
    await sink.close();

    await writeFile(
      `${path}${LOCK_SUFFIX}`,
      JSON.stringify({ pid: dead, host: `not-${hostname()}`, token: "elsewhere" }),
    );
    await assert.rejects(createChainedFileSink({ path, keyring }), /writer on another host/);
    await rm(`${path}${LOCK_SUFFIX}`);
    const target = join(await folder(), "elsewhere.lock");
    await writeFile(target, JSON.stringify({ pid: dead, host: hostname(), token: "t" }));
    await symlink(target, `${path}${LOCK_SUFFIX}`);
    await assert.rejects(createChainedFileSink({ path, keyring }), /symbolic link/);
    await rm(`${path}${LOCK_SUFFIX}`);
    await writeFile(`${path}${LOCK_SUFFIX}`, "garbage");
    await assert.rejects(createChainedFileSink({ path, keyring }), /is not a tenantgate lock/);
  });

  it("E2 a symlinked checkpoint is refused by verify and by the sink", async () => {
    const path = join(await folder(), "audit.jsonl");
    const sink = await createChainedFileSink({ path, keyring });
    sink.write(record(1));
    await sink.close();
    const elsewhere = join(await folder(), "planted.head");
    await rename(`${path}${CHECKPOINT_SUFFIX}`, elsewhere);
    await symlink(elsewhere, `${path}${CHECKPOINT_SUFFIX}`);
    const result = await verifyAuditFile(path, { keyring });
    assert.deepEqual(result.ok === false && [result.line, result.reason], [
      0,
      `checkpoint ${path}${CHECKPOINT_SUFFIX} is a symbolic link: refused`,
    ]);
    await assert.rejects(createChainedFileSink({ path, keyring }), /symbolic link/);
  });

  it("E2 checkpoint temporaries have unique names: a planted one is not written through, none is left", async () => {
    const dir = await folder();
    const path = join(dir, "audit.jsonl");
    const victim = join(await folder(), "victim");
    await writeFile(victim, "untouched");
    // The old fixed name, planted as a symlink to a file the attacker wants overwritten.
    await symlink(victim, `${path}${CHECKPOINT_SUFFIX}.tmp`);
    const sink = await createChainedFileSink({ path, keyring });
    sink.write(record(1));
    await sink.close();
    assert.equal(await readFile(victim, "utf8"), "untouched");
    assert.deepEqual(
      (await readdir(dir)).sort(),
      ["audit.jsonl", "audit.jsonl.head", "audit.jsonl.head.tmp"],
      "no temporary of the sink's own is left behind",
    );

    // A checkpoint that cannot be replaced (a directory in its place): the temporary is removed.
    const failing = join(await folder(), "audit.jsonl");
    const errors: unknown[] = [];
    const second = await createChainedFileSink({
      path: failing,
      keyring,
      checkpoint: true,
      onError: (error) => errors.push(error),
    });
    await rm(`${failing}${CHECKPOINT_SUFFIX}`);
    await mkdir(`${failing}${CHECKPOINT_SUFFIX}`);
    await writeFile(join(`${failing}${CHECKPOINT_SUFFIX}`, "keep"), "");
    second.write(record(2));
    await second.flush();
    assert.ok(errors.length > 0, "the failed checkpoint is reported");
    assert.deepEqual(
      (await readdir(join(failing, ".."))).filter((name) => name.endsWith(".tmp")),
      [],
    );
    await second.close();
  });

  it("E2 an existing audit file open to group or others is tightened to 0600, and the header says so", async () => {
    const path = join(await folder(), "audit.jsonl");
    const first = await createChainedFileSink({ path, keyring });
    await first.close();
    await chmod(path, 0o664);
    const sink = await createChainedFileSink({ path, keyring });
    await sink.close();
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    const header = (await lines(path)).find(
      (line, index) => index > 0 && line.record["type"] === "audit.start",
    );
    assert.equal(header?.record["modeTightened"], "0664");
    assert.ok((await verifyAuditFile(path, { keyring })).ok);
  });

  it("E2 a retired key cannot append a segment after a newer key took over", async () => {
    const path = join(await folder(), "audit.jsonl");
    const k2Key = randomBytes(32);
    const old = Keyring.fromKeys([{ id: "k1", key: masterKey }], "k1");
    const both = Keyring.fromKeys(
      [
        { id: "k1", key: masterKey },
        { id: "k2", key: k2Key },
      ],
      "k2",
    );
    for (const ring of [old, both]) {
      const sink = await createChainedFileSink({ path, keyring: ring });
      sink.write(record(1));
      await sink.close();
    }
    const good = await verifyAuditFile(path, { keyring: both });
    assert.deepEqual(good.ok && good.lastKeyId, "k2");
    const before = (await lines(path)).length;
    // A segment under k1 after the k2 one: what whoever kept k1 could append by hand (the sink is
    // used here to write it, with k2 loaded only so it agrees to continue; k1 is the active key).
    const backwards = Keyring.fromKeys(
      [
        { id: "k1", key: masterKey },
        { id: "k2", key: k2Key },
      ],
      "k1",
    );
    const sink = await createChainedFileSink({ path, keyring: backwards });
    sink.write(record(66));
    await sink.close();
    const result = await verifyAuditFile(path, { keyring: both });
    assert.deepEqual(result.ok === false && [result.line, result.reason.slice(0, 30)], [
      before + 1,
      "returns to key id k1, which an",
    ]);
  });

  it("a truncated tail of the current file is still named after rotations", async () => {
    const path = join(await folder(), "audit.jsonl");
    const files = await writeRotated(path, 40);
    const size = (await stat(path)).size;
    const text = await readFile(path, "utf8");
    await truncate(path, text.slice(0, -1).lastIndexOf("\n") + 1);
    assert.ok((await stat(path)).size < size);
    const count = (await lines(path)).length;
    await expectBad(files, path, count + 1, /truncated/);
  });
});
