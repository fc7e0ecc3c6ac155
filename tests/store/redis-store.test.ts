import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { connect, createServer, type Server, type Socket } from "node:net";
import { after, describe, it } from "node:test";
import { inspect } from "node:util";
import { Redis } from "ioredis";
import { isGateError } from "../../src/errors.ts";
import type { Store } from "../../src/store/contract.ts";
import {
  bucketKey,
  counterKey,
  leaseKey,
  ownedKey,
  ownerIndexKey,
  ownershipKey,
} from "../../src/store/keys.ts";
import { openStore } from "../../src/store/open-store.ts";
import { redisBackend } from "../support/backends.ts";
import { FaultProxy } from "../support/fault-proxy.ts";
import { openRemoteStore } from "../support/remote-store.ts";
import { describeStoreConformance, type StoreHarness } from "./conformance.ts";

const backend = await redisBackend();
const TIMEOUT_MS = 1_000;
/** Slack over the adapter's timeout for the Redis-specific bounds (tighter than the suite's). */
const SLACK_MS = 1_500;

const scope = { tenant: "tenant-a", issuer: "https://issuer.example", subject: "alice" };

/** Random per fixture, so parallel runs and other checkouts on the same server never meet. */
function freshPrefix(): string {
  return `tgtest:${process.pid}:${randomBytes(8).toString("hex")}:`;
}

function storeUrl(prefix: string, port?: number): string {
  const url = new URL(backend.url);
  if (port !== undefined) {
    url.hostname = "127.0.0.1";
    url.port = String(port);
  }
  url.search = "";
  url.searchParams.set("prefix", prefix);
  url.searchParams.set("timeoutMs", String(TIMEOUT_MS));
  return url.toString();
}

let admin: Redis | undefined;

/** A plain client for inspecting and cleaning up raw keys; it never touches another prefix. */
function adminClient(): Redis {
  admin ??= new Redis(backend.url, { maxRetriesPerRequest: 1, connectTimeout: 5_000 });
  return admin;
}

after(async () => {
  await admin?.quit();
});

async function deletePrefix(prefix: string): Promise<void> {
  const client = adminClient();
  let cursor = "0";
  do {
    // The prefix holds only [A-Za-z0-9:_.-], none of which is special in a MATCH pattern.
    const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1_000);
    if (keys.length > 0) await client.unlink(...keys);
    cursor = next;
  } while (cursor !== "0");
}

async function keysUnder(prefix: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = "0";
  do {
    const [next, keys] = await adminClient().scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1_000);
    found.push(...keys);
    cursor = next;
  } while (cursor !== "0");
  return found;
}

export const redisHarness: StoreHarness = {
  name: "redis",
  async fixture() {
    const prefix = freshPrefix();
    const url = storeUrl(prefix);
    return {
      durable: true,
      timeoutMs: TIMEOUT_MS,
      open: () => openStore(url),
      openInOtherProcess: () => openRemoteStore(url, "redis"),
      network: {
        host: backend.host,
        port: backend.port,
        openVia: async (port: number) => await openStore(storeUrl(prefix, port)),
      },
      cleanup: () => deletePrefix(prefix),
    };
  },
};

describeStoreConformance(redisHarness, { skip: backend.skip });

async function withPrefixedStore<T>(body: (store: Store, prefix: string) => Promise<T>): Promise<T> {
  const prefix = freshPrefix();
  const store = await openStore(storeUrl(prefix));
  try {
    return await body(store, prefix);
  } finally {
    await store.close();
    await deletePrefix(prefix);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Everything an error would show in a log: message, detail, cause chain and attached properties. */
function everything(error: unknown): string {
  return inspect(error, { depth: Number.POSITIVE_INFINITY, showHidden: true });
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("expected a rejection");
}

/**
 * A server speaking just enough RESP for ioredis to connect (HELLO refused, so RESP2), which answers
 * every other command with the error `reply` builds from it: for replies the real server gives only
 * in states the shared Redis must not be put in.
 */
async function fakeRedis(
  reply: (command: string[]) => string,
  maxmemoryPolicy = "noeviction",
): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    let pending = Buffer.alloc(0);
    socket.on("data", (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        const parsed = parseCommand(pending);
        if (!parsed) return;
        pending = pending.subarray(parsed.length);
        const [name = ""] = parsed.command;
        const upper = name.toUpperCase();
        if (upper === "HELLO") socket.write("-ERR unknown command 'HELLO'\r\n");
        else if (upper === "CLIENT") socket.write("+OK\r\n");
        else if (upper === "INFO") {
          const info = `loading:0\r\nmaxmemory_policy:${maxmemoryPolicy}\r\n`;
          socket.write(`$${info.length}\r\n${info}\r\n`);
        } else socket.write(`-${reply(parsed.command)}\r\n`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = address && typeof address === "object" ? address.port : 0;
  return {
    port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function portAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1" });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** One RESP array of bulk strings from the front of `input`, or null if it is not all there yet. */
function parseCommand(bytes: Buffer): { command: string[]; length: number } | null {
  let offset = 0;
  const line = (): string | null => {
    const end = bytes.indexOf("\r\n", offset);
    if (end === -1) return null;
    const text = bytes.subarray(offset, end).toString("utf8");
    offset = end + 2;
    return text;
  };
  const header = line();
  if (header === null || !header.startsWith("*")) return null;
  const command: string[] = [];
  for (let i = Number(header.slice(1)); i > 0; i--) {
    const size = line();
    if (size === null) return null;
    const length = Number(size.slice(1));
    if (bytes.length < offset + length + 2) return null;
    command.push(bytes.subarray(offset, offset + length).toString("utf8"));
    offset += length + 2;
  }
  return { command, length: offset };
}

describe("redis store", { skip: backend.skip }, () => {
  it("writes each key as the prefix followed by the encoded key, with TTLs as Redis expiries", async () => {
    await withPrefixedStore(async (store, prefix) => {
      const record = ownedKey(scope, "note", randomUUID());
      const owner = ownershipKey("session", randomUUID());
      const counter = counterKey("test-layout", randomUUID());
      await store.put(record, "value", { ttlMs: 60_000 });
      await store.claim(owner, "owner-a");
      await store.increment(counter, 3);
      const client = adminClient();
      assert.equal(await client.get(prefix + record.encoded), "value");
      const ttl = await client.pttl(prefix + record.encoded);
      assert.ok(ttl > 55_000 && ttl <= 60_000, `record TTL ${ttl}`);
      assert.equal(await client.get(prefix + owner.encoded), "owner-a");
      assert.equal(await client.pttl(prefix + owner.encoded), -1, "a claim without TTL does not expire");
      assert.equal(await client.get(prefix + counter.encoded), "3", "counters are string integers");
      await store.put(record, "value");
      assert.equal(
        await client.pttl(prefix + record.encoded),
        -1,
        "an overwrite without TTL drops the expiry",
      );
      assert.deepEqual(
        (await keysUnder(prefix)).sort(),
        [prefix + record.encoded, prefix + owner.encoded, prefix + counter.encoded].sort(),
      );
    });
  });

  it("an index is a sorted set scored by expiry whose key expires with its latest member", async () => {
    await withPrefixedStore(async (store, prefix) => {
      const index = ownerIndexKey(scope, "session");
      const name = prefix + index.encoded;
      const client = adminClient();
      await store.indexAdd(index, "short", { ttlMs: 60_000 });
      assert.equal(await client.type(name), "zset");
      let ttl = await client.pttl(name);
      assert.ok(ttl > 55_000 && ttl <= 60_000, `index TTL ${ttl} after one member`);
      await store.indexAdd(index, "long", { ttlMs: 120_000 });
      ttl = await client.pttl(name);
      assert.ok(ttl > 115_000 && ttl <= 120_000, `index TTL ${ttl} covers the latest member`);
      await store.indexAdd(index, "lasting");
      assert.equal(await client.pttl(name), -1, "a member without TTL makes the index persist");
      assert.equal(await client.zscore(name, "lasting"), "inf");
      assert.equal(await store.indexRemove(index, "lasting"), true);
      ttl = await client.pttl(name);
      assert.ok(
        ttl > 115_000 && ttl <= 120_000,
        `index TTL ${ttl} restored after removing the lasting member`,
      );
      await store.indexRemove(index, "long");
      await store.indexRemove(index, "short");
      assert.equal(await client.exists(name), 0, "an empty index leaves no key");
    });
  });

  it("expired index members are dropped from the sorted set on read", async () => {
    await withPrefixedStore(async (store, prefix) => {
      const index = ownerIndexKey(scope, "session");
      await store.indexAdd(index, "gone", { ttlMs: 100 });
      await store.indexAdd(index, "kept");
      await sleep(300);
      assert.deepEqual(await store.indexList(index), ["kept"]);
      assert.deepEqual(await adminClient().zrange(prefix + index.encoded, "0", "-1"), ["kept"]);
    });
  });

  it("a counter's TTL is set when it is created and never extended; a refused increment writes nothing", async () => {
    await withPrefixedStore(async (store, prefix) => {
      const client = adminClient();
      const counter = counterKey("test-window", randomUUID());
      await store.increment(counter, 1, { ttlMs: 60_000 });
      const first = await client.pttl(prefix + counter.encoded);
      await sleep(50);
      await store.increment(counter, 1, { ttlMs: 60_000 });
      await store.increment(counter, 1, { ttlMs: 60_000, limit: 1 });
      const second = await client.pttl(prefix + counter.encoded);
      assert.ok(second > 0 && second < first, `TTL went from ${first} to ${second}`);
      const fresh = counterKey("test-window", randomUUID());
      assert.deepEqual(await store.increment(fresh, 2, { limit: 1, ttlMs: 60_000 }), {
        applied: false,
        value: 0,
      });
      assert.equal(await client.exists(prefix + fresh.encoded), 0);
    });
  });

  it("the prefix isolates two stores on the same server", async () => {
    await withPrefixedStore(async (first) => {
      await withPrefixedStore(async (second, secondPrefix) => {
        const record = ownedKey(scope, "note", "shared-name");
        const owner = ownershipKey("session", "shared-id");
        const counter = counterKey("test-isolation", "shared");
        const index = ownerIndexKey(scope, "session");
        await first.put(record, "first");
        await first.claim(owner, "owner-first");
        await first.increment(counter, 5);
        await first.indexAdd(index, "first-member");
        assert.equal(await second.get(record), null);
        assert.deepEqual(await second.claim(owner, "owner-second"), { won: true, winner: "owner-second" });
        assert.deepEqual(await second.increment(counter, 1), { applied: true, value: 1 });
        assert.deepEqual(await second.indexList(index), []);
        assert.equal(await second.take(record), null);
        assert.equal(await first.get(record), "first");
        assert.equal(await first.get(owner), "owner-first");
        assert.equal((await keysUnder(secondPrefix)).length, 2);
      });
    });
  });

  it("ping answers, fails with ERR_STORE_UNAVAILABLE within the timeout while Redis hangs, then recovers", async () => {
    const proxy = await FaultProxy.start(backend.host, backend.port);
    const prefix = freshPrefix();
    const store = await openStore(storeUrl(prefix, proxy.port));
    try {
      await store.ping();
      await proxy.setMode("hang");
      const started = Date.now();
      const error = await rejection(store.ping());
      const elapsed = Date.now() - started;
      assert.ok(isGateError(error, "ERR_STORE_UNAVAILABLE"), String(error));
      assert.ok(elapsed < TIMEOUT_MS + SLACK_MS, `ping failed after ${elapsed} ms`);
      await proxy.setMode("pass");
      const deadline = Date.now() + 10_000;
      for (;;) {
        try {
          await store.ping();
          break;
        } catch (retryError) {
          if (Date.now() > deadline) throw retryError;
          await sleep(100);
        }
      }
    } finally {
      await store.close();
      await proxy.close();
      await deletePrefix(prefix);
    }
  });

  it("close returns within the timeout while Redis hangs, and is idempotent", async () => {
    const proxy = await FaultProxy.start(backend.host, backend.port);
    const store = await openStore(storeUrl(freshPrefix(), proxy.port));
    try {
      await proxy.setMode("hang");
      const started = Date.now();
      await store.close();
      const elapsed = Date.now() - started;
      assert.ok(elapsed < TIMEOUT_MS + SLACK_MS, `close took ${elapsed} ms`);
      await store.close();
      const error = await rejection(store.get(ownedKey(scope, "note", "k")));
      assert.ok(isGateError(error, "ERR_STORE_UNAVAILABLE"));
    } finally {
      await proxy.close();
    }
  });

  it("opening against a server that accepts but never answers fails within the timeout", async () => {
    const proxy = await FaultProxy.start(backend.host, backend.port);
    try {
      await proxy.setMode("hang");
      const started = Date.now();
      const error = await rejection(openStore(storeUrl(freshPrefix(), proxy.port)));
      const elapsed = Date.now() - started;
      assert.ok(isGateError(error, "ERR_STORE_UNAVAILABLE"), String(error));
      assert.ok(elapsed < TIMEOUT_MS + SLACK_MS, `open failed after ${elapsed} ms`);
    } finally {
      await proxy.close();
    }
  });

  it("errors carry no password, key or value", async () => {
    // Opening: the URL's password must not surface.
    const proxy = await FaultProxy.start(backend.host, backend.port);
    const closedPort = proxy.port;
    await proxy.close();
    const password = `pw-${randomUUID()}`;
    const openError = await rejection(
      openStore(`redis://user:${password}@127.0.0.1:${closedPort}?prefix=tgtest:x:&timeoutMs=${TIMEOUT_MS}`),
    );
    assert.ok(isGateError(openError, "ERR_STORE_UNAVAILABLE"));
    assert.ok(!everything(openError).includes(password), "the password leaked into the error");

    // A reply error: ioredis attaches the command's arguments (key, member) to it.
    await withPrefixedStore(async (store, prefix) => {
      const index = ownerIndexKey(scope, "session");
      await adminClient().set(prefix + index.encoded, "not a sorted set");
      const member = `member-${randomUUID()}`;
      const replyError = await rejection(store.indexAdd(index, member));
      assert.ok(isGateError(replyError, "ERR_STORE_UNAVAILABLE"), String(replyError));
      const shown = everything(replyError);
      assert.ok(shown.includes("WRONGTYPE"), "the reply's error code is kept for operators");
      for (const secret of [member, index.encoded, prefix]) {
        assert.ok(!shown.includes(secret), `the error shows ${secret}`);
      }
    });

    // A server that echoes arguments back in its error text.
    const value = `value-${randomUUID()}`;
    const echo = await fakeRedis(
      (command) => `ERR unknown command, with args beginning with: ${command.join(" ")}`,
    );
    try {
      const store = await openStore(
        `redis://127.0.0.1:${echo.port}?prefix=tgtest:x:&timeoutMs=${TIMEOUT_MS}`,
      );
      const key = ownedKey(scope, "note", randomUUID());
      const echoed = await rejection(store.put(key, value));
      await store.close();
      assert.ok(isGateError(echoed, "ERR_STORE_UNAVAILABLE"), String(echoed));
      for (const secret of [value, key.encoded]) {
        assert.ok(!everything(echoed).includes(secret), `the error shows ${secret}`);
      }
    } finally {
      await echo.close();
    }
  });

  it("a write refused at maxmemory (noeviction) is ERR_STORE_FULL, not an outage", async () => {
    const full = await fakeRedis(() => "OOM command not allowed when used memory > 'maxmemory'.");
    try {
      const store = await openStore(
        `redis://127.0.0.1:${full.port}?prefix=tgtest:x:&timeoutMs=${TIMEOUT_MS}`,
      );
      try {
        const error = await rejection(store.claim(ownershipKey("session", randomUUID()), "owner"));
        assert.ok(isGateError(error, "ERR_STORE_FULL"), String(error));
      } finally {
        await store.close();
      }
    } finally {
      await full.close();
    }
  });

  it("refuses to open on a Redis whose maxmemory-policy could evict ownership records", async () => {
    for (const policy of ["allkeys-lru", "volatile-lru", "allkeys-random"]) {
      const evicting = await fakeRedis(() => "ERR unexpected", policy);
      try {
        const error = await rejection(
          openStore(`redis://127.0.0.1:${evicting.port}?prefix=tgtest:x:&timeoutMs=${TIMEOUT_MS}`),
        );
        assert.ok(isGateError(error, "ERR_CONFIG_INVALID"), String(error));
        assert.match((error as Error).message, /noeviction/);
      } finally {
        await evicting.close();
      }
    }
  });

  it("a token bucket is a string that expires when it is full again; a lease set expires with its last member", async () => {
    await withPrefixedStore(async (store, prefix) => {
      const bucket = bucketKey("rate", "k");
      // 10 tokens a second: taking 3 leaves the bucket 300 ms from full.
      await store.takeTokens(bucket, { capacity: 5, refillPerSecond: 10, cost: 3 });
      const raw = `${prefix}${bucket.encoded}`;
      assert.equal(await adminClient().type(raw), "string");
      const bucketTtl = await adminClient().pttl(raw);
      assert.ok(bucketTtl > 200 && bucketTtl <= 301, `bucket expires in ${bucketTtl} ms`);
      await sleep(400);
      assert.equal(await adminClient().exists(raw), 0, "a full bucket takes no space");

      const lease = leaseKey("connections", "k");
      await store.leaseAcquire(lease, "short", 5, 300);
      await store.leaseAcquire(lease, "long", 5, 5_000);
      const rawLease = `${prefix}${lease.encoded}`;
      assert.equal(await adminClient().type(rawLease), "zset");
      const leaseTtl = await adminClient().pttl(rawLease);
      assert.ok(leaseTtl > 4_000 && leaseTtl <= 5_000, `lease set expires in ${leaseTtl} ms`);
      assert.equal(await store.leaseRelease(lease, "long"), true);
      assert.ok((await adminClient().pttl(rawLease)) <= 300, "the set now expires with its last member");
      await sleep(400);
      assert.equal(await adminClient().exists(rawLease), 0);
    });
  });

  it("at maxmemory (noeviction) an increase is refused as full, but a release still goes through", async (t) => {
    // A private redis-server on a free port, so the shared one is never filled or reconfigured.
    if (spawnSync("redis-server", ["--version"]).status !== 0) {
      if (process.env["CI"] === "true") assert.fail("redis-server is not installed; CI must run this test");
      t.skip("redis-server is not installed");
      return;
    }
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const server = spawn(
      "redis-server",
      [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory-policy",
        "noeviction",
      ],
      { stdio: "ignore" },
    );
    const admin = new Redis({ port, host: "127.0.0.1", lazyConnect: true, maxRetriesPerRequest: 1 });
    admin.on("error", () => {});
    try {
      // Wait for the private server to listen before connecting a client to it (a failed connect
      // would leave the client retrying on its own, and a second connect() is refused).
      for (let attempt = 0; !(await portAnswers(port)); attempt++) {
        if (attempt > 100) assert.fail("the private redis-server did not start");
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await admin.connect();
      const store = await openStore(
        `redis://127.0.0.1:${port}?prefix=tgtest:${process.pid}:oom:&timeoutMs=${TIMEOUT_MS}`,
      );
      try {
        const slots = counterKey("slots", "k");
        await store.increment(slots, 5, { ttlMs: 60_000 });
        const leases = leaseKey("connections", "k");
        assert.equal(await store.leaseAcquire(leases, "held", 5, 60_000), true);
        const used = Number(/used_memory:(\d+)/.exec(await admin.info("memory"))?.[1]);
        await admin.config("SET", "maxmemory", String(Math.max(1, used - 1_000_000)));
        const refused = await rejection(store.increment(slots, 1));
        assert.ok(isGateError(refused, "ERR_STORE_FULL"), String(refused));
        assert.deepEqual(await store.increment(slots, -1), { applied: true, value: 4 });
        assert.deepEqual(await store.increment(slots, 0), { applied: true, value: 4 });
        assert.deepEqual(await store.increment(slots, -4), { applied: true, value: 0 });
        // Leases: a new member is refused as full; keeping one alive, counting and giving one back
        // never are, so a full Redis cannot strand a slot.
        const lease = await rejection(store.leaseAcquire(leases, "new", 5, 60_000));
        assert.ok(isGateError(lease, "ERR_STORE_FULL"), String(lease));
        assert.equal(await store.leaseRenew(leases, ["held"], 60_000), 1);
        assert.equal(await store.leaseCount(leases), 1);
        assert.equal(await store.leaseRelease(leases, "held"), true);
        const bucket = await rejection(
          store.takeTokens(bucketKey("rate", "k"), { capacity: 2, refillPerSecond: 1 }),
        );
        assert.ok(isGateError(bucket, "ERR_STORE_FULL"), String(bucket));
        assert.ok(
          (await admin.pttl(`tgtest:${process.pid}:oom:${slots.encoded}`)) < 0,
          "a counter at zero is gone",
        );
      } finally {
        await store.close();
      }
    } finally {
      admin.disconnect();
      server.kill("SIGKILL");
    }
  });
});
