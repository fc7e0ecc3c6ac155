import { mkdir, open } from "node:fs/promises";
import { dirname } from "node:path";
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { GateError, invalidArgument } from "../errors.ts";
import {
  checkBatch,
  checkBucket,
  checkCounter,
  checkLease,
  checkLeaseMembers,
  checkLeaseTtl,
  checkMember,
  checkTtl,
  checkValue,
  storeClosed,
  storeUnavailable,
} from "./arguments.ts";
import type {
  ClaimOutcome,
  CounterOptions,
  CounterOutcome,
  Store,
  TokenBucket,
  TokenOutcome,
  TtlOptions,
} from "./contract.ts";
import type { BucketKey, CounterKey, IndexKey, LeaseKey, RecordKey } from "./keys.ts";
import { stepBucket, tokenOutcome } from "./token-bucket.ts";

/**
 * A store in one SQLite file (node:sqlite), shared by every process that opens the same path.
 *
 * Atomicity. node:sqlite is synchronous: a method runs its statements without yielding to the event
 * loop, so calls on one connection never interleave. Across processes, SQLite's write lock is the only
 * arbiter, and each read-modify-write takes it before it reads:
 * - take, takeIfEquals, replaceIfEquals, delete, indexAdd and indexRemove are one statement each
 *   (`DELETE … RETURNING`, `DELETE … WHERE value = ?`, `UPDATE … WHERE value = ?`,
 *   `INSERT … ON CONFLICT DO UPDATE`). A write statement acquires the
 *   write lock before it reads a row and holds it until it commits, so its check and its change see
 *   the same row.
 * - claim and increment must report what they found when they do not write (the winner; the unchanged
 *   value under a limit), which one statement cannot do unambiguously, and takeTokens, leaseAcquire
 *   and leaseRenew read, decide and write over several statements, so they run as
 *   `BEGIN IMMEDIATE` transactions: IMMEDIATE takes the write lock at BEGIN, before the SELECT, so no
 *   other process can write between the read and the write. (A deferred transaction would read first
 *   and could fail its upgrade with SQLITE_BUSY_SNAPSHOT, which the busy timeout does not retry.)
 *
 * Expired rows are treated as absent by every statement (`expires_at > now`) and deleted by a sweep on
 * an unref'd timer; a sweep that fails is retried on the next tick, as nothing reads expired rows.
 *
 * The store sees only encoded keys (digests and escaped segments, keys.ts) and opaque values (JSON,
 * digests, sealed text); still, the file and its folder are private to the process's user.
 */

export interface SqliteStoreOptions {
  /** The database file (created if missing). */
  readonly path: string;
  /** How long a call waits for another process's lock before ERR_STORE_UNAVAILABLE. */
  readonly busyTimeoutMs?: number;
  /** How often expired rows are deleted. Default 60 s. */
  readonly sweepIntervalMs?: number;
}

/**
 * node:sqlite is synchronous, so waiting for another process's lock blocks this process's event loop
 * for up to this long: a short default keeps a stuck peer from stalling every request, and the caller
 * fails closed with ERR_STORE_UNAVAILABLE instead.
 */
const DEFAULT_BUSY_TIMEOUT_MS = 1_000;
const DEFAULT_SWEEP_INTERVAL_MS = 60_000;
/** Rows deleted per sweep statement: each batch is its own short write, so peers get the lock between. */
const SWEEP_BATCH = 1_000;
/** Bounds one tick's work (and event-loop time); what is left waits for the next tick. */
const SWEEP_MAX_BATCHES = 50;

/**
 * Schema migrations, in order: entry i brings `user_version` from i to i + 1. Never edit an entry that
 * has shipped; append a new one.
 */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE records (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    expires_at INTEGER
  ) STRICT;
  CREATE INDEX records_expiry ON records (expires_at) WHERE expires_at IS NOT NULL;
  CREATE TABLE counters (
    key TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL,
    expires_at INTEGER
  ) STRICT;
  CREATE INDEX counters_expiry ON counters (expires_at) WHERE expires_at IS NOT NULL;
  CREATE TABLE index_members (
    index_key TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (index_key, member)
  ) STRICT;
  CREATE INDEX index_members_expiry ON index_members (expires_at) WHERE expires_at IS NOT NULL;
  `,
  // Token buckets store the instant (epoch ms, fractional) they are full again, which is also their
  // expiry (token-bucket.ts). Lease members always expire: that frees a dead replica's slots.
  `
  CREATE TABLE buckets (
    key TEXT PRIMARY KEY NOT NULL,
    expires_at REAL NOT NULL
  ) STRICT;
  CREATE INDEX buckets_expiry ON buckets (expires_at);
  CREATE TABLE lease_members (
    lease_key TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (lease_key, member)
  ) STRICT;
  CREATE INDEX lease_members_expiry ON lease_members (expires_at);
  `,
];

const LIVE = "(expires_at IS NULL OR expires_at > :now)";

interface Statements {
  readonly get: StatementSync;
  readonly getMany: StatementSync;
  readonly put: StatementSync;
  readonly take: StatementSync;
  readonly takeIfEquals: StatementSync;
  readonly replaceIfEquals: StatementSync;
  readonly counterGet: StatementSync;
  readonly counterCreate: StatementSync;
  readonly counterUpdate: StatementSync;
  readonly counterDelete: StatementSync;
  readonly indexAdd: StatementSync;
  readonly indexRemove: StatementSync;
  readonly indexList: StatementSync;
  readonly bucketGet: StatementSync;
  readonly bucketPut: StatementSync;
  readonly leaseDropExpired: StatementSync;
  readonly leaseRefresh: StatementSync;
  readonly leaseCount: StatementSync;
  readonly leaseInsert: StatementSync;
  readonly leaseRelease: StatementSync;
  readonly ping: StatementSync;
  readonly sweep: readonly StatementSync[];
}

function prepareStatements(db: DatabaseSync): Statements {
  return {
    get: db.prepare(`SELECT value FROM records WHERE key = :key AND ${LIVE}`),
    getMany: db.prepare(
      `SELECT key, value FROM records WHERE key IN (SELECT value FROM json_each(:keys)) AND ${LIVE}`,
    ),
    put: db.prepare(
      `INSERT INTO records (key, value, expires_at) VALUES (:key, :value, :expiresAt)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at`,
    ),
    // Deleting an expired row here is harmless (it reads as absent anyway); only a live one is returned.
    take: db.prepare("DELETE FROM records WHERE key = :key RETURNING value, expires_at"),
    takeIfEquals: db.prepare(`DELETE FROM records WHERE key = :key AND value = :expected AND ${LIVE}`),
    // expires_at is not in the SET list: a replaced value keeps the record's expiry.
    replaceIfEquals: db.prepare(
      `UPDATE records SET value = :value WHERE key = :key AND value = :expected AND ${LIVE}`,
    ),
    counterGet: db.prepare(`SELECT value FROM counters WHERE key = :key AND ${LIVE}`),
    // Replaces an expired row, if any: a counter recreated after expiry starts again with a new TTL.
    counterCreate: db.prepare(
      `INSERT INTO counters (key, value, expires_at) VALUES (:key, :value, :expiresAt)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at`,
    ),
    // Later increments do not extend the TTL, so the expiry is left as it is.
    counterUpdate: db.prepare("UPDATE counters SET value = :value WHERE key = :key"),
    // A counter at zero is removed (the contract: absent and 0 are the same, and it takes no space).
    counterDelete: db.prepare("DELETE FROM counters WHERE key = :key"),
    indexAdd: db.prepare(
      `INSERT INTO index_members (index_key, member, expires_at) VALUES (:key, :member, :expiresAt)
       ON CONFLICT (index_key, member) DO UPDATE SET expires_at = excluded.expires_at`,
    ),
    indexRemove: db.prepare(
      "DELETE FROM index_members WHERE index_key = :key AND member = :member RETURNING expires_at",
    ),
    indexList: db.prepare(`SELECT member FROM index_members WHERE index_key = :key AND ${LIVE}`),
    // A row past its instant is a full bucket, as an absent one is: stepBucket reads both alike.
    bucketGet: db.prepare("SELECT expires_at FROM buckets WHERE key = :key"),
    bucketPut: db.prepare(
      `INSERT INTO buckets (key, expires_at) VALUES (:key, :fullAt)
       ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at`,
    ),
    leaseDropExpired: db.prepare("DELETE FROM lease_members WHERE lease_key = :key AND expires_at <= :now"),
    // Only a live member is refreshed: an expired one is never brought back.
    leaseRefresh: db.prepare(
      `UPDATE lease_members SET expires_at = :expiresAt
       WHERE lease_key = :key AND member = :member AND expires_at > :now`,
    ),
    leaseCount: db.prepare(
      "SELECT count(*) AS live FROM lease_members WHERE lease_key = :key AND expires_at > :now",
    ),
    leaseInsert: db.prepare(
      `INSERT INTO lease_members (lease_key, member, expires_at) VALUES (:key, :member, :expiresAt)
       ON CONFLICT (lease_key, member) DO UPDATE SET expires_at = excluded.expires_at`,
    ),
    leaseRelease: db.prepare(
      "DELETE FROM lease_members WHERE lease_key = :key AND member = :member RETURNING expires_at",
    ),
    // Reads the file header inside a read transaction, so it fails if the file cannot be read.
    ping: db.prepare("PRAGMA user_version"),
    sweep: ["records", "counters", "index_members", "buckets", "lease_members"].map((table) =>
      db.prepare(
        `DELETE FROM ${table} WHERE rowid IN
         (SELECT rowid FROM ${table} WHERE expires_at <= :now LIMIT ${SWEEP_BATCH})`,
      ),
    ),
  };
}

function isLive(expiresAt: unknown, now: number): boolean {
  return expiresAt === null || (typeof expiresAt === "number" && expiresAt > now);
}

/** Runs `body` on the open store, turning any driver failure into ERR_STORE_UNAVAILABLE. */
function guarded<T>(body: () => T): T {
  try {
    return body();
  } catch (error) {
    if (error instanceof GateError) throw error;
    throw storeUnavailable("sqlite", error);
  }
}

/**
 * Creates the folder (0700) and the file (0600) before SQLite does, so the database never exists with
 * the process umask's looser mode. SQLite gives its -wal and -shm files the database file's mode.
 * An existing folder or file keeps the mode its operator chose.
 */
async function createPrivateFile(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const handle = await open(path, "a", 0o600);
  await handle.close();
}

function migrate(db: DatabaseSync): void {
  const latest = MIGRATIONS.length;
  const version = (): number => Number(db.prepare("PRAGMA user_version").get()?.["user_version"] ?? 0);
  if (version() === latest) return;
  // Two processes opening a new file at once: the second waits here for the first's write lock, then
  // reads the version again and finds nothing left to do.
  db.exec("BEGIN IMMEDIATE");
  try {
    const current = version();
    if (current > latest) {
      throw new GateError("ERR_STORE_UNAVAILABLE", "store unavailable", {
        detail: `sqlite schema version ${current} is newer than this build's ${latest}`,
      });
    }
    for (let next = current; next < latest; next++) db.exec(MIGRATIONS[next]!);
    // PRAGMA takes no bound parameters; `latest` is a number from this file.
    db.exec(`PRAGMA user_version = ${latest}`);
    db.exec("COMMIT");
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK");
    throw error;
  }
}

class SqliteStore implements Store {
  readonly backend = "sqlite" as const;
  readonly #db: DatabaseSync;
  readonly #statements: Statements;
  readonly #sweepTimer: NodeJS.Timeout;
  #closed = false;

  constructor(db: DatabaseSync, sweepIntervalMs: number) {
    this.#db = db;
    this.#statements = prepareStatements(db);
    this.#sweepTimer = setInterval(() => this.#sweep(), sweepIntervalMs);
    this.#sweepTimer.unref();
  }

  async get(key: RecordKey): Promise<string | null> {
    this.#open();
    return guarded(() => {
      const row = this.#statements.get.get({ key: key.encoded, now: Date.now() });
      return row ? String(row["value"]) : null;
    });
  }

  async getMany(keys: readonly RecordKey[]): Promise<Array<string | null>> {
    this.#open();
    checkBatch(keys);
    if (keys.length === 0) return [];
    const names = keys.map((key) => key.encoded);
    return guarded(() => {
      const rows = this.#statements.getMany.all({ keys: JSON.stringify(names), now: Date.now() });
      const found = new Map(rows.map((row) => [String(row["key"]), String(row["value"])]));
      return names.map((name) => found.get(name) ?? null);
    });
  }

  async put(key: RecordKey, value: string, options?: TtlOptions): Promise<void> {
    this.#open();
    checkValue(value);
    const ttlMs = checkTtl(options);
    guarded(() => {
      this.#statements.put.run({ key: key.encoded, value, expiresAt: expiry(ttlMs) });
    });
  }

  async claim(key: RecordKey, value: string, options?: TtlOptions): Promise<ClaimOutcome> {
    this.#open();
    checkValue(value);
    const ttlMs = checkTtl(options);
    return this.#immediate(() => {
      const existing = this.#statements.get.get({ key: key.encoded, now: Date.now() });
      if (existing) return { won: false, winner: String(existing["value"]) };
      // Replaces an expired row, if any: an expired claim is free again.
      this.#statements.put.run({ key: key.encoded, value, expiresAt: expiry(ttlMs) });
      return { won: true, winner: value };
    });
  }

  async take(key: RecordKey): Promise<string | null> {
    this.#open();
    return guarded(() => {
      const now = Date.now();
      const row = this.#statements.take.get({ key: key.encoded });
      return row && isLive(row["expires_at"], now) ? String(row["value"]) : null;
    });
  }

  async takeIfEquals(key: RecordKey, expected: string): Promise<boolean> {
    this.#open();
    // SQLite would bind an ill-formed string as UTF-8 with U+FFFD in place of lone surrogates, so it
    // could match a stored U+FFFD. Stored values are always well-formed (checkValue): no match.
    if (typeof expected !== "string" || !expected.isWellFormed()) return false;
    return guarded(
      () => this.#statements.takeIfEquals.run({ key: key.encoded, expected, now: Date.now() }).changes === 1,
    );
  }

  async replaceIfEquals(key: RecordKey, expected: string, value: string): Promise<boolean> {
    this.#open();
    checkValue(value);
    // As in takeIfEquals: an ill-formed `expected` would be bound with U+FFFD and could match.
    if (typeof expected !== "string" || !expected.isWellFormed()) return false;
    return guarded(
      () =>
        this.#statements.replaceIfEquals.run({ key: key.encoded, expected, value, now: Date.now() })
          .changes === 1,
    );
  }

  async delete(key: RecordKey): Promise<boolean> {
    return (await this.take(key)) !== null;
  }

  async increment(key: CounterKey, delta: number, options?: CounterOptions): Promise<CounterOutcome> {
    this.#open();
    const { ttlMs, limit } = checkCounter(delta, options);
    return this.#immediate(() => {
      const row = this.#statements.counterGet.get({ key: key.encoded, now: Date.now() });
      const current = row ? Number(row["value"]) : 0;
      // The limit holds back increases only: a release is never refused.
      if (limit !== undefined && delta > 0 && current + delta > limit)
        return { applied: false, value: current };
      const next = Math.max(0, current + delta);
      // Beyond 2^53 SQLite would keep an exact integer that JavaScript cannot read back.
      if (!Number.isSafeInteger(next)) throw invalidArgument("delta", "would take the counter past 2^53");
      if (next === 0) {
        if (row) this.#statements.counterDelete.run({ key: key.encoded });
      } else if (row) this.#statements.counterUpdate.run({ key: key.encoded, value: next });
      else this.#statements.counterCreate.run({ key: key.encoded, value: next, expiresAt: expiry(ttlMs) });
      return { applied: true, value: next };
    });
  }

  async indexAdd(key: IndexKey, member: string, options?: TtlOptions): Promise<void> {
    this.#open();
    checkMember(member);
    const ttlMs = checkTtl(options);
    guarded(() => {
      this.#statements.indexAdd.run({ key: key.encoded, member, expiresAt: expiry(ttlMs) });
    });
  }

  async indexRemove(key: IndexKey, member: string): Promise<boolean> {
    this.#open();
    // As in takeIfEquals: an ill-formed member was never added (checkMember), so it is not there.
    if (typeof member !== "string" || !member.isWellFormed()) return false;
    return guarded(() => {
      const now = Date.now();
      const row = this.#statements.indexRemove.get({ key: key.encoded, member });
      return row !== undefined && isLive(row["expires_at"], now);
    });
  }

  async indexList(key: IndexKey): Promise<string[]> {
    this.#open();
    return guarded(() =>
      this.#statements.indexList
        .all({ key: key.encoded, now: Date.now() })
        .map((row) => String(row["member"])),
    );
  }

  async takeTokens(key: BucketKey, bucket: TokenBucket): Promise<TokenOutcome> {
    this.#open();
    const parameters = checkBucket(bucket);
    const step = this.#immediate(() => {
      // Read inside the transaction, after the write lock: no other process moves the bucket between.
      const now = Date.now();
      const row = this.#statements.bucketGet.get({ key: key.encoded });
      const result = stepBucket(row ? Number(row["expires_at"]) : null, now, parameters);
      // A refused take writes nothing.
      if (result.allowed) this.#statements.bucketPut.run({ key: key.encoded, fullAt: result.fullAt });
      return result;
    });
    return tokenOutcome(step.allowed, step.remaining, step.waitMs);
  }

  async leaseAcquire(key: LeaseKey, member: string, limit: number, ttlMs: number): Promise<boolean> {
    this.#open();
    const checked = checkLease(limit, ttlMs);
    checkMember(member);
    return this.#immediate(() => {
      const now = Date.now();
      const expiresAt = now + checked.ttlMs;
      this.#statements.leaseDropExpired.run({ key: key.encoded, now });
      if (this.#statements.leaseRefresh.run({ key: key.encoded, member, expiresAt, now }).changes === 1) {
        return true;
      }
      const live = Number(this.#statements.leaseCount.get({ key: key.encoded, now })?.["live"] ?? 0);
      if (live >= checked.limit) return false;
      this.#statements.leaseInsert.run({ key: key.encoded, member, expiresAt });
      return true;
    });
  }

  async leaseRenew(key: LeaseKey, members: readonly string[], ttlMs: number): Promise<number> {
    this.#open();
    const ttl = checkLeaseTtl(ttlMs);
    const distinct = checkLeaseMembers(members);
    if (distinct.length === 0) return 0;
    return this.#immediate(() => {
      const now = Date.now();
      let renewed = 0;
      for (const member of distinct) {
        renewed += Number(
          this.#statements.leaseRefresh.run({ key: key.encoded, member, expiresAt: now + ttl, now }).changes,
        );
      }
      return renewed;
    });
  }

  async leaseRelease(key: LeaseKey, member: string): Promise<boolean> {
    this.#open();
    // As in indexRemove: an ill-formed member was never added.
    if (typeof member !== "string" || !member.isWellFormed()) return false;
    return guarded(() => {
      const now = Date.now();
      const row = this.#statements.leaseRelease.get({ key: key.encoded, member });
      return row !== undefined && isLive(row["expires_at"], now);
    });
  }

  async leaseCount(key: LeaseKey): Promise<number> {
    this.#open();
    return guarded(() =>
      Number(this.#statements.leaseCount.get({ key: key.encoded, now: Date.now() })?.["live"] ?? 0),
    );
  }

  async ping(): Promise<void> {
    this.#open();
    guarded(() => this.#statements.ping.get());
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#sweepTimer);
    guarded(() => this.#db.close());
  }

  #open(): void {
    if (this.#closed) throw storeClosed(this.backend);
  }

  /**
   * A BEGIN IMMEDIATE transaction around a synchronous body: the write lock is held from before the
   * first read to the commit, and no other call on this connection can run in between.
   */
  #immediate<T>(body: () => T): T {
    return guarded(() => {
      this.#db.exec("BEGIN IMMEDIATE");
      try {
        const result = body();
        this.#db.exec("COMMIT");
        return result;
      } catch (error) {
        // Never leave the connection inside a transaction holding the write lock.
        if (this.#db.isTransaction) this.#db.exec("ROLLBACK");
        throw error;
      }
    });
  }

  #sweep(): void {
    if (this.#closed) return;
    try {
      const now = Date.now();
      for (const statement of this.#statements.sweep) {
        for (let batch = 0; batch < SWEEP_MAX_BATCHES; batch++) {
          if (Number(statement.run({ now }).changes) < SWEEP_BATCH) break;
        }
      }
    } catch {
      // Locked or failing: expired rows already read as absent, and the next tick tries again.
    }
  }
}

function expiry(ttlMs: number | undefined): number | null {
  return ttlMs === undefined ? null : Date.now() + ttlMs;
}

export async function openSqliteStore(options: SqliteStoreOptions): Promise<Store> {
  const busyTimeoutMs = options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS;
  if (!Number.isSafeInteger(busyTimeoutMs) || busyTimeoutMs <= 0) {
    throw invalidArgument("busyTimeoutMs", "must be a positive integer");
  }
  const sweepIntervalMs = options.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS;
  if (!Number.isSafeInteger(sweepIntervalMs) || sweepIntervalMs <= 0) {
    throw invalidArgument("sweepIntervalMs", "must be a positive integer");
  }
  let db: DatabaseSync | undefined;
  try {
    await createPrivateFile(options.path);
    db = new DatabaseSync(options.path);
    // The busy timeout first, so that the journal-mode switch and the migration wait for a peer too.
    db.exec(`PRAGMA busy_timeout = ${busyTimeoutMs}`);
    // WAL: readers never wait for the writer, and one writer's commit needs no fsync of the database
    // (synchronous=NORMAL): a power cut can lose the last commits, never corrupt the file.
    db.exec("PRAGMA journal_mode = WAL");
    db.exec("PRAGMA synchronous = NORMAL");
    migrate(db);
    return new SqliteStore(db, sweepIntervalMs);
  } catch (error) {
    try {
      db?.close();
    } catch {
      // Already failing; the original error is the one to report.
    }
    if (error instanceof GateError) throw error;
    throw storeUnavailable("sqlite", error);
  }
}
