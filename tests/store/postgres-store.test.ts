import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { after, describe, it } from "node:test";
import { inspect } from "node:util";
import pg from "pg";
import { isGateError } from "../../src/errors.ts";
import type { Store } from "../../src/store/contract.ts";
import { counterKey, ownedKey, ownerIndexKey, ownershipKey } from "../../src/store/keys.ts";
import { openStore } from "../../src/store/open-store.ts";
import { openPostgresStore, POSTGRES_SCHEMA_VERSION } from "../../src/store/postgres-store.ts";
import { postgresBackend } from "../support/backends.ts";
import { FaultProxy } from "../support/fault-proxy.ts";
import { openRemoteStore } from "../support/remote-store.ts";
import { describeStoreConformance, type StoreHarness } from "./conformance.ts";

const backend = await postgresBackend();

/** The adapter timeout the fixtures run with; outage cases assert against it. */
const TIMEOUT_MS = 1_000;
/** Small: the shared server allows 100 connections in all, and a race case opens two pools. */
const POOL_SIZE = 4;

const scope = { tenant: "tenant-a", issuer: "https://issuer.example", subject: "alice" };

/** A schema of this test run's own; CI drops stale `tgtest_%` schemas. */
function freshSchema(): string {
  return `tgtest_${process.pid}_${randomBytes(6).toString("hex")}`;
}

/** The backend's URL with this store's parameters, optionally pointed at another loopback port. */
function storeUrl(schema: string, port?: number): string {
  const url = new URL(backend.url);
  if (port !== undefined) {
    url.hostname = "127.0.0.1";
    url.port = String(port);
  }
  url.search = "";
  url.searchParams.set("schema", schema);
  url.searchParams.set("timeoutMs", String(TIMEOUT_MS));
  url.searchParams.set("poolSize", String(POOL_SIZE));
  return url.toString();
}

/** Runs `body` on a plain pg client, outside any store (for inspection and cleanup). */
async function withAdmin<T>(body: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: backend.url, connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    return await body(client);
  } finally {
    await client.end();
  }
}

async function dropSchema(schema: string): Promise<void> {
  await withAdmin((client) => client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export const postgresHarness: StoreHarness = {
  name: "postgres",
  async fixture() {
    const schema = freshSchema();
    return {
      durable: true,
      timeoutMs: TIMEOUT_MS,
      open: () => openStore(storeUrl(schema)),
      openInOtherProcess: () => openRemoteStore(storeUrl(schema), "postgres"),
      network: {
        host: backend.host,
        port: backend.port,
        openVia: (port: number) => openStore(storeUrl(schema, port)),
      },
      cleanup: () => dropSchema(schema),
    };
  },
};

describeStoreConformance(postgresHarness, { skip: backend.skip });

describe("postgres store", { skip: backend.skip }, () => {
  const schemas: string[] = [];
  const newSchema = () => {
    const schema = freshSchema();
    schemas.push(schema);
    return schema;
  };
  after(async () => {
    if (backend.skip) return;
    for (const schema of schemas) await dropSchema(schema);
  });

  it("a claim that timed out behind a held row lock is ended on the server, never applied later", async () => {
    const schema = newSchema();
    const store = await openStore(storeUrl(schema));
    try {
      const key = ownershipKey("session", randomUUID());
      // An expired record sends the claim down the write path, where it must wait for the row lock.
      await store.put(key, "expired", { ttlMs: 1 });
      await sleep(20);
      await withAdmin(async (holder) => {
        await holder.query("BEGIN");
        await holder.query(`SELECT 1 FROM "${schema}".records WHERE key = $1 FOR UPDATE`, [key.encoded]);
        await assert.rejects(store.claim(key, "late-claimant"), (e: unknown) =>
          isGateError(e, "ERR_STORE_UNAVAILABLE"),
        );
        // Hold the lock well past the server-side limits, then let go.
        await sleep(TIMEOUT_MS + 1_500);
        await holder.query("COMMIT");
      });
      await sleep(200);
      assert.equal(await store.get(key), null, "the abandoned claim must not have been applied");
      assert.deepEqual(await store.claim(key, "next"), { won: true, winner: "next" });
    } finally {
      await store.close();
    }
  });

  it("processes and pools opening a new schema at once all succeed, and migrate it once", async () => {
    const schema = newSchema();
    const url = storeUrl(schema);
    const stores: Store[] = await Promise.all([
      openRemoteStore(url, "postgres"),
      openRemoteStore(url, "postgres"),
      openStore(url),
      openStore(url),
    ]);
    try {
      const key = ownershipKey("session", randomUUID());
      const outcomes = await Promise.all(stores.map((store, i) => store.claim(key, `owner-${i}`)));
      assert.equal(outcomes.filter((outcome) => outcome.won).length, 1);
    } finally {
      await Promise.all(stores.map((store) => store.close()));
    }
    const versions = await withAdmin(
      async (client) =>
        (await client.query(`SELECT version FROM "${schema}".migrations ORDER BY version`)).rows,
    );
    assert.deepEqual(
      versions,
      Array.from({ length: POSTGRES_SCHEMA_VERSION }, (_, i) => ({ version: i + 1 })),
    );
  });

  it("the sweep deletes expired rows of every table and keeps live ones", async () => {
    const schema = newSchema();
    const store = await openPostgresStore({
      url: backend.url,
      schema,
      timeoutMs: TIMEOUT_MS,
      poolSize: 2,
      sweepIntervalMs: 150,
    });
    try {
      const index = ownerIndexKey(scope, "session");
      await store.put(ownedKey(scope, "note", "short"), "v", { ttlMs: 50 });
      await store.put(ownedKey(scope, "note", "kept"), "v");
      await store.increment(counterKey("window", "short"), 1, { ttlMs: 50 });
      await store.increment(counterKey("window", "kept"), 1, { ttlMs: 60_000 });
      await store.indexAdd(index, "short", { ttlMs: 50 });
      await store.indexAdd(index, "kept");
      const count = (table: string) =>
        withAdmin(
          async (client) =>
            (await client.query<{ n: number }>(`SELECT count(*)::int AS n FROM "${schema}".${table}`))
              .rows[0]!.n,
        );
      const deadline = Date.now() + 5_000;
      for (;;) {
        const counts = [await count("records"), await count("counters"), await count("index_members")];
        if (counts.every((n) => n === 1)) break;
        assert.ok(Date.now() < deadline, `rows left after the sweep: ${counts.join(", ")}`);
        await sleep(100);
      }
      assert.equal(await store.get(ownedKey(scope, "note", "kept")), "v");
      assert.deepEqual(await store.indexList(index), ["kept"]);
    } finally {
      await store.close();
    }
  });

  it("racers for an expired claim or counter over two processes: one winner, an exact count", async () => {
    const url = storeUrl(newSchema());
    const racers = [await openStore(url), await openRemoteStore(url, "postgres")];
    try {
      for (let round = 0; round < 3; round++) {
        // An expired row is still in the table until swept: the racers take the replace path.
        const owner = ownershipKey("session", randomUUID());
        const counter = counterKey("window", randomUUID());
        await racers[0]!.claim(owner, "expired-owner", { ttlMs: 50 });
        await racers[0]!.increment(counter, 7, { ttlMs: 50 });
        await sleep(150);
        const claims = await Promise.all(
          Array.from({ length: 1_000 }, (_, i) =>
            racers[i % 2]!.claim(owner, `owner-${i}`, { ttlMs: 60_000 }),
          ),
        );
        const winners = claims.filter((outcome) => outcome.won);
        assert.equal(winners.length, 1, `round ${round}`);
        assert.ok(claims.every((outcome) => outcome.winner === winners[0]!.winner));
        assert.notEqual(winners[0]!.winner, "expired-owner");
        const increments = await Promise.all(
          Array.from({ length: 1_000 }, (_, i) => racers[i % 2]!.increment(counter, 1, { ttlMs: 60_000 })),
        );
        assert.ok(increments.every((outcome) => outcome.applied));
        assert.deepEqual(await racers[1]!.increment(counter, 0), { applied: true, value: 1_000 });
      }
    } finally {
      await Promise.all(racers.map((store) => store.close()));
    }
  });

  it("a refused first increment creates nothing: a later one starts the TTL afresh", async () => {
    const store = await openStore(storeUrl(newSchema()));
    try {
      const key = counterKey("window", randomUUID());
      assert.deepEqual(await store.increment(key, 5, { limit: 4, ttlMs: 400 }), { applied: false, value: 0 });
      await sleep(250);
      assert.deepEqual(await store.increment(key, 1, { ttlMs: 400 }), { applied: true, value: 1 });
      await sleep(250);
      assert.deepEqual(await store.increment(key, 0), { applied: true, value: 1 }, "still in its window");
      await sleep(300);
      assert.deepEqual(await store.increment(key, 0), { applied: true, value: 0 }, "window over");
    } finally {
      await store.close();
    }
  });

  it("a counter released to zero reads as absent and counts again from zero", async () => {
    const schema = newSchema();
    const store = await openStore(storeUrl(schema));
    try {
      const key = counterKey("slots", randomUUID());
      assert.deepEqual(await store.increment(key, -5), { applied: true, value: 0 }, "a release of nothing");
      assert.deepEqual(await store.increment(key, 3, { limit: 3 }), { applied: true, value: 3 });
      assert.deepEqual(await store.increment(key, -3, { limit: 0 }), { applied: true, value: 0 });
      assert.deepEqual(await store.increment(key, 1, { limit: 1 }), { applied: true, value: 1 });
    } finally {
      await store.close();
    }
  });

  it("stores any well-formed string exactly, U+0000 and astral characters included", async () => {
    const store = await openStore(storeUrl(newSchema()));
    try {
      const value = "nul\u0000between, 🙂, é, \uFFFD";
      const key = ownedKey(scope, "note", randomUUID());
      await store.put(key, value);
      assert.equal(await store.get(key), value);
      const index = ownerIndexKey(scope, "session");
      await store.indexAdd(index, "member\u0000x");
      assert.deepEqual(await store.indexList(index), ["member\u0000x"]);
      // A lone surrogate is not U+FFFD: it matches nothing stored and removes nothing.
      assert.equal(await store.takeIfEquals(key, value.replace("\uFFFD", "\ud800")), false);
      assert.equal(await store.get(key), value);
      assert.equal(await store.takeIfEquals(key, value), true);
    } finally {
      await store.close();
    }
  });

  it("schemas are isolated: stores in two schemas of one database share nothing", async () => {
    const [first, second] = await Promise.all([
      openStore(storeUrl(newSchema())),
      openStore(storeUrl(newSchema())),
    ]);
    try {
      const key = ownershipKey("session", randomUUID());
      assert.equal((await first.claim(key, "owner-a")).won, true);
      assert.equal((await second.claim(key, "owner-b")).won, true);
      assert.equal(await first.get(key), "owner-a");
      assert.equal(await second.get(key), "owner-b");
    } finally {
      await Promise.all([first.close(), second.close()]);
    }
  });

  it("a schema migrated by a newer release is refused, not used", async () => {
    const schema = newSchema();
    await (await openStore(storeUrl(schema))).close();
    await withAdmin((client) =>
      client.query(`INSERT INTO "${schema}".migrations (version) VALUES ($1)`, [POSTGRES_SCHEMA_VERSION + 1]),
    );
    await assert.rejects(openStore(storeUrl(schema)), (error) => isGateError(error, "ERR_STORE_UNAVAILABLE"));
  });

  it("openPostgresStore checks the schema name itself (it is a public entry point)", async () => {
    for (const schema of ['x"; DROP SCHEMA public; --', "Upper", "", "a".repeat(64)]) {
      await assert.rejects(openPostgresStore({ url: backend.url, schema }), (error) =>
        isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
    }
  });

  it("errors carry neither the password nor keys and values", async () => {
    const proxy = await FaultProxy.start(backend.host, backend.port);
    const port = proxy.port;
    await proxy.close();
    const url = new URL(storeUrl(newSchema(), port));
    url.username = "postgres";
    url.password = "sekrit-password";
    const error = await openStore(url.toString()).then(
      () => assert.fail("opened against a closed port"),
      (caught: unknown) => caught,
    );
    assert.ok(isGateError(error, "ERR_STORE_UNAVAILABLE"));
    const text = inspect(error, { depth: 10, showHidden: true });
    assert.ok(!text.includes("sekrit"), "the password leaked into the error");

    // A server error quoting row data (a value too large for an index entry would, for example)
    // arrives as its SQLSTATE only.
    const schema = newSchema();
    const store = await openStore(storeUrl(schema));
    try {
      await withAdmin((client) =>
        client.query(
          `ALTER TABLE "${schema}".records ADD CONSTRAINT no_secrets CHECK (value <> 'secret-value'::bytea)`,
        ),
      );
      const key = ownedKey(scope, "note", "secret-key-segment");
      const failure = await store.put(key, "secret-value").then(
        () => assert.fail("the check constraint did not fire"),
        (caught: unknown) => caught,
      );
      assert.ok(isGateError(failure, "ERR_STORE_UNAVAILABLE"));
      const shown = inspect(failure, { depth: 10, showHidden: true });
      assert.ok(!shown.includes("secret-value") && !shown.includes("secret-key-segment"), shown);
      assert.match(shown, /23514/, "the SQLSTATE is kept for the operator");
    } finally {
      await store.close();
    }
  });

  it("opening against a server that accepts but never answers fails within the timeout", async () => {
    const proxy = await FaultProxy.start(backend.host, backend.port);
    try {
      await proxy.setMode("hang");
      const started = Date.now();
      await assert.rejects(openStore(storeUrl(newSchema(), proxy.port)), (error) =>
        isGateError(error, "ERR_STORE_UNAVAILABLE"),
      );
      assert.ok(Date.now() - started < TIMEOUT_MS + 2_000, `open took ${Date.now() - started} ms to fail`);
    } finally {
      await proxy.close();
    }
  });

  it("close() returns within the timeout even when the server has stopped answering", async () => {
    const schema = newSchema();
    await (await openStore(storeUrl(schema))).close();
    const proxy = await FaultProxy.start(backend.host, backend.port);
    const store = await openStore(storeUrl(schema, proxy.port));
    try {
      await Promise.all(Array.from({ length: POOL_SIZE }, () => store.ping()));
      await proxy.setMode("hang");
      const started = Date.now();
      await store.close();
      assert.ok(Date.now() - started < TIMEOUT_MS + 2_000, `close took ${Date.now() - started} ms`);
      await assert.rejects(store.ping(), (error) => isGateError(error, "ERR_STORE_UNAVAILABLE"));
    } finally {
      await proxy.close();
    }
  });

  it("idle connections reset by the network do not crash the process, and service resumes", async () => {
    const schema = newSchema();
    const proxy = await FaultProxy.start(backend.host, backend.port);
    const store = await openStore(storeUrl(schema, proxy.port));
    try {
      await Promise.all(Array.from({ length: POOL_SIZE }, () => store.ping()));
      await proxy.setMode("reset");
      await sleep(100);
      await proxy.setMode("pass");
      await store.ping();
    } finally {
      await store.close();
      await proxy.close();
    }
  });

  it("a burst on one row that outlasts the timeout is served, not refused", async (t) => {
    const schema = newSchema();
    await (await openStore(storeUrl(schema))).close();
    // Each increment of one row waits for the previous one's commit; at this timeout the queue
    // takes many timeouts to drain, while the server answers all along.
    const url = new URL(storeUrl(schema));
    url.searchParams.set("timeoutMs", "100");
    url.searchParams.set("poolSize", "2");
    const store = await openStore(url.toString());
    try {
      const key = counterKey("burst", randomUUID());
      const started = Date.now();
      const outcomes = await Promise.all(Array.from({ length: 2_000 }, () => store.increment(key, 1)));
      t.diagnostic(`2,000 increments of one row took ${Date.now() - started} ms at a 100 ms timeout`);
      assert.ok(outcomes.every((outcome) => outcome.applied));
      assert.deepEqual(await store.increment(key, 0), { applied: true, value: 2_000 });
    } finally {
      await store.close();
    }
  });

  it("callers queued behind a silent server are refused within the timeout", async () => {
    const schema = newSchema();
    await (await openStore(storeUrl(schema))).close();
    const proxy = await FaultProxy.start(backend.host, backend.port);
    const store = await openStore(storeUrl(schema, proxy.port));
    try {
      await proxy.setMode("hang");
      const started = Date.now();
      const results = await Promise.allSettled(Array.from({ length: 200 }, () => store.ping()));
      const elapsed = Date.now() - started;
      assert.ok(
        results.every((r) => r.status === "rejected" && isGateError(r.reason, "ERR_STORE_UNAVAILABLE")),
      );
      assert.ok(elapsed < 2 * TIMEOUT_MS + 1_000, `200 queued calls took ${elapsed} ms to be refused`);
      await proxy.setMode("pass");
      await store.ping();
    } finally {
      await store.close();
      await proxy.close();
    }
  });
});
