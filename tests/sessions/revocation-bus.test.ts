/**
 * The revocation bus on every store backend: two buses opened from one store URL on separate
 * connections hear each other; anything on the channel that is not exactly a notice is dropped;
 * close releases what was opened; a subscriber that lost its connection says so once it is back.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import pg from "pg";
import { digest } from "../../src/crypto/ids.ts";
import { isGateError } from "../../src/errors.ts";
import { openRevocationBus } from "../../src/sessions/open-revocation-bus.ts";
import { postgresRevocationChannel } from "../../src/sessions/postgres-revocation-bus.ts";
import { redisRevocationChannel } from "../../src/sessions/redis-revocation-bus.ts";
import {
  decodeNotice,
  encodeNotice,
  inProcessHub,
  principalDigest,
  type RevocationBus,
  type RevocationNotice,
  type RevocationSignal,
} from "../../src/sessions/revocation-bus.ts";
import type { Store } from "../../src/store/contract.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { parseStoreLocation } from "../../src/store/open-store.ts";
import { postgresBackend, redisBackend } from "../support/backends.ts";
import { FaultProxy } from "../support/fault-proxy.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const SESSION_DIGEST = digest("session", "one session");
const PRINCIPAL_DIGEST = principalDigest({ tenant: "t-a", issuer: "https://issuer.test", subject: "alice" });

/** Collects what a bus hands its handler, and waits for a count. */
function listener(bus: RevocationBus) {
  const heard: RevocationSignal[] = [];
  const waiters: Array<() => void> = [];
  bus.subscribe((signal) => {
    heard.push(signal);
    for (const wake of waiters.splice(0)) wake();
  });
  return {
    heard,
    async waitFor(count: number, ms = 5_000): Promise<void> {
      const deadline = Date.now() + ms;
      while (heard.length < count) {
        const left = deadline - Date.now();
        assert.ok(left > 0, `expected ${count} signals within ${ms} ms, got ${JSON.stringify(heard)}`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(left, 100));
          waiters.push(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
    },
  };
}

function openSockets(): number {
  return process.getActiveResourcesInfo().filter((kind) => kind === "TCPSocketWrap").length;
}

describe("revocation notices on the wire", () => {
  it("S13 round-trips every kind and drops anything that is not exactly a notice", () => {
    const notices: RevocationNotice[] = [
      { kind: "session", sessionDigest: SESSION_DIGEST },
      { kind: "principal", principalDigest: PRINCIPAL_DIGEST },
      { kind: "all", generation: 3 },
    ];
    for (const notice of notices) assert.deepEqual(decodeNotice(encodeNotice(notice)), notice);
    const malformed: unknown[] = [
      42,
      null,
      "",
      "not json",
      "[]",
      "null",
      JSON.stringify({ kind: "session", sessionDigest: SESSION_DIGEST }),
      JSON.stringify({ v: 2, kind: "session", sessionDigest: SESSION_DIGEST }),
      JSON.stringify({ v: 1, kind: "resync" }),
      JSON.stringify({ v: 1, kind: "session", sessionDigest: "raw-session-id" }),
      JSON.stringify({ v: 1, kind: "session", sessionDigest: SESSION_DIGEST, extra: true }),
      JSON.stringify({ v: 1, kind: "principal", sessionDigest: SESSION_DIGEST }),
      JSON.stringify({ v: 1, kind: "all" }),
      JSON.stringify({ v: 1, kind: "all", generation: 0 }),
      JSON.stringify({ v: 1, kind: "all", generation: 1.5 }),
      JSON.stringify({ v: 1, kind: "all", generation: "2" }),
      JSON.stringify({ v: 1, kind: "session", sessionDigest: SESSION_DIGEST, pad: "x".repeat(600) }),
    ];
    for (const text of malformed) assert.equal(decodeNotice(text), null, String(text));
    assert.throws(() => encodeNotice({ kind: "session", sessionDigest: "not a digest" }));
  });

  it("S13 names a principal by a digest that separates tenant, issuer and subject", () => {
    const a = principalDigest({ tenant: "ab", issuer: "i", subject: "c" });
    const b = principalDigest({ tenant: "a", issuer: "i", subject: "bc" });
    assert.notEqual(a, b);
    assert.match(a, /^[A-Za-z0-9_-]{43}$/);
    assert.ok(!a.includes("ab"));
  });
});

const cases = await storeBackendCases("revocation-bus");

for (const backend of cases) {
  describe(`revocation bus on ${backend.name}`, { skip: backend.skip }, () => {
    let url: string;
    let cleanup: () => Promise<void>;
    let memory: Store | undefined;
    const open = () => openRevocationBus(url, memory ? { store: memory } : {});

    before(async () => {
      ({ url, cleanup } = await backend.open());
      if (backend.name === "memory") memory = new MemoryStore();
    });
    after(async () => {
      await memory?.close();
      await cleanup();
    });

    /** Sends raw text on the channel the buses of `url` listen to, past any encoding. */
    async function sendRaw(texts: readonly string[]): Promise<void> {
      const location = parseStoreLocation(url);
      switch (location.backend) {
        case "memory":
          for (const text of texts) inProcessHub(memory as Store).send(text);
          return;
        case "sqlite":
          for (const text of texts) inProcessHub(`sqlite:${location.path}`).send(text);
          return;
        case "redis": {
          const client = new Redis(location.url, { maxRetriesPerRequest: 1 });
          try {
            for (const text of texts) await client.publish(redisRevocationChannel(location.prefix), text);
          } finally {
            await client.quit();
          }
          return;
        }
        case "postgres": {
          const client = new pg.Client({ connectionString: location.url });
          await client.connect();
          try {
            for (const text of texts) {
              await client.query("SELECT pg_notify($1, $2)", [
                postgresRevocationChannel(location.schema),
                text,
              ]);
            }
          } finally {
            await client.end();
          }
        }
      }
    }

    it("S13 two buses on separate connections deliver to each other, and to themselves", async () => {
      const one = await open();
      const two = await open();
      try {
        assert.equal(one.shared, backend.name === "redis" || backend.name === "postgres");
        const atOne = listener(one);
        const atTwo = listener(two);
        await one.publish({ kind: "session", sessionDigest: SESSION_DIGEST });
        await two.publish({ kind: "principal", principalDigest: PRINCIPAL_DIGEST });
        await one.publish({ kind: "all", generation: 7 });
        await atOne.waitFor(3);
        await atTwo.waitFor(3);
        const expected = [
          { kind: "session", sessionDigest: SESSION_DIGEST },
          { kind: "principal", principalDigest: PRINCIPAL_DIGEST },
          { kind: "all", generation: 7 },
        ];
        // Order between two publishers is not promised; each side hears all three.
        for (const heard of [atOne.heard, atTwo.heard]) {
          assert.deepEqual(
            [...heard].sort((a, b) => a.kind.localeCompare(b.kind)),
            [...expected].sort((a, b) => a.kind.localeCompare(b.kind)),
          );
        }
      } finally {
        await one.close();
        await two.close();
      }
    });

    it("S13 drops malformed messages on the channel and still delivers the next good one", async () => {
      const bus = await open();
      try {
        const heard = listener(bus);
        await sendRaw([
          "not json",
          JSON.stringify({ v: 1, kind: "resync" }),
          JSON.stringify({ v: 1, kind: "session", sessionDigest: "a-raw-session-id" }),
          JSON.stringify({ v: 1, kind: "all", generation: -1 }),
          encodeNotice({ kind: "session", sessionDigest: SESSION_DIGEST }),
        ]);
        await heard.waitFor(1);
        // Give anything wrongly let through the time to arrive too.
        await new Promise((resolve) => setTimeout(resolve, 200));
        assert.deepEqual(heard.heard, [{ kind: "session", sessionDigest: SESSION_DIGEST }]);
      } finally {
        await bus.close();
      }
    });

    it("S13 close releases connections; a closed bus refuses to publish and hears nothing", async () => {
      const before = openSockets();
      const closing = await open();
      const other = await open();
      const heard = listener(closing);
      await closing.close();
      await closing.close();
      await assert.rejects(closing.publish({ kind: "session", sessionDigest: SESSION_DIGEST }), (error) =>
        isGateError(error, "ERR_STORE_UNAVAILABLE"),
      );
      await other.publish({ kind: "session", sessionDigest: SESSION_DIGEST });
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.deepEqual(heard.heard, []);
      await other.close();
      const location = parseStoreLocation(url);
      if (location.backend === "redis") {
        const client = new Redis(location.url, { maxRetriesPerRequest: 1 });
        const numsub = (await client.pubsub("NUMSUB", redisRevocationChannel(location.prefix))) as [
          string,
          number,
        ];
        await client.quit();
        assert.equal(Number(numsub[1]), 0, "no subscriber left on the channel");
      }
      const deadline = Date.now() + 3_000;
      while (openSockets() > before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.ok(openSockets() <= before, `sockets left open: ${openSockets()} > ${before}`);
    });
  });
}

const redis = await redisBackend();
const postgres = await postgresBackend();

describe("revocation bus reconnects", () => {
  let proxy: FaultProxy | undefined;
  after(async () => {
    await proxy?.close();
  });

  for (const [name, backend] of [
    ["redis", redis],
    ["postgres", postgres],
  ] as const) {
    it(`S13 on ${name}: a subscriber whose connection was reset signals resync once subscribed again, then hears notices`, {
      skip: backend.skip,
    }, async () => {
      const target = await proxyTarget(name);
      proxy = await FaultProxy.start(backend.host, backend.port);
      const viaProxy = new URL(target.url);
      viaProxy.hostname = "127.0.0.1";
      viaProxy.port = String(proxy.port);
      const bus = await openRevocationBus(viaProxy.toString());
      const direct = await openRevocationBus(target.url);
      try {
        const heard = listener(bus);
        await proxy.setMode("reset");
        // Sent while the subscriber is away: lost, which is what resync is for.
        await direct.publish({ kind: "session", sessionDigest: SESSION_DIGEST });
        await new Promise((resolve) => setTimeout(resolve, 300));
        await proxy.setMode("pass");
        await heard.waitFor(1, 10_000);
        assert.deepEqual(heard.heard, [{ kind: "resync" }]);
        await direct.publish({ kind: "all", generation: 2 });
        await heard.waitFor(2, 5_000);
        assert.deepEqual(heard.heard[1], { kind: "all", generation: 2 });
      } finally {
        await bus.close();
        await direct.close();
        await proxy.close();
        proxy = undefined;
        await target.cleanup();
      }
    });
  }
});

async function proxyTarget(name: "redis" | "postgres"): Promise<{ url: string; cleanup(): Promise<void> }> {
  const found = (await storeBackendCases("revocation-bus-reconnect")).find((c) => c.name === name);
  assert.ok(found);
  return found.open();
}
