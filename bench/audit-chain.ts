/**
 * How many security events per second the chained audit file sink takes, through the real emitter
 * (redaction, tags) to the disk (HMAC per line, one append + fdatasync + checkpoint rename per
 * flush), and how fast `verifyAuditFile` reads the result back.
 *
 *   node bench/audit-chain.ts [--events N] [--seconds S] [--dir DIR]
 *
 * - sink only: N records (built beforehand) written straight to the sink, then flushed. `write`
 *   only queues the record's JSON; the writer chains (HMAC) each batch, so the disk figure is the
 *   one to compare. The default maxFileBytes (128 MiB) is not reached: no rotation is timed.
 * - burst: N events emitted as fast as possible with a queue large enough to hold them all, then
 *   flushed: the sink's end-to-end ceiling.
 * - sustained: for S seconds, 500 events per turn of the event loop with the default queue (10,000):
 *   what reaches the disk, and how many were refused (counted into audit.dropped).
 */
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createChainedFileSink, verifyAuditFile } from "../src/audit/audit-chain.ts";
import {
  createSecurityEvents,
  type SecurityEvent,
  type SecurityEventRecord,
} from "../src/audit/security-events.ts";
import { createIdentifierTagger } from "../src/crypto/identifier-tag.ts";
import { Keyring } from "../src/crypto/keyring.ts";

const { values } = parseArgs({
  options: {
    events: { type: "string", default: "200000" },
    seconds: { type: "string", default: "3" },
    dir: { type: "string" },
  },
});
const EVENTS = Number(values.events);
const SECONDS = Number(values.seconds);
const dir = await mkdtemp(join(values.dir ?? tmpdir(), "tenantgate-audit-bench-"));
const keyring = Keyring.ephemeral();
const tagger = createIdentifierTagger();

const event = (index: number): SecurityEvent => ({
  type: "auth.denied",
  code: "ERR_AUTH_INVALID",
  reason: "bad-signature",
  status: 401,
  upstream: "notes",
  clientAddress: `203.0.113.${index % 256}`,
  principal: { issuer: "https://idp.example.com", tenant: "acme", subject: `user-${index % 1000}` },
});

const perSecond = (count: number, ms: number) => Math.round((count / ms) * 1000).toLocaleString("en");

try {
  {
    // The sink alone: records as the emitter would hand them over, built beforehand.
    const path = join(dir, "sink.jsonl");
    const sink = await createChainedFileSink({ path, keyring, maxQueue: EVENTS + 1 });
    const records: SecurityEventRecord[] = [];
    const collect = createSecurityEvents({
      tagger,
      sinks: [{ write: (record) => void records.push(record) }],
    });
    for (let index = 0; index < EVENTS; index += 1) collect.emit(event(index));
    const started = performance.now();
    for (const record of records) sink.write(record);
    const queued = performance.now();
    await sink.close();
    const ms = performance.now() - started;
    console.log(
      `sink only: ${EVENTS.toLocaleString("en")} records, ${perSecond(EVENTS, ms)} records/s to disk ` +
        `(${perSecond(EVENTS, queued - started)}/s into the queue; the writer chains them)`,
    );
  }
  {
    const path = join(dir, "burst.jsonl");
    const sink = await createChainedFileSink({ path, keyring, maxQueue: EVENTS + 1 });
    const events = createSecurityEvents({ tagger, sinks: [sink] });
    const started = performance.now();
    for (let index = 0; index < EVENTS; index += 1) events.emit(event(index));
    const queued = performance.now();
    await sink.close();
    const ms = performance.now() - started;
    console.log(
      `burst:     ${EVENTS.toLocaleString("en")} events, ${perSecond(EVENTS, ms)} events/s to disk ` +
        `(${perSecond(EVENTS, queued - started)}/s emitted into the queue), dropped ${sink.stats().dropped}, ` +
        `${((await stat(path)).size / EVENTS).toFixed(0)} bytes/line`,
    );
    const verifyStart = performance.now();
    const result = await verifyAuditFile(path, { keyring });
    const verifyMs = performance.now() - verifyStart;
    console.log(`verify:    ${result.ok ? "ok" : "FAILED"}, ${perSecond(EVENTS, verifyMs)} lines/s`);
  }
  {
    const path = join(dir, "sustained.jsonl");
    const sink = await createChainedFileSink({ path, keyring });
    const events = createSecurityEvents({ tagger, sinks: [sink] });
    let emitted = 0;
    const started = performance.now();
    const deadline = started + SECONDS * 1000;
    while (performance.now() < deadline) {
      for (let index = 0; index < 500; index += 1) events.emit(event(emitted++));
      await new Promise((resolve) => setImmediate(resolve));
    }
    await sink.close();
    const ms = performance.now() - started;
    const { dropped } = sink.stats();
    console.log(
      `sustained: ${emitted.toLocaleString("en")} emitted in ${(ms / 1000).toFixed(1)} s, ` +
        `${perSecond(emitted - dropped, ms)} events/s written, ${dropped.toLocaleString("en")} dropped (counted)`,
    );
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
