import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import pg from "pg";
import { looksLikeMintedId, mintId } from "../../src/crypto/ids.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { isGateError } from "../../src/errors.ts";
import { anonymousPrincipal } from "../../src/identity/anonymous.ts";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";
import {
  createSessionRegistry,
  type SessionDenial,
  type SessionRegistry,
  type SessionRegistryOptions,
} from "../../src/sessions/session-registry.ts";
import { storeUnavailable } from "../../src/store/arguments.ts";
import type { Store } from "../../src/store/contract.ts";
import { ownedKey, type RecordKey } from "../../src/store/keys.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { openStore } from "../../src/store/open-store.ts";
import { postgresBackend, redisBackend } from "../support/backends.ts";
import { sharedHandle } from "../support/shared-handle.ts";

/**
 * The session registry's cases, run against every store backend: the registry's guarantees must not
 * depend on which store an operator picked.
 */

const UPSTREAM = "notes";
const OTHER_UPSTREAM = "calendar";
const VERSION = "2025-06-18";
const TIMEOUT_MS = 60_000;

// --- principals -----------------------------------------------------------------------------------

let serial = 0;

/** A principal of its own per call, so cases on a shared store never see each other's sessions. */
function principal(fields: Partial<Pick<Principal, "issuer" | "subject" | "tenant">> = {}): Principal {
  serial += 1;
  return makePrincipal({
    kind: "jwt",
    issuer: fields.issuer ?? "https://issuer-a.example",
    subject: fields.subject ?? `user-${serial}-${randomBytes(4).toString("hex")}`,
    tenant: fields.tenant ?? `tenant-${serial}-${randomBytes(4).toString("hex")}`,
    scopes: [],
    expiresAt: null,
  });
}

// --- store wrappers -------------------------------------------------------------------------------

interface Call {
  readonly method: string;
  readonly args: readonly unknown[];
}

interface Wrapped {
  readonly store: Store;
  readonly calls: Call[];
  /** When set, every call rejects as an unreachable backend does. */
  failing: boolean;
  /** When set, every claim waits for it before reaching the store. */
  beforeClaim: ((key: RecordKey) => Promise<void>) | null;
}

const STORE_METHODS = [
  "get",
  "getMany",
  "put",
  "claim",
  "take",
  "takeIfEquals",
  "replaceIfEquals",
  "delete",
  "increment",
  "indexAdd",
  "indexRemove",
  "indexList",
  "ping",
] as const;

/** Records every call (for counting and for scanning what was written) and can fail on demand. */
function wrap(inner: Store): Wrapped {
  const wrapped: Wrapped = {
    store: undefined as unknown as Store,
    calls: [],
    failing: false,
    beforeClaim: null,
  };
  const methods: Record<string, unknown> = {};
  for (const method of STORE_METHODS) {
    methods[method] = async (...args: unknown[]) => {
      wrapped.calls.push({ method, args });
      if (wrapped.failing) throw storeUnavailable(inner.backend, new Error("connection refused"));
      if (method === "claim" && wrapped.beforeClaim) await wrapped.beforeClaim(args[0] as RecordKey);
      return (inner[method] as (...a: unknown[]) => Promise<unknown>).apply(inner, args);
    };
  }
  (wrapped as { store: Store }).store = {
    ...(methods as unknown as Store),
    backend: inner.backend,
    close: async () => undefined,
  };
  return wrapped;
}

/** Every string a store call carried: encoded keys, values, members. */
function writtenText(calls: readonly Call[]): string {
  return calls
    .flatMap((call) =>
      call.args.map((arg) =>
        typeof arg === "string" ? arg : typeof arg === "object" && arg ? JSON.stringify(arg) : "",
      ),
    )
    .join("\n");
}

// --- backends -------------------------------------------------------------------------------------

interface Fixture {
  readonly store: Store;
  /** Every row the backend holds, as text, where the test can read the backend directly. */
  readonly dump?: () => Promise<string>;
  cleanup(): Promise<void>;
}

interface Backend {
  readonly name: string;
  readonly skip: string | false;
  open(): Promise<Fixture>;
}

const memoryBackend: Backend = {
  name: "memory",
  skip: false,
  async open() {
    const store = new MemoryStore();
    return { store: sharedHandle(store), cleanup: () => store.close() };
  },
};

const sqliteBackend: Backend = {
  name: "sqlite",
  skip: false,
  async open() {
    const dir = await mkdtemp(join(tmpdir(), "tenantgate-sessions-"));
    const file = join(dir, "store.db");
    const store = await openStore(`sqlite:${file}?busyTimeoutMs=2000`);
    return {
      store,
      // A second connection reads the file's rows (WAL included), as anyone holding a copy could.
      async dump() {
        const db = new DatabaseSync(file, { readOnly: true });
        try {
          const rows = [
            ...db.prepare("SELECT key, value FROM records").all(),
            ...db.prepare("SELECT index_key, member FROM index_members").all(),
            ...db.prepare("SELECT key, value FROM counters").all(),
          ];
          return JSON.stringify(rows);
        } finally {
          db.close();
        }
      },
      async cleanup() {
        await store.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  },
};

const redis = await redisBackend();
const redisStoreBackend: Backend = {
  name: "redis",
  skip: redis.skip,
  async open() {
    // A prefix of this run's own, so other runs and checkouts on the same server never meet.
    const prefix = `tgtest:${process.pid}:${randomBytes(8).toString("hex")}:`;
    const url = new URL(redis.url);
    url.search = "";
    url.searchParams.set("prefix", prefix);
    const store = await openStore(url.toString());
    return {
      store,
      async cleanup() {
        await store.close();
        const admin = new Redis(redis.url, { maxRetriesPerRequest: 1, connectTimeout: 5_000 });
        try {
          let cursor = "0";
          do {
            const [next, keys] = await admin.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1_000);
            if (keys.length > 0) await admin.unlink(...keys);
            cursor = next;
          } while (cursor !== "0");
        } finally {
          await admin.quit();
        }
      },
    };
  },
};

const postgres = await postgresBackend();
const postgresStoreBackend: Backend = {
  name: "postgres",
  skip: postgres.skip,
  async open() {
    const schema = `tgtest_${process.pid}_${randomBytes(6).toString("hex")}`;
    const url = new URL(postgres.url);
    url.search = "";
    url.searchParams.set("schema", schema);
    url.searchParams.set("poolSize", "4");
    const store = await openStore(url.toString());
    return {
      store,
      async cleanup() {
        await store.close();
        const admin = new pg.Client({ connectionString: postgres.url, connectionTimeoutMillis: 5_000 });
        await admin.connect();
        try {
          await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
        } finally {
          await admin.end();
        }
      },
    };
  },
};

// --- the cases ------------------------------------------------------------------------------------

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function describeSessionRegistry(backend: Backend): void {
  describe(`session registry on ${backend.name}`, { skip: backend.skip }, () => {
    let fixture: Fixture;
    const keyring = Keyring.ephemeral();

    before(async () => {
      fixture = await backend.open();
    });
    after(async () => {
      await fixture?.cleanup();
    });

    function setup(options: Partial<SessionRegistryOptions> = {}): {
      registry: SessionRegistry;
      wrapped: Wrapped;
      denials: SessionDenial[];
    } {
      const wrapped = wrap(fixture.store);
      const denials: SessionDenial[] = [];
      const registry = createSessionRegistry({
        store: wrapped.store,
        keyring,
        absoluteTimeoutMs: TIMEOUT_MS,
        onDenied: (denial) => {
          denials.push(denial);
        },
        ...options,
      });
      return { registry, wrapped, denials };
    }

    it("creates a session with a fresh minted id that resolves for its owner at its upstream", async () => {
      const { registry } = setup();
      const alice = principal();
      const before = Date.now();
      const { sessionId, session } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      assert.ok(looksLikeMintedId(sessionId), "a minted id");
      // >= 128 bits of base64url is >= 22 characters, all visible ASCII.
      assert.ok(sessionId.length >= 22 && /^[\x21-\x7e]+$/.test(sessionId));
      assert.deepEqual(session.owner, { tenant: alice.tenant, issuer: alice.issuer, subject: alice.subject });
      assert.ok(session.createdAt >= before && session.expiresAt === session.createdAt + TIMEOUT_MS);

      const resolved = await registry.resolve(sessionId, alice, UPSTREAM);
      assert.ok(resolved);
      assert.equal(resolved.upstream, UPSTREAM);
      assert.equal(resolved.protocolVersion, VERSION);
      assert.equal(resolved.sessionDigest, session.sessionDigest);
      assert.equal(resolved.upstreamSessionId, null);
      assert.deepEqual(await registry.list(alice), [session.sessionDigest]);

      // A refreshed token (another credential, same issuer, subject and tenant) is the same owner.
      const refreshed = makePrincipal({ ...alice, scopes: ["notes:read"], expiresAt: Date.now() + 60_000 });
      assert.ok(await registry.resolve(sessionId, refreshed, UPSTREAM));
    });

    it("with an idle timeout, an unused session is refused as idle; use keeps it alive; activity writes are throttled", async () => {
      const { registry, wrapped, denials } = setup({ idleTimeoutMs: 600, touchIntervalMs: 200 });
      const alice = principal();
      const idle = await registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION });
      const used = await registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION });
      const puts = () => wrapped.calls.filter((call) => call.method === "put").length;
      const before = puts();
      // Used every 100 ms for 1.2 s: alive throughout, and at most one activity write per 200 ms.
      for (let i = 0; i < 12; i++) {
        await sleep(100);
        assert.ok(await registry.resolve(used.sessionId, alice, UPSTREAM), `resolve ${i}`);
      }
      assert.ok(puts() - before <= 8, `throttled: ${puts() - before} writes for 12 resolves`);
      // keepAlive (an open stream) counts as activity too.
      const streamed = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      for (let i = 0; i < 5; i++) {
        await sleep(250);
        await registry.keepAlive(streamed.session);
      }
      assert.ok(await registry.resolve(streamed.sessionId, alice, UPSTREAM), "kept alive by keepAlive");
      // The one left alone is gone, for its owner too, and the refusal says why.
      assert.equal(await registry.resolve(idle.sessionId, alice, UPSTREAM), null);
      assert.ok(denials.some((denial) => denial.reason === "idle"));
    });

    it("maxPerPrincipal with reject: the principal's next create is refused; others are unaffected", async () => {
      const { registry } = setup({ maxPerPrincipal: 2, onLimit: "reject" });
      const alice = principal();
      const bob = principal();
      await registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION });
      await registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION });
      await assert.rejects(
        registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION }),
        (error: unknown) => isGateError(error, "ERR_SESSION_LIMIT"),
      );
      assert.ok(await registry.create({ principal: bob, upstream: UPSTREAM, protocolVersion: VERSION }));
    });

    it("maxPerPrincipal with evict-oldest: the principal's own oldest session goes, never anyone else's", async () => {
      const { registry } = setup({ maxPerPrincipal: 2, onLimit: "evict-oldest" });
      const alice = principal();
      const bob = principal();
      const bobs = await registry.create({ principal: bob, upstream: UPSTREAM, protocolVersion: VERSION });
      const first = await registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION });
      await sleep(5);
      const second = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      await sleep(5);
      const third = await registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION });
      assert.equal(await registry.resolve(first.sessionId, alice, UPSTREAM), null, "the oldest was evicted");
      assert.ok(await registry.resolve(second.sessionId, alice, UPSTREAM));
      assert.ok(await registry.resolve(third.sessionId, alice, UPSTREAM));
      assert.ok(await registry.resolve(bobs.sessionId, bob, UPSTREAM), "bob's session is untouched");
      assert.equal((await registry.list(alice)).length, 2);
    });

    it("a stranger's resolve never counts as the owner's activity", async () => {
      const { registry } = setup({ idleTimeoutMs: 500, touchIntervalMs: 50 });
      const alice = principal();
      const bob = principal();
      const { sessionId } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      for (let i = 0; i < 8; i++) {
        await sleep(100);
        assert.equal(await registry.resolve(sessionId, bob, UPSTREAM), null);
      }
      assert.equal(
        await registry.resolve(sessionId, alice, UPSTREAM),
        null,
        "went idle despite bob's attempts",
      );
    });

    it("anonymousOwner names the throwaway owner of an anonymous session only, one read for every id", async () => {
      const { registry, wrapped, denials } = setup();
      const anonymous = anonymousPrincipal();
      const alice = principal();
      const anon = await registry.create({
        principal: anonymous,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      const authed = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });

      wrapped.calls.length = 0;
      const owner = await registry.anonymousOwner(anon.sessionId, UPSTREAM);
      assert.ok(owner);
      assert.equal(owner.subject, anonymous.subject);
      assert.ok(await registry.resolve(anon.sessionId, owner, UPSTREAM), "resolves as its owner");
      assert.equal(denials.length, 0);

      const refusals: [string, string][] = [
        [authed.sessionId, "foreign-principal"],
        [mintId(), "unknown"],
        ["not/an id", "malformed"],
      ];
      for (const [sessionId, reason] of refusals) {
        wrapped.calls.length = 0;
        denials.length = 0;
        assert.equal(await registry.anonymousOwner(sessionId, UPSTREAM), null, reason);
        assert.deepEqual(
          wrapped.calls.map((call) => call.method),
          ["get"],
          `the same store operations: ${reason}`,
        );
        assert.deepEqual(
          denials.map((denial) => [denial.reason, denial.operation, denial.caller, denial.upstream]),
          [[reason, "resolve", null, UPSTREAM]],
          `reported: ${reason}`,
        );
      }
      // The authenticated owner keeps the session.
      assert.ok(await registry.resolve(authed.sessionId, alice, UPSTREAM));
    });

    it("stores the upstream's session id once, for the owner only", async () => {
      const { registry, denials } = setup();
      const alice = principal();
      const { sessionId } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      const stranger = principal();
      assert.equal(
        await registry.setUpstreamSessionId(sessionId, stranger, UPSTREAM, "upstream-forged"),
        false,
      );
      assert.equal(
        await registry.setUpstreamSessionId(sessionId, alice, OTHER_UPSTREAM, "upstream-elsewhere"),
        false,
        "another upstream, even for the owner",
      );
      assert.equal((await registry.resolve(sessionId, alice, UPSTREAM))?.upstreamSessionId, null);
      assert.equal(await registry.setUpstreamSessionId(sessionId, alice, UPSTREAM, "upstream-1"), true);
      assert.equal(
        await registry.setUpstreamSessionId(sessionId, alice, UPSTREAM, "upstream-2"),
        false,
        "set once",
      );
      assert.equal((await registry.resolve(sessionId, alice, UPSTREAM))?.upstreamSessionId, "upstream-1");
      assert.equal(
        await registry.setUpstreamSessionId(mintId(), alice, UPSTREAM, "upstream-3"),
        false,
        "unknown id",
      );
      assert.equal(
        await registry.setUpstreamSessionId("bad id", alice, UPSTREAM, "upstream-3"),
        false,
        "malformed",
      );
      // Every refusal went through the audit hook, as resolve's and end's do; "set once" is no refusal.
      assert.deepEqual(
        denials
          .filter((d) => d.operation === "set-upstream-session")
          .map((d) => [d.reason, d.upstream, d.sessionDigest === null]),
        [
          ["foreign-principal", UPSTREAM, false],
          ["other-upstream", OTHER_UPSTREAM, false],
          ["unknown", UPSTREAM, false],
          ["malformed", UPSTREAM, true],
        ],
      );

      const withId = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: "upstream-at-create",
      });
      assert.equal(
        (await registry.resolve(withId.sessionId, alice, UPSTREAM))?.upstreamSessionId,
        "upstream-at-create",
      );
    });

    it("answers null for every other principal: other tenant, same tenant, same sub with another issuer or tenant", async () => {
      const { registry, denials } = setup();
      const alice = principal();
      const { sessionId, session } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: "alice-upstream",
      });
      const others: [string, Principal][] = [
        ["another principal in another tenant", principal()],
        ["another principal in the same tenant", principal({ tenant: alice.tenant, issuer: alice.issuer })],
        [
          "the same subject from another issuer",
          principal({ subject: alice.subject, tenant: alice.tenant, issuer: "https://issuer-b.example" }),
        ],
        ["the same subject with another tenant", principal({ subject: alice.subject, issuer: alice.issuer })],
      ];
      for (const [label, other] of others) {
        assert.equal(await registry.resolve(sessionId, other, UPSTREAM), null, label);
        assert.equal(await registry.end(sessionId, other, UPSTREAM), false, label);
        assert.equal(await registry.setUpstreamSessionId(sessionId, other, UPSTREAM, "x"), false, label);
      }
      assert.equal(denials.length, others.length * 3);
      assert.deepEqual(
        new Set(denials.map((d) => d.operation)),
        new Set(["resolve", "end", "set-upstream-session"]),
      );
      for (const denial of denials) {
        assert.equal(denial.reason, "foreign-principal");
        assert.equal(denial.sessionDigest, session.sessionDigest);
        assert.ok(!JSON.stringify(denial).includes(sessionId), "the raw id never reaches the audit hook");
      }
      // The owner's session is untouched by all of it.
      assert.equal((await registry.resolve(sessionId, alice, UPSTREAM))?.upstreamSessionId, "alice-upstream");
    });

    it("answers null at another upstream, even for the owner", async () => {
      const { registry, denials } = setup();
      const alice = principal();
      const { sessionId } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      assert.equal(await registry.resolve(sessionId, alice, OTHER_UPSTREAM), null);
      assert.equal(await registry.end(sessionId, alice, OTHER_UPSTREAM), false);
      assert.deepEqual(
        denials.map((d) => d.reason),
        ["other-upstream", "other-upstream"],
      );
      assert.ok(await registry.resolve(sessionId, alice, UPSTREAM));
    });

    it("answers null for unknown and malformed ids", async () => {
      const { registry, denials } = setup();
      const alice = principal();
      await registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION });
      const unknown = mintId();
      assert.equal(await registry.resolve(unknown, alice, UPSTREAM), null);
      const malformed = [
        "",
        "short",
        "has space in it and is long enough",
        "a".repeat(5_000),
        "\ud800".repeat(30),
      ];
      for (const id of malformed) {
        assert.equal(await registry.resolve(id, alice, UPSTREAM), null, JSON.stringify(id.slice(0, 20)));
        assert.equal(await registry.end(id, alice, UPSTREAM), false);
        assert.equal(await registry.revoke(id), false);
      }
      assert.equal(await registry.resolve(42 as unknown as string, alice, UPSTREAM), null);
      assert.equal(denials[0]?.reason, "unknown");
      assert.ok(denials[0]?.sessionDigest && !denials[0].sessionDigest.includes(unknown));
      assert.ok(denials.slice(1).every((d) => d.reason === "malformed" && d.sessionDigest === null));
    });

    it("answers null after the owner ends the session, for the owner too", async () => {
      const { registry } = setup();
      const alice = principal();
      const { sessionId, session } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: "u-1",
      });
      const other = await registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION });
      assert.equal(await registry.end(sessionId, alice, UPSTREAM), true);
      assert.equal(await registry.resolve(sessionId, alice, UPSTREAM), null);
      assert.equal(await registry.end(sessionId, alice, UPSTREAM), false, "ending twice");
      assert.deepEqual(await registry.list(alice), [other.session.sessionDigest]);
      assert.ok(!(await registry.list(alice)).includes(session.sessionDigest));
      assert.ok(
        await registry.resolve(other.sessionId, alice, UPSTREAM),
        "the owner's other session lives on",
      );
    });

    it("answers null after an operator revokes the session, for the owner too", async () => {
      const { registry } = setup();
      const alice = principal();
      const { sessionId } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: "u-1",
      });
      assert.equal(await registry.revoke(sessionId), true);
      assert.equal(await registry.resolve(sessionId, alice, UPSTREAM), null);
      assert.deepEqual(await registry.list(alice), []);
      assert.equal(await registry.revoke(sessionId), false);
      assert.equal(await registry.revoke(mintId()), false);
      // A late upstream id cannot bring it back.
      assert.equal(await registry.setUpstreamSessionId(sessionId, alice, UPSTREAM, "u-2"), false);
      assert.equal(await registry.resolve(sessionId, alice, UPSTREAM), null);
    });

    it("answers null once the absolute timeout has passed (store expiry)", async () => {
      const { registry } = setup({ absoluteTimeoutMs: 300 });
      const alice = principal();
      const { sessionId } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: "u-1",
      });
      assert.ok(await registry.resolve(sessionId, alice, UPSTREAM));
      await sleep(700);
      assert.equal(await registry.resolve(sessionId, alice, UPSTREAM), null);
      assert.deepEqual(await registry.list(alice), []);
      assert.equal(await registry.setUpstreamSessionId(sessionId, alice, UPSTREAM, "u-2"), false);
    });

    it("answers null once the record's own expiry has passed, even if the store still holds it", async () => {
      let offset = 0;
      const { registry, denials } = setup({ now: () => Date.now() + offset });
      const alice = principal();
      const { sessionId } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      offset = TIMEOUT_MS;
      assert.equal(await registry.resolve(sessionId, alice, UPSTREAM), null);
      assert.equal(denials[0]?.reason, "expired");
      assert.equal(await registry.setUpstreamSessionId(sessionId, alice, UPSTREAM, "late"), false);
    });

    it("writes no raw session id and no raw upstream session id to the store", async () => {
      const { registry, wrapped } = setup();
      const alice = principal();
      const upstreamIds = [`upstream-secret-${randomBytes(12).toString("hex")}`];
      const sessionIds: string[] = [];
      const first = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: upstreamIds[0],
      });
      sessionIds.push(first.sessionId);
      const second = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      sessionIds.push(second.sessionId);
      upstreamIds.push(`upstream-secret-${randomBytes(12).toString("hex")}`);
      assert.equal(
        await registry.setUpstreamSessionId(second.sessionId, alice, UPSTREAM, upstreamIds[1]!),
        true,
      );
      assert.equal(
        (await registry.resolve(second.sessionId, alice, UPSTREAM))?.upstreamSessionId,
        upstreamIds[1],
      );

      const written = writtenText(wrapped.calls);
      const stored = (await fixture.dump?.()) ?? "";
      for (const secret of [...sessionIds, ...upstreamIds]) {
        assert.ok(!written.includes(secret), "no store call carries a raw id");
        assert.ok(!stored.includes(secret), "no stored row holds a raw id");
      }
      if (fixture.dump) assert.ok(stored.includes(first.session.sessionDigest), "the dump did read the rows");
    });

    it("refuses a sealed mapping copied into another session's or principal's record", async () => {
      const { registry, denials } = setup();
      const alice = principal();
      const bob = principal();
      const source = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: "alice-upstream",
      });
      const aliceOther = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      const bobs = await registry.create({ principal: bob, upstream: UPSTREAM, protocolVersion: VERSION });
      const mapping = (p: Principal, sessionDigest: string) =>
        ownedKey(
          { tenant: p.tenant, issuer: p.issuer, subject: p.subject },
          "session-upstream",
          sessionDigest,
        );
      const sealed = await fixture.store.get(mapping(alice, source.session.sessionDigest));
      assert.ok(sealed, "the mapping is where the schema says");

      await fixture.store.put(mapping(alice, aliceOther.session.sessionDigest), sealed);
      await fixture.store.put(mapping(bob, bobs.session.sessionDigest), sealed);
      // Refused like an unknown id: nothing of the mapping (or of why) reaches the caller.
      assert.equal(await registry.resolve(aliceOther.sessionId, alice, UPSTREAM), null);
      assert.equal(await registry.resolve(bobs.sessionId, bob, UPSTREAM), null);
      assert.deepEqual(
        denials.map((d) => d.reason),
        ["mapping-invalid", "mapping-invalid"],
      );
      assert.equal(
        (await registry.resolve(source.sessionId, alice, UPSTREAM))?.upstreamSessionId,
        "alice-upstream",
      );
    });

    it("gives 200 concurrent creates 200 distinct ids, each owned by its creator", async () => {
      const { registry } = setup();
      const creators = Array.from({ length: 200 }, () => principal());
      const created = await Promise.all(
        creators.map((creator, i) =>
          registry.create({
            principal: creator,
            upstream: UPSTREAM,
            protocolVersion: VERSION,
            upstreamSessionId: `upstream-${i}`,
          }),
        ),
      );
      assert.equal(new Set(created.map((c) => c.sessionId)).size, 200);
      await Promise.all(
        created.map(async ({ sessionId }, i) => {
          const owner = creators[i]!;
          const neighbour = creators[(i + 1) % creators.length]!;
          assert.equal(
            (await registry.resolve(sessionId, owner, UPSTREAM))?.upstreamSessionId,
            `upstream-${i}`,
          );
          assert.equal(await registry.resolve(sessionId, neighbour, UPSTREAM), null);
          assert.equal((await registry.list(owner)).length, 1);
        }),
      );
    });

    it("performs the same store operations for foreign, unknown, malformed and other-upstream ids", async () => {
      const { registry, wrapped } = setup();
      const alice = principal();
      const bob = principal();
      const { sessionId } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: "u-1",
      });
      const attempts: [string, () => Promise<unknown>][] = [
        ["foreign", () => registry.resolve(sessionId, bob, UPSTREAM)],
        ["unknown", () => registry.resolve(mintId(), bob, UPSTREAM)],
        ["malformed", () => registry.resolve("not/an id", bob, UPSTREAM)],
        ["other-upstream", () => registry.resolve(sessionId, alice, OTHER_UPSTREAM)],
        ["owner", () => registry.resolve(sessionId, alice, UPSTREAM)],
      ];
      const operations = new Map<string, string[]>();
      for (const [label, attempt] of attempts) {
        wrapped.calls.length = 0;
        await attempt();
        operations.set(
          label,
          wrapped.calls.map((call) => `${call.method}:${(call.args[0] as unknown[]).length}`),
        );
      }
      for (const [label, methods] of operations) {
        // One round trip: the ownership record, the caller's mapping, the kill switch's next generation.
        assert.deepEqual(methods, ["getMany:3"], label);
      }

      const ends: [string, () => Promise<unknown>][] = [
        ["foreign", () => registry.end(sessionId, bob, UPSTREAM)],
        ["unknown", () => registry.end(mintId(), bob, UPSTREAM)],
        ["malformed", () => registry.end("not/an id", bob, UPSTREAM)],
        ["other-upstream", () => registry.end(sessionId, alice, OTHER_UPSTREAM)],
      ];
      for (const [label, attempt] of ends) {
        wrapped.calls.length = 0;
        assert.equal(await attempt(), false, label);
        assert.deepEqual(
          wrapped.calls.map((call) => call.method),
          ["get"],
          `end ${label}`,
        );
      }

      const sets: [string, () => Promise<unknown>][] = [
        ["foreign", () => registry.setUpstreamSessionId(sessionId, bob, UPSTREAM, "x")],
        ["unknown", () => registry.setUpstreamSessionId(mintId(), bob, UPSTREAM, "x")],
        ["malformed", () => registry.setUpstreamSessionId("not/an id", bob, UPSTREAM, "x")],
        ["other-upstream", () => registry.setUpstreamSessionId(sessionId, alice, OTHER_UPSTREAM, "x")],
      ];
      for (const [label, attempt] of sets) {
        wrapped.calls.length = 0;
        assert.equal(await attempt(), false, label);
        assert.deepEqual(
          wrapped.calls.map((call) => call.method),
          ["get"],
          `setUpstreamSessionId ${label}`,
        );
      }
    });

    it("removes a mapping whose claim landed after end removed the session, and answers false", async () => {
      const { registry, wrapped, denials } = setup();
      const alice = principal();
      const { sessionId, session } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        expectsUpstreamSession: true,
      });
      let reached!: () => void;
      const claimReached = new Promise<void>((resolve) => {
        reached = resolve;
      });
      let release!: () => void;
      const claimReleased = new Promise<void>((resolve) => {
        release = resolve;
      });
      wrapped.beforeClaim = async () => {
        reached();
        await claimReleased;
      };
      const late = registry.setUpstreamSessionId(sessionId, alice, UPSTREAM, "late-upstream");
      await claimReached;
      wrapped.beforeClaim = null;
      // The session is ended while the claim is in flight: its delete of the mapping finds nothing.
      assert.equal(await registry.end(sessionId, alice, UPSTREAM), true);
      release();
      assert.equal(await late, false);
      const mapping = ownedKey(
        { tenant: alice.tenant, issuer: alice.issuer, subject: alice.subject },
        "session-upstream",
        session.sessionDigest,
      );
      assert.equal(await fixture.store.get(mapping), null, "the late mapping was removed");
      assert.equal(await registry.resolve(sessionId, alice, UPSTREAM), null);
      assert.ok(denials.some((d) => d.operation === "set-upstream-session" && d.reason === "unknown"));
    });

    it("revokes by the digest list shows, and every session of a principal", async () => {
      const { registry } = setup();
      const alice = principal();
      const bob = principal();
      const scope = (p: Principal) => ({ tenant: p.tenant, issuer: p.issuer, subject: p.subject });
      const first = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: "u-1",
      });
      const [listed] = await registry.list(alice);
      assert.equal(listed, first.session.sessionDigest);
      assert.equal(await registry.revokeByDigest(listed!), true);
      assert.equal(await registry.resolve(first.sessionId, alice, UPSTREAM), null);
      assert.deepEqual(await registry.list(alice), []);
      assert.equal(
        await fixture.store.get(ownedKey(scope(alice), "session-upstream", listed!)),
        null,
        "the mapping went with it",
      );
      assert.equal(await registry.revokeByDigest(listed!), false, "revoking twice");
      for (const bad of ["", "short", `${listed!}x`, `${listed!.slice(0, 42)}/`, "a".repeat(44)]) {
        await assert.rejects(registry.revokeByDigest(bad), (e) => isGateError(e, "ERR_ARGUMENT_INVALID"));
      }

      const others = await Promise.all(
        [1, 2, 3].map((i) =>
          registry.create({
            principal: alice,
            upstream: UPSTREAM,
            protocolVersion: VERSION,
            upstreamSessionId: `u-${i}`,
          }),
        ),
      );
      const bobs = await registry.create({ principal: bob, upstream: UPSTREAM, protocolVersion: VERSION });
      assert.equal(await registry.revokeAll(alice), 3);
      assert.deepEqual(await registry.list(alice), []);
      for (const { sessionId, session } of others) {
        assert.equal(await registry.resolve(sessionId, alice, UPSTREAM), null);
        assert.equal(
          await fixture.store.get(ownedKey(scope(alice), "session-upstream", session.sessionDigest)),
          null,
        );
      }
      assert.ok(
        await registry.resolve(bobs.sessionId, bob, UPSTREAM),
        "another principal's session lives on",
      );
      assert.deepEqual(await registry.list(bob), [bobs.session.sessionDigest]);
      assert.equal(await registry.revokeAll(alice), 0);
    });

    it("never gives the mapping a TTL beyond the session's lifetime, whatever the clock says", async () => {
      let offset = 0;
      const { registry, wrapped } = setup({ now: () => Date.now() + offset });
      const alice = principal();
      const { sessionId } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      // The clock steps back a long way: the record's expiry is now far more than a lifetime away.
      offset = -10 * TIMEOUT_MS;
      wrapped.calls.length = 0;
      assert.equal(await registry.setUpstreamSessionId(sessionId, alice, UPSTREAM, "u-1"), true);
      const claims = wrapped.calls.filter((call) => call.method === "claim");
      assert.equal(claims.length, 1);
      const ttlMs = (claims[0]!.args[2] as { ttlMs: number }).ttlMs;
      assert.ok(Number.isSafeInteger(ttlMs) && ttlMs >= 1 && ttlMs <= TIMEOUT_MS, String(ttlMs));
    });

    it("records whole milliseconds from a clock that gives fractions", async () => {
      const { registry } = setup({ now: () => Date.now() + 0.75 });
      const alice = principal();
      const { sessionId, session } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      assert.ok(Number.isSafeInteger(session.createdAt) && Number.isSafeInteger(session.expiresAt));
      assert.ok(await registry.resolve(sessionId, alice, UPSTREAM), "the stored record parses");
    });

    it("refuses a session that expects an upstream session id while it has none", async () => {
      const { registry, denials } = setup();
      const alice = principal();
      const pending = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        expectsUpstreamSession: true,
      });
      assert.equal(pending.session.expectsUpstreamSession, true);
      assert.equal(await registry.resolve(pending.sessionId, alice, UPSTREAM), null, "not set yet");
      assert.equal(denials.at(-1)?.reason, "mapping-missing");
      assert.equal(await registry.setUpstreamSessionId(pending.sessionId, alice, UPSTREAM, "u-1"), true);
      assert.equal((await registry.resolve(pending.sessionId, alice, UPSTREAM))?.upstreamSessionId, "u-1");

      // As a resolve racing an end sees it: the record still there, the mapping already gone.
      const withId = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: "u-2",
      });
      assert.equal(withId.session.expectsUpstreamSession, true, "implied by an upstream id");
      await fixture.store.delete(
        ownedKey(
          { tenant: alice.tenant, issuer: alice.issuer, subject: alice.subject },
          "session-upstream",
          withId.session.sessionDigest,
        ),
      );
      assert.equal(await registry.resolve(withId.sessionId, alice, UPSTREAM), null);
      assert.equal(denials.at(-1)?.reason, "mapping-missing");

      // A session created expecting none resolves with null, as before.
      const without = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      assert.equal(without.session.expectsUpstreamSession, false);
      assert.equal((await registry.resolve(without.sessionId, alice, UPSTREAM))?.upstreamSessionId, null);
    });

    it("S4 the kill switch refuses every existing session on every registry sharing the store; new ones work", async () => {
      const one = setup();
      const two = setup();
      const alice = principal();
      const bob = principal();
      const made = await Promise.all(
        [alice, bob].map((p) =>
          one.registry.create({
            principal: p,
            upstream: UPSTREAM,
            protocolVersion: VERSION,
            upstreamSessionId: "u",
          }),
        ),
      );
      const pending = await one.registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        expectsUpstreamSession: true,
      });
      for (const [index, p] of [alice, bob].entries()) {
        assert.ok(await two.registry.resolve(made[index]!.sessionId, p, UPSTREAM), "live before");
      }

      const generation = await one.registry.killSwitch();
      assert.ok(Number.isSafeInteger(generation) && generation >= 1);
      assert.ok(made.every(({ session }) => session.killGeneration < generation));
      for (const { registry, denials } of [two, one]) {
        denials.length = 0;
        for (const [index, p] of [alice, bob].entries()) {
          assert.equal(await registry.resolve(made[index]!.sessionId, p, UPSTREAM), null);
        }
        assert.deepEqual(
          denials.map((d) => d.reason),
          ["kill-switch", "kill-switch"],
        );
      }
      // The other operations on a session refuse it too, with the reason recorded.
      two.denials.length = 0;
      assert.equal(await two.registry.end(made[0]!.sessionId, alice, UPSTREAM), false);
      assert.equal(
        await two.registry.setUpstreamSessionId(pending.sessionId, alice, UPSTREAM, "late"),
        false,
      );
      assert.deepEqual(
        two.denials.map((d) => [d.operation, d.reason]),
        [
          ["end", "kill-switch"],
          ["set-upstream-session", "kill-switch"],
        ],
      );

      // A session created afterwards, through either registry, works through both.
      const fresh = await two.registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      assert.equal(fresh.session.killGeneration, generation);
      assert.ok(await one.registry.resolve(fresh.sessionId, alice, UPSTREAM));
      assert.ok(await two.registry.resolve(fresh.sessionId, alice, UPSTREAM));

      // Kill switches racing through two registries: each gives a generation above every session
      // created before it was called, and neither brings anything back.
      const [a, b] = await Promise.all([one.registry.killSwitch(), two.registry.killSwitch()]);
      assert.ok(a > generation && b > generation);
      assert.equal(await one.registry.resolve(fresh.sessionId, alice, UPSTREAM), null);
      assert.equal(await two.registry.resolve(made[1]!.sessionId, bob, UPSTREAM), null);
      // A registry that starts afterwards (a replica started later) learns every generation.
      const late = setup();
      assert.equal(await late.registry.resolve(fresh.sessionId, alice, UPSTREAM), null);
      const after = await late.registry.create({
        principal: bob,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      assert.equal(after.session.killGeneration, Math.max(a, b));
      assert.ok(await one.registry.resolve(after.sessionId, bob, UPSTREAM));
    });

    it("S4 sessions the kill switch ended hold no place under maxPerPrincipal", async () => {
      const { registry } = setup({ maxPerPrincipal: 1, onLimit: "reject" });
      const alice = principal();
      await registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION });
      await assert.rejects(
        registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION }),
        (error: unknown) => isGateError(error, "ERR_SESSION_LIMIT"),
      );
      // Another replica fires the kill switch; this one learns it on the next create.
      await setup().registry.killSwitch();
      const again = await registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION });
      assert.ok(await registry.resolve(again.sessionId, alice, UPSTREAM));
      assert.deepEqual(await registry.list(alice), [again.session.sessionDigest]);
    });

    it("rejects with ERR_STORE_UNAVAILABLE when the store cannot answer, never resolving", async () => {
      const { registry, wrapped } = setup();
      const alice = principal();
      const { sessionId } = await registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
      });
      wrapped.failing = true;
      const unavailable = (error: unknown) => isGateError(error, "ERR_STORE_UNAVAILABLE");
      await assert.rejects(registry.resolve(sessionId, alice, UPSTREAM), unavailable);
      await assert.rejects(registry.resolve(mintId(), alice, UPSTREAM), unavailable);
      await assert.rejects(registry.resolve("malformed id", alice, UPSTREAM), unavailable);
      await assert.rejects(
        registry.create({ principal: alice, upstream: UPSTREAM, protocolVersion: VERSION }),
        unavailable,
      );
      await assert.rejects(registry.setUpstreamSessionId(sessionId, alice, UPSTREAM, "u"), unavailable);
      await assert.rejects(registry.end(sessionId, alice, UPSTREAM), unavailable);
      await assert.rejects(registry.revoke(sessionId), unavailable);
      await assert.rejects(registry.revokeByDigest("x".repeat(43)), unavailable);
      await assert.rejects(registry.revokeAll(alice), unavailable);
      await assert.rejects(registry.list(alice), unavailable);
      wrapped.failing = false;
      assert.ok(await registry.resolve(sessionId, alice, UPSTREAM), "answers again once the store does");
    });
  });
}

for (const backend of [memoryBackend, sqliteBackend, redisStoreBackend, postgresStoreBackend]) {
  describeSessionRegistry(backend);
}

describe("session registry without a store", () => {
  const keyring = Keyring.ephemeral();

  it("refuses a timeout that no store accepts as a TTL", () => {
    for (const absoluteTimeoutMs of [0, -1, 1.5, Number.NaN, 31 * 24 * 60 * 60 * 1000]) {
      assert.throws(
        () => createSessionRegistry({ store: new MemoryStore(), keyring, absoluteTimeoutMs }),
        (error) => isGateError(error, "ERR_ARGUMENT_INVALID"),
      );
    }
  });

  it("never adopts an id whose claim was lost, and gives up after a few fresh ones", async () => {
    const inner = new MemoryStore();
    const claimed: string[] = [];
    const store: Store = {
      ...sharedHandle(inner),
      // Every claim loses, as if each fresh id were already taken by someone else.
      claim: async (key) => {
        claimed.push(key.encoded);
        return { won: false, winner: "someone-else" };
      },
    };
    const registry = createSessionRegistry({ store, keyring, absoluteTimeoutMs: TIMEOUT_MS });
    await assert.rejects(
      registry.create({ principal: principal(), upstream: UPSTREAM, protocolVersion: VERSION }),
      (error) => isGateError(error, "ERR_INTERNAL"),
    );
    assert.equal(new Set(claimed).size, claimed.length, "a fresh id per attempt");
    assert.ok(claimed.length >= 2);
    await inner.close();
  });

  it("an async audit hook that rejects never becomes an unhandled rejection", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => {
      unhandled.push(reason);
    };
    process.on("unhandledRejection", onUnhandled);
    const store = new MemoryStore();
    try {
      let calls = 0;
      const registry = createSessionRegistry({
        store,
        keyring,
        absoluteTimeoutMs: TIMEOUT_MS,
        onDenied: async () => {
          calls += 1;
          await Promise.resolve();
          throw new Error("audit sink down");
        },
      });
      const alice = principal();
      assert.equal(await registry.resolve(mintId(), alice, UPSTREAM), null);
      assert.equal(await registry.end("malformed id", alice, UPSTREAM), false);
      assert.equal(await registry.setUpstreamSessionId(mintId(), alice, UPSTREAM, "u"), false);
      assert.equal(calls, 3);
      // Unhandled rejections are reported after the microtask queue drains: give them a few turns.
      for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
      await sleep(20);
      assert.deepEqual(unhandled, []);
    } finally {
      process.off("unhandledRejection", onUnhandled);
      await store.close();
    }
  });

  it("fails a create whose upstream mapping claim is lost, leaving no session behind", async () => {
    const inner = new MemoryStore();
    const base = sharedHandle(inner);
    const store: Store = {
      ...base,
      // Ownership claims win; the mapping's claim loses, as if a value were already there.
      claim: async (key, value, options) =>
        key.namespace === "data" ? { won: false, winner: "someone-else" } : base.claim(key, value, options),
    };
    const registry = createSessionRegistry({ store, keyring, absoluteTimeoutMs: TIMEOUT_MS });
    const alice = principal();
    await assert.rejects(
      registry.create({
        principal: alice,
        upstream: UPSTREAM,
        protocolVersion: VERSION,
        upstreamSessionId: "u-1",
      }),
      (error) => isGateError(error, "ERR_INTERNAL"),
    );
    assert.deepEqual(await registry.list(alice), [], "the index entry was removed");
    await inner.close();
  });

  it("an audit hook that throws does not change the answer", async () => {
    const store = new MemoryStore();
    const registry = createSessionRegistry({
      store,
      keyring,
      absoluteTimeoutMs: TIMEOUT_MS,
      onDenied: () => {
        throw new Error("audit sink down");
      },
    });
    assert.equal(await registry.resolve(mintId(), principal(), UPSTREAM), null);
    await store.close();
  });
});
