import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { appendFile, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import {
  CHECKPOINT_SUFFIX,
  type ChainedFileSinkOptions,
  createChainedFileSink,
  formatHead,
  parseHead,
  verifyAuditFile,
} from "../../src/audit/audit-chain.ts";
import { createSecurityEvents, type SecurityEventRecord } from "../../src/audit/security-events.ts";
import { parseConfig } from "../../src/config/load-config.ts";
import { createIdentifierTagger } from "../../src/crypto/identifier-tag.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { isGateError } from "../../src/errors.ts";
import { startGateway } from "../../src/gateway/start-gateway.ts";
import { childEnvironment } from "../support/processes.ts";
import { withTestProfile } from "../support/test-profile.ts";

const execFileAsync = promisify(execFile);
/** The CLI, with the runner's environment minus `TENANTGATE_` variables (it reads them as settings). */
const run = (file: string, args: readonly string[]) => execFileAsync(file, args, { env: childEnvironment() });
const cli = fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url));
const root = await mkdtemp(join(tmpdir(), "tenantgate-audit-chain-"));
after(() => rm(root, { recursive: true, force: true }));

const folder = (): Promise<string> => mkdtemp(join(root, "case-"));

const masterKey = randomBytes(32);
// "default": the key id a single `secrets.masterKey` gets, so the CLI test's config finds it.
const keyring = Keyring.fromKeys([{ id: "default", key: masterKey }], "default");

const record = (index: number): SecurityEventRecord => ({
  time: new Date(Date.UTC(2026, 0, 1, 0, 0, index)).toISOString(),
  type: "session.created",
  upstream: `u${index}`,
});

/** A trail of a header, `count` records and audit.stop, written and closed; its lines. */
async function writeTrail(
  path: string,
  count: number,
  options: Partial<ChainedFileSinkOptions> = {},
): Promise<string[]> {
  const sink = await createChainedFileSink({ path, keyring, ...options });
  for (let index = 0; index < count; index += 1) sink.write(record(index));
  await sink.close();
  return lines(path);
}

async function lines(path: string): Promise<string[]> {
  const text = await readFile(path, "utf8");
  assert.ok(text.endsWith("\n"));
  return text.slice(0, -1).split("\n");
}

const writeLines = (path: string, list: readonly string[]) => writeFile(path, `${list.join("\n")}\n`);

const parsed = (line: string) =>
  JSON.parse(line) as { seq: number; prev: string; record: Record<string, unknown>; mac: string };

async function expectBad(
  path: string,
  line: number,
  reason: RegExp,
  options: { expectHead?: string; keyring?: Keyring } = {},
) {
  const result = await verifyAuditFile(path, { keyring: options.keyring ?? keyring, ...options });
  assert.equal(result.ok, false, "the tampering is detected");
  if (result.ok) return;
  assert.equal(result.line, line, `names line ${line} (${result.reason})`);
  assert.match(result.reason, reason);
}

describe("audit chain: the format", () => {
  it("E2 an untouched file verifies against its checkpoint; file and checkpoint are 0600", async () => {
    const path = join(await folder(), "audit.jsonl");
    const written = await writeTrail(path, 5);
    assert.equal(written.length, 7, "a header, five records, audit.stop");
    const result = await verifyAuditFile(path, { keyring });
    const last = parsed(written.at(-1) as string);
    assert.deepEqual(result, {
      ok: true,
      files: 1,
      lines: 7,
      head: formatHead({ seq: 6, mac: last.mac }),
      checkedAgainst: "checkpoint",
      lastKeyId: "default",
      sealed: false,
    });
    assert.deepEqual(parseHead(result.ok ? result.head : ""), { seq: 6, mac: last.mac });
    assert.deepEqual(JSON.parse(await readFile(`${path}${CHECKPOINT_SUFFIX}`, "utf8")), {
      seq: 6,
      mac: last.mac,
    });
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.equal((await stat(`${path}${CHECKPOINT_SUFFIX}`)).mode & 0o777, 0o600);

    const header = parsed(written[0] as string);
    assert.equal(header.seq, 0);
    assert.deepEqual(Object.keys(header), ["seq", "prev", "record", "mac"]);
    assert.equal(header.record["type"], "audit.start");
    assert.equal(header.record["keyId"], "default");
    assert.match(String(header.record["fileId"]), /^[A-Za-z0-9_-]{22}$/);
    for (const [index, line] of written.entries()) {
      const { seq, prev } = parsed(line);
      assert.equal(seq, index);
      if (index > 0) assert.equal(prev, parsed(written[index - 1] as string).mac);
    }
    assert.deepEqual(parsed(written[3] as string).record, record(2), "the record is written as given");
    assert.deepEqual(parsed(written[6] as string).record["type"], "audit.stop");
  });

  it("E2 an edited line is detected and named", async () => {
    const path = join(await folder(), "audit.jsonl");
    const written = await writeTrail(path, 5);
    // Line 4 holds record 2; the edit keeps the layout and the JSON valid.
    await writeLines(path, written.with(3, (written[3] as string).replace('"u2"', '"u7"')));
    await expectBad(path, 4, /mac does not verify/);
    // The header too (its key id picks the key).
    await writeLines(path, written.with(0, (written[0] as string).replace(/"time":"[^"]+"/, '"time":"x"')));
    await expectBad(path, 1, /mac does not verify/);
    // A line that is no longer in the layout, and a stray carriage return.
    await writeLines(path, written.with(2, " "));
    await expectBad(path, 3, /not an audit chain line/);
    await writeLines(path, written.with(5, `${written[5]}\r`));
    await expectBad(path, 6, /not an audit chain line/);
    // A genuine line of another trail under the same key, in the same position: its mac and seq
    // hold, its link does not.
    const other = await writeTrail(join(await folder(), "other.jsonl"), 5);
    await writeLines(path, written.with(3, other[3] as string));
    await expectBad(path, 4, /does not chain to the line before it/);
  });

  it("E2 a deleted line is detected and named", async () => {
    const path = join(await folder(), "audit.jsonl");
    const written = await writeTrail(path, 5);
    await writeLines(
      path,
      written.filter((_, index) => index !== 3),
    );
    await expectBad(path, 4, /sequence 4 where 3 was expected/);
    await writeLines(path, written.slice(1));
    await expectBad(path, 1, /does not start with an audit\.start header/);
  });

  it("E2 reordered lines are detected and named", async () => {
    const path = join(await folder(), "audit.jsonl");
    const written = await writeTrail(path, 5);
    const swapped = [...written];
    [swapped[3], swapped[4]] = [written[4] as string, written[3] as string];
    await writeLines(path, swapped);
    await expectBad(path, 4, /sequence 4 where 3 was expected \(a line deleted, inserted or moved\)/);
  });

  it("E2 an appended line is detected and named: forged, or replayed from the file itself", async () => {
    const path = join(await folder(), "audit.jsonl");
    const written = await writeTrail(path, 5);
    const last = parsed(written.at(-1) as string);
    // Everything right but the key: layout, seq, prev; the mac under a key the forger made up.
    const forgedRecord = JSON.stringify(record(99));
    const mac = createHmac("sha256", randomBytes(32))
      .update(`tenantgate/audit-chain/v1\n${last.seq + 1}\n${last.mac}\n`)
      .update(forgedRecord)
      .digest("base64url");
    const forged = `{"seq":${last.seq + 1},"prev":"${last.mac}","record":${forgedRecord},"mac":"${mac}"}`;
    await writeLines(path, [...written, forged]);
    await expectBad(path, 8, /mac does not verify/);
    await writeLines(path, [...written, written[2] as string]);
    await expectBad(path, 8, /sequence 2 where 7 was expected/);
    // Half a line (no newline): not a line.
    await writeFile(path, `${written.join("\n")}\n{"seq":7,"pr`);
    await expectBad(path, 8, /incomplete last line/);
  });

  it("E2 a mac re-encoded in another base64url spelling of the same bytes is an edit", async () => {
    const path = join(await folder(), "audit.jsonl");
    const written = await writeTrail(path, 2);
    const last = written.at(-1) as string;
    const mac = parsed(last).mac;
    // 43 characters carry 258 bits: the last one's low two bits are not part of the 32 bytes.
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const respelt = `${mac.slice(0, -1)}${alphabet[alphabet.indexOf(mac.at(-1) as string) ^ 1]}`;
    assert.deepEqual(Buffer.from(respelt, "base64url"), Buffer.from(mac, "base64url"));
    await writeLines(path, written.with(-1, last.replace(`"mac":"${mac}"`, `"mac":"${respelt}"`)));
    await expectBad(path, written.length, /mac does not verify/);
    await expectBad(path, written.length, /mac does not verify/, {
      expectHead: `${written.length - 1}:${mac}`,
    });
  });

  it("E2 truncation is detected against the checkpoint, and names the first missing line", async () => {
    const path = join(await folder(), "audit.jsonl");
    const written = await writeTrail(path, 5);
    await writeLines(path, written.slice(0, 5));
    await expectBad(path, 6, /truncated: the file ends at sequence 4, the expected head is 6/);
    await writeFile(path, "");
    await expectBad(path, 1, /empty file/);
  });

  it("E2 truncation is detected against --expect-head when the checkpoint is gone too", async () => {
    const path = join(await folder(), "audit.jsonl");
    const written = await writeTrail(path, 5);
    const good = await verifyAuditFile(path, { keyring });
    assert.ok(good.ok);
    await rm(`${path}${CHECKPOINT_SUFFIX}`);
    await writeLines(path, written.slice(0, 4));
    const unchecked = await verifyAuditFile(path, { keyring });
    assert.equal(
      unchecked.ok && unchecked.checkedAgainst,
      "nothing",
      "alone, a clean prefix is all it can see",
    );
    await expectBad(path, 5, /truncated/, { expectHead: good.head });

    // The head also pins the content: a whole other trail under the same key does not match it.
    const other = join(await folder(), "other.jsonl");
    await writeTrail(other, 5);
    await expectBad(other, 7, /does not match the expected head/, { expectHead: good.head });
    // An expected head the caller got wrong is an argument error, not a verdict.
    await assert.rejects(verifyAuditFile(path, { keyring, expectHead: "6:short" }), (error: unknown) =>
      isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
  });

  it("E2 a different key fails verification at the first line", async () => {
    const path = join(await folder(), "audit.jsonl");
    await writeTrail(path, 3);
    const sameIdOtherKey = Keyring.fromKeys([{ id: "default", key: randomBytes(32) }], "default");
    await expectBad(path, 1, /mac does not verify/, { keyring: sameIdOtherKey });
    const otherId = Keyring.fromKeys([{ id: "k2", key: masterKey }], "k2");
    await expectBad(path, 1, /key id default, which is not loaded/, { keyring: otherId });
  });
});

describe("audit chain: the sink", () => {
  it("E2 a flood of concurrent emits is written serialised, in emission order, and verifies", async () => {
    const path = join(await folder(), "audit.jsonl");
    const sink = await createChainedFileSink({ path, keyring });
    const events = createSecurityEvents({ tagger: createIdentifierTagger(), sinks: [sink] });
    const emitted: string[] = [];
    // 25 producers, each yielding to the others (and to the writer) every few events.
    await Promise.all(
      Array.from({ length: 25 }, async (_, producer) => {
        for (let index = 0; index < 200; index += 1) {
          const upstream = `p${producer}-${index}`;
          emitted.push(upstream);
          events.emit({
            type: "request.refused",
            reason: "rate-limited",
            upstream,
            clientAddress: "192.0.2.1",
          });
          if (index % 7 === 0) await new Promise((resolve) => setImmediate(resolve));
        }
      }),
    );
    await sink.close();
    assert.equal(events.sinkFailures(), 0);
    const result = await verifyAuditFile(path, { keyring });
    assert.ok(result.ok, JSON.stringify(result));
    assert.equal(result.lines, 5000 + 2);
    const written = (await lines(path)).map(parsed);
    assert.deepEqual(
      written.slice(1, -1).map((line) => line.record["upstream"]),
      emitted,
      "one line per event, in the order emitted",
    );
    assert.deepEqual(sink.stats(), { written: 5002, dropped: 0, errors: 0, rotations: 0 });
    assert.throws(
      () => sink.write(record(1)),
      (error) => isGateError(error, "ERR_SHUTTING_DOWN"),
    );
  });

  it("E2 a record cannot pose as the chain's own header", async () => {
    const path = join(await folder(), "audit.jsonl");
    const sink = await createChainedFileSink({ path, keyring });
    const posing = { ...record(0), type: "audit.start", keyId: "default" } as unknown as SecurityEventRecord;
    assert.throws(
      () => sink.write(posing),
      (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
    await sink.close();
    assert.ok((await verifyAuditFile(path, { keyring })).ok);
  });

  it("E2 overflow is never silent: refused events are counted into one audit.dropped line", async () => {
    const path = join(await folder(), "audit.jsonl");
    const sink = await createChainedFileSink({ path, keyring, maxQueue: 50 });
    const events = createSecurityEvents({ tagger: createIdentifierTagger(), sinks: [sink] });
    // Synchronous: the writer cannot take anything from the queue until the loop ends.
    for (let index = 0; index < 2000; index += 1) {
      events.emit({ type: "session.created", upstream: `e${index}` });
    }
    await sink.flush();
    const dropped = sink.stats().dropped;
    assert.ok(dropped > 1900, `most of the flood is refused (${dropped})`);
    assert.equal(events.sinkFailures(), dropped, "each refusal is a failed delivery for the metrics");
    // Room again: later events follow the audit.dropped line.
    events.emit({ type: "session.created", upstream: "after" });
    await sink.close();

    assert.ok((await verifyAuditFile(path, { keyring })).ok);
    const written = (await lines(path)).map(parsed);
    const kept = written.filter((line) => line.record["type"] === "session.created");
    const droppedLines = written.filter((line) => line.record["type"] === "audit.dropped");
    assert.equal(droppedLines.length, 1);
    assert.equal(droppedLines[0]?.record["count"], dropped, "the count is exactly what was refused");
    assert.equal(kept.length + dropped, 2001, "every event is either written or counted");
    const upstreams = kept.map((line) => line.record["upstream"]);
    assert.deepEqual(
      upstreams.slice(0, -1),
      Array.from({ length: kept.length - 1 }, (_, index) => `e${index}`),
      "the first events are kept, in order",
    );
    const droppedAt = written.indexOf(droppedLines[0] as (typeof written)[number]);
    assert.equal(written[droppedAt + 1]?.record["upstream"], "after");
    assert.deepEqual(written.at(-1)?.record, {
      time: written.at(-1)?.record["time"],
      type: "audit.stop",
      dropped,
    });
  });

  it("E2 a restart continues the chain as a new segment; rotation keeps old lines verifiable", async () => {
    const path = join(await folder(), "audit.jsonl");
    await writeTrail(path, 2);
    // A crash mid-write leaves half a line: cut off on the next start, and recorded.
    await appendFile(path, '{"seq":4,"prev":"abc');
    const next = Keyring.fromKeys(
      [
        { id: "default", key: masterKey },
        { id: "k2", key: randomBytes(32) },
      ],
      "k2",
    );
    const sink = await createChainedFileSink({ path, keyring: next });
    sink.write(record(7));
    await sink.close();

    const written = (await lines(path)).map(parsed);
    assert.equal(written.length, 4 + 3);
    const header = written[4];
    assert.equal(header?.seq, 4);
    assert.equal(header?.prev, written[3]?.mac, "the new segment chains to the old last line");
    assert.equal(header?.record["type"], "audit.start");
    assert.equal(header?.record["keyId"], "k2");
    assert.equal(header?.record["resumed"], "clean");
    assert.equal(header?.record["tornBytes"], 20);
    assert.notEqual(header?.record["fileId"], written[0]?.record["fileId"]);
    assert.ok((await verifyAuditFile(path, { keyring: next })).ok);
    const newKeyOnly = Keyring.fromKeys([{ id: "k2", key: randomBytes(32) }], "k2");
    await expectBad(path, 1, /not loaded/, { keyring: newKeyOnly });
  });

  it("E2 a truncated or edited file is refused, not chained over (its evidence stays)", async () => {
    const path = join(await folder(), "audit.jsonl");
    const written = await writeTrail(path, 4);
    await writeLines(path, written.slice(0, 4));
    const refused = (error: unknown, pattern: RegExp) => {
      assert.ok(isGateError(error, "ERR_CONFIG_INVALID"), String(error));
      assert.match(error.message, pattern);
      return true;
    };
    await assert.rejects(createChainedFileSink({ path, keyring }), (error) => refused(error, /truncated/));
    assert.deepEqual(await lines(path), written.slice(0, 4), "nothing was appended");
    await expectBad(path, 5, /truncated/);

    await writeLines(path, written.with(-1, (written.at(-1) as string).replace("audit.stop", "audit.stoq")));
    await assert.rejects(createChainedFileSink({ path, keyring }), (error) =>
      refused(error, /does not verify under any loaded key/),
    );
    // Without a checkpoint a clean prefix cannot be told from a whole file; with one it can.
    await writeLines(path, written);
    await writeFile(
      `${path}${CHECKPOINT_SUFFIX}`,
      '{"seq":5,"mac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}\n',
    );
    await assert.rejects(createChainedFileSink({ path, keyring }), (error) =>
      refused(error, /does not match its checkpoint/),
    );
  });

  it("E2 a stripped final newline cannot make a restart cut a real last line as torn", async () => {
    const path = join(await folder(), "audit.jsonl");
    const written = await writeTrail(path, 2);
    const whole = `${written.join("\n")}\n`;
    // The last line is whole and verifies; only its newline is gone. That is no crash mid-write.
    await writeFile(path, whole.slice(0, -1));
    await assert.rejects(createChainedFileSink({ path, keyring }), (error) =>
      isGateError(error, "ERR_CONFIG_INVALID"),
    );
    assert.equal(await readFile(path, "utf8"), whole.slice(0, -1), "a refused start cuts nothing");
    // Without the checkpoint (deleted, or behind the file) the line must not be cut silently either.
    await rm(`${path}${CHECKPOINT_SUFFIX}`);
    await assert.rejects(createChainedFileSink({ path, keyring }), (error) =>
      isGateError(error, "ERR_CONFIG_INVALID"),
    );
    assert.equal(await readFile(path, "utf8"), whole.slice(0, -1));
    await expectBad(path, written.length, /incomplete last line/);
  });

  it("E2 the gateway writes audit.file as the chained trail and ends it with audit.stop", async () => {
    const dir = await folder();
    const path = join(dir, "gateway-audit.jsonl");
    const config = parseConfig(
      withTestProfile({
        listen: { host: "127.0.0.1", port: 0 },
        store: "memory:",
        secrets: { masterKey: "env:TG_AUDIT_TEST_KEY" },
        auth: { anonymous: true },
        upstreams: [
          { name: "demo", path: "/mcp", url: "http://127.0.0.1:9/mcp", protocolVersions: ["2025-11-25"] },
        ],
        audit: { stdout: false, file: path },
        admin: { listen: { port: 0 } },
      }),
      { env: {} },
    );
    const gateway = await startGateway(config, {
      env: { TG_AUDIT_TEST_KEY: masterKey.toString("base64url") },
      // Discarded, unless the config names a log file (the bench profile does).
      ...(config.log.file === undefined ? { log: () => undefined } : {}),
    });
    try {
      const response = await fetch(`${gateway.url}/mcp`, {
        method: "POST",
        headers: { "content-type": "application/json", origin: "https://evil.example" },
        body: "{}",
      });
      await response.arrayBuffer();
      assert.equal(response.status, 403);
    } finally {
      await gateway.close({ graceMs: 0 });
    }
    const result = await verifyAuditFile(path, { keyring });
    assert.ok(result.ok, JSON.stringify(result));
    const records = (await lines(path)).map((line) => parsed(line).record);
    assert.deepEqual(
      records.map((record) => record["type"]),
      ["audit.start", "gateway.started", "request.refused", "gateway.stopped", "audit.stop"],
    );
    // Start and stop name the configuration the replica ran with.
    const digests = records
      .filter((r) => String(r["type"]).startsWith("gateway."))
      .map((r) => r["configDigest"]);
    assert.match(String(digests[0]), /^[0-9a-f]{64}$/);
    assert.equal(digests[0], digests[1]);
  });
});

describe("tenantgate audit verify", () => {
  it("E2 exits 0 on a good file and 1 naming the first bad line of a tampered or truncated one", async () => {
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
    const written = await writeTrail(path, 5);
    const tenantgate = (...args: string[]) =>
      run(process.execPath, [cli, "audit", "verify", path, "--config", configPath, ...args]);
    const failure = async (args: string[], pattern: RegExp) => {
      await assert.rejects(tenantgate(...args), (error: { code?: number; stdout?: string }) => {
        assert.equal(error.code, 1);
        assert.match(error.stdout ?? "", pattern);
        return true;
      });
    };

    const good = await verifyAuditFile(path, { keyring });
    assert.ok(good.ok);
    const { stdout } = await tenantgate();
    assert.equal(stdout, `ok: 7 lines, head ${good.head}\n`);

    await writeLines(path, written.with(2, (written[2] as string).replace('"u1"', '"u6"')));
    await failure([], /^not ok: .*audit\.jsonl: line 3: mac does not verify/);

    await writeLines(path, written.slice(0, 5));
    await rm(`${path}${CHECKPOINT_SUFFIX}`);
    const unchecked = await tenantgate();
    assert.match(
      unchecked.stderr,
      /^tenantgate: warning: .*audit\.jsonl has no checkpoint .* truncation was not checked$/m,
    );
    await failure(["--expect-head", good.head], /^not ok: .*audit\.jsonl: line 6: truncated/);
  });
});
