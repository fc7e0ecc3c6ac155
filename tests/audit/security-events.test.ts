import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import {
  authDenialOf,
  createSecurityEvents,
  jsonLinesSink,
  type SecurityEvent,
  type SecurityEventRecord,
  type SecurityEventSink,
  sessionDeniedEvent,
} from "../../src/audit/security-events.ts";
import { createIdentifierTagger, TAG_HEX_LENGTH } from "../../src/crypto/identifier-tag.ts";
import { digest, mintId } from "../../src/crypto/ids.ts";
import { GateError, isGateError } from "../../src/errors.ts";
import { invalidCredential } from "../../src/identity/failure.ts";
import type { SessionDenial } from "../../src/sessions/session-registry.ts";

const NOW = Date.UTC(2026, 10, 22, 12, 0, 0);
const tagger = createIdentifierTagger(Buffer.alloc(32, 7));

const SUBJECT = "alice@example.com";
const TENANT = "acme-corp";
const ISSUER = "https://idp.example.com";
const CLIENT = "203.0.113.77";
const SESSION_DIGEST = digest("session", mintId());

function collecting(): { sink: SecurityEventSink; records: SecurityEventRecord[] } {
  const records: SecurityEventRecord[] = [];
  return { sink: { write: (record) => void records.push(record) }, records };
}

function setup(extraSinks: SecurityEventSink[] = []) {
  const { sink, records } = collecting();
  const events = createSecurityEvents({ tagger, sinks: [...extraSinks, sink], now: () => NOW });
  return { events, records };
}

/** A JSON-lines sink on a PassThrough, and the lines written to it so far. */
function lines() {
  const stream = new PassThrough();
  const chunks: string[] = [];
  stream.on("data", (chunk: Buffer) => chunks.push(chunk.toString("utf8")));
  return { sink: jsonLinesSink(stream), text: () => chunks.join("") };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe("security events: denial counters", () => {
  it("counts every denial by type and reason, and nothing else", () => {
    const { events } = setup();
    events.emit({ type: "auth.denied", code: "ERR_AUTH_INVALID", reason: "bad-signature" });
    events.emit({ type: "auth.denied", code: "ERR_AUTH_INVALID", reason: "bad-signature" });
    events.emit({ type: "auth.denied", code: "ERR_AUTH_REQUIRED", reason: "no-credential" });
    events.emit({ type: "request.refused", reason: "host-forbidden", status: 403 });
    events.emit({ type: "session.denied", reason: "foreign-principal", operation: "resolve" });
    events.emit({ type: "upstream.refused", reason: "unauthorized", status: 502 });
    events.emit({ type: "stream.event-id-refused", reason: "other-session" });
    // Not denials: no counter.
    events.emit({ type: "session.created", upstream: "notes" });
    events.emit({ type: "session.ended", by: "client" });
    events.emit({ type: "upstream.unavailable", reason: "timeout" });
    events.emit({ type: "store.unavailable" });

    assert.deepEqual(events.denials(), {
      "auth.denied:bad-signature": 2,
      "auth.denied:no-credential": 1,
      "request.refused:host-forbidden": 1,
      "session.denied:foreign-principal": 1,
      "upstream.refused:unauthorized": 1,
      "stream.event-id-refused:other-session": 1,
    });
  });

  it("counts before the sinks run, so a sink sees the count including its own event", () => {
    let seen: number | undefined;
    const events = createSecurityEvents({
      tagger,
      sinks: [
        {
          write: () => {
            seen = events.denials()["request.refused:rate-limited"];
          },
        },
      ],
    });
    events.emit({ type: "request.refused", reason: "rate-limited" });
    assert.equal(seen, 1);
  });

  it("a reason outside its type's list is written and counted as unrecognised, never as given", () => {
    const { events, records } = setup();
    const smuggled = "Bearer eyJhbGciOi.secret";
    events.emit({ type: "request.refused", reason: smuggled } as unknown as SecurityEvent);
    assert.deepEqual(events.denials(), { "request.refused:unrecognised": 1 });
    assert.equal(records[0]?.reason, "unrecognised");
    assert.ok(!JSON.stringify(records).includes("secret"));
  });

  it("the snapshot is frozen and does not change with later events", () => {
    const { events } = setup();
    events.emit({ type: "request.refused", reason: "body-too-large" });
    const before = events.denials();
    events.emit({ type: "request.refused", reason: "body-too-large" });
    assert.ok(Object.isFrozen(before));
    assert.equal(before["request.refused:body-too-large"], 1);
    assert.equal(events.denials()["request.refused:body-too-large"], 2);
  });
});

describe("security events: redaction before any sink", () => {
  const everything: SecurityEvent = {
    type: "session.denied",
    reason: "foreign-principal",
    operation: "resolve",
    upstream: "notes",
    clientAddress: CLIENT,
    principal: { tenant: TENANT, issuer: ISSUER, subject: SUBJECT },
    sessionDigest: SESSION_DIGEST,
    status: 404,
  };

  it("replaces subject, tenant, session digest and address with keyed tags; keeps the issuer", () => {
    const { events, records } = setup();
    events.emit(everything);
    assert.deepEqual(records, [
      {
        time: "2026-11-22T12:00:00.000Z",
        type: "session.denied",
        reason: "foreign-principal",
        operation: "resolve",
        status: 404,
        upstream: "notes",
        issuer: ISSUER,
        tenantTag: tagger.tag(TENANT),
        subjectTag: tagger.tag(SUBJECT),
        sessionTag: tagger.tag(SESSION_DIGEST),
        clientTag: tagger.tag(CLIENT),
      },
    ]);
    assert.match(records[0]!.subjectTag!, new RegExp(`^[0-9a-f]{${TAG_HEX_LENGTH}}$`));
    assert.ok(Object.isFrozen(records[0]));
  });

  it("no serialized line contains a raw subject, tenant, session digest or address", async () => {
    const out = lines();
    const { events } = setup([out.sink]);
    events.emit(everything);
    events.emit({ type: "auth.denied", code: "ERR_AUTH_INVALID", reason: "expired", clientAddress: CLIENT });
    events.emit({ type: "session.created", principal: everything.principal!, sessionDigest: SESSION_DIGEST });
    await tick();
    const text = out.text();
    const written = text.trimEnd().split("\n");
    assert.equal(written.length, 3);
    for (const raw of [SUBJECT, TENANT, SESSION_DIGEST, CLIENT]) {
      assert.ok(!text.includes(raw), "a raw identifier reached the line");
    }
    // The tags are where the values were.
    const first = JSON.parse(written[0]!) as SecurityEventRecord;
    assert.equal(first.subjectTag, tagger.tag(SUBJECT));
    assert.equal(first.sessionTag, tagger.tag(SESSION_DIGEST));
    assert.equal(first.clientTag, tagger.tag(CLIENT));
    assert.equal(JSON.parse(written[1]!).clientTag, tagger.tag(CLIENT));
    assert.equal(JSON.parse(written[2]!).sessionTag, tagger.tag(SESSION_DIGEST));
  });

  it("properties smuggled onto the input never reach a sink", async () => {
    const out = lines();
    const { events, records } = setup([out.sink]);
    const principal = Object.assign(
      { tenant: TENANT, issuer: ISSUER, subject: SUBJECT },
      { email: "alice@example.com", token: "tok-SECRET-1" },
    );
    const event = Object.assign(
      { type: "request.refused" as const, reason: "origin-forbidden" as const, principal },
      {
        authorization: "Bearer tok-SECRET-2",
        headers: { cookie: "sid=SECRET-3" },
        sessionId: "SECRET-4",
        cause: new Error("SECRET-5"),
        subjectTag: "forged-tag",
        time: "1970-01-01T00:00:00.000Z",
      },
    );
    events.emit(event);
    await tick();
    assert.deepEqual(Object.keys(records[0]!).sort(), [
      "issuer",
      "reason",
      "subjectTag",
      "tenantTag",
      "time",
      "type",
    ]);
    assert.equal(records[0]!.subjectTag, tagger.tag(SUBJECT));
    assert.equal(records[0]!.time, "2026-11-22T12:00:00.000Z");
    assert.ok(!out.text().includes("SECRET"));
    assert.ok(!out.text().includes("forged"));
  });

  it("fields of the wrong kind are left out rather than written", () => {
    const { events, records } = setup();
    events.emit({
      type: "upstream.unavailable",
      reason: "unreachable",
      status: 99_999,
      upstream: { toString: () => "SECRET" },
      clientAddress: 42,
      principal: "alice",
    } as unknown as SecurityEvent);
    assert.deepEqual(records, [
      { time: "2026-11-22T12:00:00.000Z", type: "upstream.unavailable", reason: "unreachable" },
    ]);
  });

  it("one record per line, even when a value holds line breaks", async () => {
    const out = lines();
    const { events } = setup([out.sink]);
    events.emit({ type: "session.created", upstream: 'notes\n{"type":"forged"}\r\u2028' });
    await tick();
    const text = out.text();
    assert.equal(text.split("\n").length, 2);
    assert.equal(JSON.parse(text).upstream, 'notes\n{"type":"forged"}\r\u2028');
  });
});

describe("security events: sinks cannot break the emitter", () => {
  it("a throwing sink is counted and the next sink still gets the record", () => {
    const { events, records } = setup([
      {
        write: () => {
          throw new GateError("ERR_INTERNAL", "sink broke");
        },
      },
    ]);
    assert.doesNotThrow(() => events.emit({ type: "request.refused", reason: "batch-refused" }));
    assert.equal(records.length, 1);
    assert.equal(events.sinkFailures(), 1);
  });

  it("a rejecting sink is counted, never awaited, and leaves no unhandled rejection", async () => {
    const unhandled: unknown[] = [];
    const listener = (reason: unknown) => void unhandled.push(reason);
    process.on("unhandledRejection", listener);
    try {
      let release: () => void = () => undefined;
      const slow = new Promise<void>((resolve) => {
        release = resolve;
      });
      const { events, records } = setup([
        { write: () => Promise.reject(new GateError("ERR_INTERNAL", "async sink broke")) },
        // A thenable that is not a Promise, rejecting later: the sink contract is PromiseLike.
        {
          write: () =>
            ({
              // biome-ignore lint/suspicious/noThenProperty: the point of the case is a non-Promise thenable
              then: (_: unknown, reject: (e: unknown) => void) => void setImmediate(reject, "no"),
            }) as unknown as PromiseLike<void>,
        },
        { write: async () => slow },
      ]);
      events.emit({ type: "session.ended", by: "upstream-gone" });
      // emit returned although a sink is still pending: it did not wait.
      assert.equal(records.length, 1);
      await tick();
      await tick();
      assert.equal(events.sinkFailures(), 2);
      release();
      await tick();
      assert.deepEqual(unhandled, []);
    } finally {
      process.off("unhandledRejection", listener);
    }
  });

  it("a failing clock, tagger or getter costs the delivery, not an exception", () => {
    const failingTagger = {
      tag: () => {
        throw new GateError("ERR_INTERNAL", "tagger broke");
      },
    };
    const { sink, records } = collecting();
    const events = createSecurityEvents({ tagger: failingTagger, sinks: [sink, sink] });
    assert.doesNotThrow(() =>
      events.emit({ type: "request.refused", reason: "media-type", clientAddress: CLIENT }),
    );
    // Counted before the record was built.
    assert.deepEqual(events.denials(), { "request.refused:media-type": 1 });
    assert.equal(events.sinkFailures(), 2);
    assert.deepEqual(records, []);

    const badClock = createSecurityEvents({ tagger, sinks: [sink], now: () => Number.NaN });
    assert.doesNotThrow(() => badClock.emit({ type: "store.unavailable" }));
    assert.equal(badClock.sinkFailures(), 1);

    const getter = setup();
    const hostile = {
      type: "request.refused",
      get reason(): never {
        throw new GateError("ERR_INTERNAL", "getter");
      },
    };
    assert.doesNotThrow(() => getter.events.emit(hostile as unknown as SecurityEvent));
    for (const junk of [null, undefined, 42, { type: "nope" }, { type: "constructor" }]) {
      assert.doesNotThrow(() => getter.events.emit(junk as unknown as SecurityEvent));
    }
    assert.deepEqual(getter.records, []);
    assert.equal(getter.events.sinkFailures(), 6);
  });

  it("a sink cannot change what the next sink sees", () => {
    const { events, records } = setup([
      {
        write: (record) => {
          (record as { reason?: string }).reason = "changed";
        },
      },
    ]);
    events.emit({ type: "request.refused", reason: "not-acceptable" });
    assert.equal(records[0]?.reason, "not-acceptable");
    assert.equal(events.sinkFailures(), 1);
  });

  it("a failed stream write is counted", async () => {
    const stream = new PassThrough();
    stream.on("error", () => undefined);
    stream.end();
    const events = createSecurityEvents({ tagger, sinks: [jsonLinesSink(stream)] });
    events.emit({ type: "store.unavailable" });
    await tick();
    await tick();
    assert.equal(events.sinkFailures(), 1);
  });

  it("refuses options it cannot work with", () => {
    const bad: unknown[] = [
      undefined,
      { sinks: [] },
      { tagger, sinks: "stdout" },
      { tagger, sinks: [{}] },
      { tagger, sinks: [], now: 5 },
    ];
    for (const options of bad) {
      assert.throws(
        () => createSecurityEvents(options as Parameters<typeof createSecurityEvents>[0]),
        (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
      );
    }
    assert.throws(
      () => jsonLinesSink({} as NodeJS.WritableStream),
      (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
  });
});

describe("security events: adapters", () => {
  it("authDenialOf maps the identity layer's errors, and nothing else", () => {
    assert.deepEqual(authDenialOf(invalidCredential("bad-signature")), {
      code: "ERR_AUTH_INVALID",
      reason: "bad-signature",
    });
    assert.deepEqual(authDenialOf(new GateError("ERR_AUTH_REQUIRED", "authentication required")), {
      code: "ERR_AUTH_REQUIRED",
      reason: "no-credential",
    });
    assert.deepEqual(
      authDenialOf(new GateError("ERR_AUTH_REQUIRED", "x", { detail: "scopes-required" }))?.reason,
      "scopes-required",
    );
    assert.deepEqual(
      authDenialOf(new GateError("ERR_AUTH_RATE_LIMITED", "x", { detail: "failed-auth-limit" }))?.reason,
      "failed-auth-limit",
    );
    // The missing scope list is free text: not a reason.
    assert.deepEqual(
      authDenialOf(new GateError("ERR_INSUFFICIENT_SCOPE", "x", { detail: "missing scopes: a b" })),
      { code: "ERR_INSUFFICIENT_SCOPE", reason: "insufficient-scope" },
    );
    assert.equal(
      authDenialOf(new GateError("ERR_AUTH_INVALID", "x", { detail: "some text" }))?.reason,
      "unrecognised",
    );
    assert.equal(authDenialOf(new GateError("ERR_STORE_UNAVAILABLE", "x")), undefined);
    assert.equal(authDenialOf(new Error("ERR_AUTH_INVALID")), undefined);
  });

  it("sessionDeniedEvent turns a registry denial into a redacted, counted event", () => {
    const { events, records } = setup();
    const denial: SessionDenial = {
      reason: "other-upstream",
      operation: "end",
      sessionDigest: SESSION_DIGEST,
      caller: { tenant: TENANT, issuer: ISSUER, subject: SUBJECT },
      upstream: "calendar",
    };
    events.emit(sessionDeniedEvent(denial));
    events.emit(sessionDeniedEvent({ ...denial, reason: "malformed", sessionDigest: null, upstream: null }));
    assert.deepEqual(events.denials(), { "session.denied:other-upstream": 1, "session.denied:malformed": 1 });
    assert.equal(records[0]?.sessionTag, tagger.tag(SESSION_DIGEST));
    assert.equal(records[0]?.upstream, "calendar");
    assert.equal(records[0]?.operation, "end");
    assert.equal(records[1]?.sessionTag, undefined);
    assert.equal(records[1]?.upstream, undefined);
  });
});
