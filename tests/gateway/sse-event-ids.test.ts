import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import fc from "fast-check";
import { isGateError } from "../../src/errors.ts";
import {
  createEventIdCodec,
  type EventIdCodec,
  MAX_GATEWAY_EVENT_ID_LENGTH,
  MAX_HELD_LINE_BYTES,
  MAX_UPSTREAM_EVENT_ID_BYTES,
  rewriteSseEventIds,
} from "../../src/gateway/sse-event-ids.ts";
import { fastCheckParameters } from "../support/fast-check.ts";

const KEY = Buffer.alloc(32, 7);
const SESSION_A = "digest-of-session-a";
const SESSION_B = "digest-of-session-b";
const codecA = createEventIdCodec(KEY, SESSION_A);
const codecB = createEventIdCodec(KEY, SESSION_B);

describe("event id codec", () => {
  it("round-trips upstream ids, and its output is visible ASCII", () => {
    for (const id of ["1", "stream-1_1732200000000_abc", "é€😀", " spaced ", "x".repeat(512)]) {
      const wrapped = codecA.wrap(id);
      assert.match(wrapped, /^[\x21-\x7e]+$/);
      assert.ok(wrapped.length <= MAX_GATEWAY_EVENT_ID_LENGTH);
      assert.equal(codecA.unwrap(wrapped), id);
    }
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", minLength: 1, maxLength: 60 }), (id) => {
        const wrapped = codecA.wrap(id);
        assert.match(wrapped, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}$/);
        assert.equal(codecA.unwrap(wrapped), id);
        assert.equal(codecB.unwrap(wrapped), null);
      }),
      fastCheckParameters(500),
    );
  });

  it("gives another session's id, or another key's, nothing", () => {
    const wrapped = codecA.wrap("event-42");
    assert.equal(codecB.unwrap(wrapped), null);
    assert.equal(createEventIdCodec(Buffer.alloc(32, 8), SESSION_A).unwrap(wrapped), null);
    // Length prefixes keep (session, id) pairs apart even when their concatenations agree.
    const ab = createEventIdCodec(KEY, "ab");
    const a = createEventIdCodec(KEY, "a");
    const wrappedUnderAb = ab.wrap("c");
    const forged = `${Buffer.from("bc").toString("base64url")}.${wrappedUnderAb.split(".")[1]}`;
    assert.equal(a.unwrap(forged), null);
  });

  it("refuses any tampering", () => {
    const wrapped = codecA.wrap("event-42");
    for (let index = 0; index < wrapped.length; index++) {
      if (wrapped[index] === ".") continue;
      for (const replacement of ["A", "B", "_", "-", "0"]) {
        if (wrapped[index] === replacement) continue;
        const tampered = wrapped.slice(0, index) + replacement + wrapped.slice(index + 1);
        // A change in the last tag character's unused bits decodes to the same tag: refused as
        // non-canonical, not accepted.
        assert.equal(codecA.unwrap(tampered), null, tampered);
      }
    }
    // Another upstream id under the original tag.
    const [, tag] = wrapped.split(".");
    assert.equal(codecA.unwrap(`${Buffer.from("event-43").toString("base64url")}.${tag}`), null);
  });

  it("returns null for anything malformed or oversized, never throwing", () => {
    const wrapped = codecA.wrap("event-42");
    const [id, tag] = wrapped.split(".") as [string, string];
    const cases: unknown[] = [
      "",
      ".",
      id,
      `${id}.`,
      `.${tag}`,
      `${id}.${tag}.x`,
      `${id}=.${tag}`,
      `${id}.${tag}=`,
      `${id}.${tag.slice(0, -1)}`,
      `${id}.${tag}A`,
      `${id}+.${tag}`,
      ` ${wrapped}`,
      `${wrapped} `,
      `${wrapped}\n`,
      wrapped.toUpperCase(),
      "A".repeat(MAX_GATEWAY_EVENT_ID_LENGTH + 1),
      `${"A".repeat(MAX_GATEWAY_EVENT_ID_LENGTH)}.${tag}`,
      // Non-canonical base64url of the id part: "QR" decodes like "QQ" (stray low bits).
      `QR.${tag}`,
      // A length no base64 encoding has.
      `AAAAA.${tag}`,
      undefined,
      null,
      42,
      { toString: () => wrapped },
    ];
    for (const value of cases) assert.equal(codecA.unwrap(value as string), null, String(value));
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), (value) => {
        assert.equal(codecA.unwrap(value), null);
      }),
      fastCheckParameters(500),
    );
  });

  it("refuses bad keys, sessions and upstream ids", () => {
    const argument = (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID");
    assert.throws(() => createEventIdCodec(Buffer.alloc(31), SESSION_A), argument);
    assert.throws(() => createEventIdCodec("k".repeat(32) as never, SESSION_A), argument);
    assert.throws(() => createEventIdCodec(KEY, ""), argument);
    assert.throws(() => codecA.wrap(""), argument);
    assert.throws(
      () => codecA.wrap("x".repeat(MAX_UPSTREAM_EVENT_ID_BYTES + 1)),
      (e) => isGateError(e, "ERR_UPSTREAM_UNAVAILABLE"),
    );
    // Bytes, not characters: 171 three-byte characters are 513 bytes.
    assert.throws(
      () => codecA.wrap("€".repeat(171)),
      (e) => isGateError(e, "ERR_UPSTREAM_UNAVAILABLE"),
    );
  });

  it("copies its key: zeroing the caller's buffer changes nothing", () => {
    const key = randomBytes(32);
    const codec = createEventIdCodec(key, SESSION_A);
    const wrapped = codec.wrap("e1");
    key.fill(0);
    assert.equal(codec.unwrap(wrapped), "e1");
    assert.equal(codec.wrap("e1"), wrapped);
  });
});

// ---------------------------------------------------------------------------------------------
// The stream rewriter

/** Runs `chunks` through a fresh rewriter and returns everything it wrote. */
async function rewrite(chunks: readonly Buffer[], codec: EventIdCodec = codecA): Promise<Buffer> {
  const transform = rewriteSseEventIds(codec);
  const out: Buffer[] = [];
  transform.on("data", (chunk: Buffer) => out.push(chunk));
  const done = new Promise<void>((resolve, reject) => {
    transform.on("end", resolve);
    transform.on("error", reject);
  });
  for (const chunk of chunks) transform.write(chunk);
  transform.end();
  await done;
  return Buffer.concat(out);
}

const text = (value: string): Buffer => Buffer.from(value, "utf8");

/**
 * An independent statement of the rules, on the whole input at once: lines end at CRLF, CR or LF;
 * an `id:` line (after a BOM on the first line) gets its value wrapped unless empty, and is dropped
 * with its line end if the value holds NUL; an unterminated last line is dropped if it is or could
 * become an `id` field, else kept.
 */
function reference(input: Buffer, codec: EventIdCodec = codecA): Buffer {
  const latin1 = input.toString("latin1"); // one char per byte, so slicing never splits a sequence
  const out: Buffer[] = [];
  const lines = /([^\r\n]*)(\r\n|\r|\n|$)/gy;
  let first = true;
  for (let match = lines.exec(latin1); match !== null; match = lines.exec(latin1)) {
    const [whole, line = "", end = ""] = match;
    if (whole === "") break;
    const bom = first && line.startsWith("\xef\xbb\xbf") ? "\xef\xbb\xbf" : "";
    first = false;
    const field = line.slice(bom.length);
    if (end === "") {
      if (!("id:".startsWith(field) || field.startsWith("id:"))) out.push(Buffer.from(line, "latin1"));
      break;
    }
    if (!field.startsWith("id:")) {
      out.push(Buffer.from(whole, "latin1"));
      continue;
    }
    let prefix = "id:";
    let value = field.slice(3);
    if (value.startsWith(" ")) {
      prefix += " ";
      value = value.slice(1);
    }
    if (value === "") out.push(Buffer.from(whole, "latin1"));
    else if (value.includes("\0")) continue;
    else {
      const decoded = new TextDecoder().decode(Buffer.from(value, "latin1"));
      out.push(
        Buffer.from(`${bom}${prefix}`, "latin1"),
        text(codec.wrap(decoded)),
        Buffer.from(end, "latin1"),
      );
    }
  }
  return Buffer.concat(out);
}

/** Fragments that make realistic and nasty event streams when joined. */
const FRAGMENTS = [
  "id",
  "id:",
  "id: ",
  "ID:",
  " id:",
  "data",
  "data: ",
  "event: message",
  ": comment",
  "retry: 10",
  ":",
  " ",
  "1",
  "abc",
  "\r",
  "\n",
  "\r\n",
  "\n\n",
  "\0",
  "é",
  "😀",
  "\xef\xbb\xbf", // a BOM when encoded as latin1 below
  '{"jsonrpc":"2.0","id":1,"result":{}}',
].map((fragment) => (fragment === "\xef\xbb\xbf" ? Buffer.from(fragment, "latin1") : text(fragment)));

const stream = fc
  .array(fc.constantFrom(...FRAGMENTS), { maxLength: 30 })
  .map((parts) => Buffer.concat(parts));

function splitAt(input: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((cut) => cut % (input.length + 1)))].sort((x, y) => x - y);
  const chunks: Buffer[] = [];
  let previous = 0;
  for (const point of points) {
    chunks.push(input.subarray(previous, point));
    previous = point;
  }
  chunks.push(input.subarray(previous));
  return chunks;
}

describe("rewriteSseEventIds", () => {
  it("wraps id values and leaves every other line byte-identical", async () => {
    const input = text(
      'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\nid: stream-1_17\nretry: 1000\n: keep-alive\n\n' +
        "id:no-space\ndata: x\n\n",
    );
    const output = await rewrite([input]);
    assert.equal(
      output.toString(),
      'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n' +
        `id: ${codecA.wrap("stream-1_17")}\nretry: 1000\n: keep-alive\n\n` +
        `id:${codecA.wrap("no-space")}\ndata: x\n\n`,
    );
    // The client, presenting what it saw, gets the upstream id back; another session gets nothing.
    const seen = /^id: (.+)$/m.exec(output.toString())![1]!;
    assert.equal(codecA.unwrap(seen), "stream-1_17");
    assert.equal(codecB.unwrap(seen), null);
  });

  it("keeps CRLF, CR and LF line ends as they came, and only the first space", async () => {
    const input = text("id: a\r\nid:  b\rid:c\ndata: d\r\r\n");
    const output = await rewrite([input]);
    assert.equal(
      output.toString(),
      `id: ${codecA.wrap("a")}\r\nid: ${codecA.wrap(" b")}\rid:${codecA.wrap("c")}\ndata: d\r\r\n`,
    );
  });

  it("passes empty ids through, drops ids with NUL, leaves other spellings alone", async () => {
    const input = text("id\nid:\nid: \nid: a\0b\r\nID: x\n id: y\nidx: z\nid : w\ndata: id: v\n\n");
    const output = await rewrite([input]);
    assert.equal(output.toString(), "id\nid:\nid: \nID: x\n id: y\nidx: z\nid : w\ndata: id: v\n\n");
  });

  it("looks past a BOM on the first line only", async () => {
    const bom = Buffer.from([0xef, 0xbb, 0xbf]);
    const output = await rewrite([Buffer.concat([bom, text("id: 1\n"), bom, text("id: 2\n")])]);
    assert.deepEqual(output, Buffer.concat([bom, text(`id: ${codecA.wrap("1")}\n`), bom, text("id: 2\n")]));
  });

  it("agrees with the reference on generated streams", async () => {
    await fc.assert(
      fc.asyncProperty(stream, async (input) => {
        assert.deepEqual(await rewrite([input]), reference(input));
      }),
      fastCheckParameters(1_000),
    );
  });

  it("gives the same output however the stream is split into chunks", async () => {
    await fc.assert(
      fc.asyncProperty(stream, fc.array(fc.nat(), { maxLength: 8 }), async (input, cuts) => {
        assert.deepEqual(await rewrite(splitAt(input, cuts)), reference(input));
      }),
      fastCheckParameters(1_000),
    );
  });

  it("gives the same output split at every byte position, and byte by byte", async () => {
    const input = Buffer.concat([
      Buffer.from([0xef, 0xbb, 0xbf]),
      text("id: é€😀-1\r\ndata: 😀\r\rid:\0\r\nid: 2\r"),
      text("\n: c\nid: 3"),
    ]);
    const expected = reference(input);
    assert.deepEqual(await rewrite([input]), expected);
    for (let cut = 0; cut <= input.length; cut++) {
      assert.deepEqual(await rewrite([input.subarray(0, cut), input.subarray(cut)]), expected, `cut ${cut}`);
    }
    const bytes = [...input].map((byte) => Buffer.from([byte]));
    assert.deepEqual(await rewrite(bytes), expected);
  });

  it("writes complete lines at once and holds only an unfinished id line", async () => {
    const transform = rewriteSseEventIds(codecA);
    const out: string[] = [];
    transform.on("data", (chunk: Buffer) => out.push(chunk.toString()));
    const tick = () => new Promise((resolve) => setImmediate(resolve));

    transform.write(text("data: hello\n\nid: 12"));
    await tick();
    assert.deepEqual(out.splice(0), ["data: hello\n\n"]);

    transform.write(text("3"));
    await tick();
    assert.equal(out.length, 0, "the id line is still open");
    // The data line streams before its end: it can never become an id.
    transform.write(text("\rdata: par"));
    await tick();
    assert.deepEqual(out.splice(0), [`id: ${codecA.wrap("123")}\rdata: par`]);

    // The LF after a CR that ended a chunk is the second half of one CRLF, written as it came.
    transform.write(text("tial\r"));
    await tick();
    transform.write(text("\n"));
    await tick();
    assert.deepEqual(out.splice(0), ["tial\r", "\n"]);
    transform.end();
  });

  it("streams long data lines without holding them, and drops an unterminated id at the end", async () => {
    const big = Buffer.alloc(3 * MAX_HELD_LINE_BYTES, "a");
    const output = await rewrite([text("data: "), big, text("\n\nid: tail")]);
    assert.equal(output.length, 6 + big.length + 2);
  });

  it("errors the stream when an id line outgrows the cap, or its value cannot be wrapped", async () => {
    await assert.rejects(rewrite([text("id: "), Buffer.alloc(MAX_HELD_LINE_BYTES, "a"), text("\n")]), (e) =>
      isGateError(e, "ERR_UPSTREAM_UNAVAILABLE"),
    );
    await assert.rejects(rewrite([text(`id: ${"a".repeat(MAX_UPSTREAM_EVENT_ID_BYTES + 1)}\n`)]), (e) =>
      isGateError(e, "ERR_UPSTREAM_UNAVAILABLE"),
    );
  });

  it("refuses something that is not a codec", () => {
    assert.throws(
      () => rewriteSseEventIds({} as never),
      (e) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
  });
});
