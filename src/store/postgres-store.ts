import { Socket } from "node:net";
import pg from "pg";
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
import { BUCKET_EPSILON, tokenOutcome } from "./token-bucket.ts";

/**
 * The PostgreSQL backend, for deployments with several replicas.
 *
 * Every operation is one SQL statement (atomic on its own, one round trip); the argument for each
 * is written beside its SQL below (`leaseAcquire` calls a function the migration creates, whose
 * statements run under a per-key lock). Time comes from the database (`now()`,
 * `clock_timestamp()`), so replicas with skewed clocks agree on what has expired.
 * docs/storage-schema.md describes the tables.
 */

export interface PostgresStoreOptions {
  /** postgres:// URL without query parameters (may carry a password: never log it). */
  readonly url: string;
  /** Schema holding this store's tables (created if missing). */
  readonly schema: string;
  /** Bound on connecting and on each query before ERR_STORE_UNAVAILABLE. */
  readonly timeoutMs?: number;
  /** Connections in the pool (keep small: the server allows 100 in all). */
  readonly poolSize?: number;
  /** How often expired rows are deleted. Default 60 s. */
  readonly sweepIntervalMs?: number;
}

const BACKEND = "postgres";
const DEFAULT_TIMEOUT_MS = 1_000;
const DEFAULT_POOL_SIZE = 4;
const DEFAULT_SWEEP_INTERVAL_MS = 60_000;
const SWEEP_BATCH = 1_000;
/** Batches per table per sweep, so one sweep never holds a connection for long. */
const SWEEP_MAX_BATCHES = 20;
// Same rule as open-store.ts, checked again because this module is also a public entry point
// (`tenantgate/store/postgres`) that callers may reach without going through openStore.
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

// ---------------------------------------------------------------------------------------------
// Migrations. Each entry runs once per schema, in order, inside the migration transaction.
// ---------------------------------------------------------------------------------------------

/**
 * Keys are `text COLLATE "C"`: they are ASCII (keys.ts percent-encodes every segment), and byte
 * order makes equality exact and independent of the database's locale. Values and index members
 * are `bytea` holding UTF-8: the contract accepts any well-formed string, including U+0000, which
 * PostgreSQL `text` cannot hold, and bytea does not depend on the database encoding.
 *
 * `last_claim_won` and `last_increment_applied` record the outcome of the statement that wrote the
 * row version; `claim` and `increment` always write the row and read their own outcome back from
 * RETURNING (see the atomicity arguments below).
 */
const MIGRATIONS: readonly ((schema: string) => string)[] = [
  (s) => `
    CREATE TABLE ${s}.records (
      key text COLLATE "C" PRIMARY KEY,
      value bytea NOT NULL,
      expires_at timestamptz,
      last_claim_won boolean NOT NULL DEFAULT false
    );
    CREATE INDEX records_expires_at ON ${s}.records (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE ${s}.counters (
      key text COLLATE "C" PRIMARY KEY,
      value bigint NOT NULL,
      expires_at timestamptz,
      last_increment_applied boolean NOT NULL DEFAULT true
    );
    CREATE INDEX counters_expires_at ON ${s}.counters (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE ${s}.index_members (
      index_key text COLLATE "C" NOT NULL,
      member bytea NOT NULL,
      expires_at timestamptz,
      PRIMARY KEY (index_key, member)
    );
    CREATE INDEX index_members_expires_at ON ${s}.index_members (expires_at)
      WHERE expires_at IS NOT NULL;
  `,
  // Token buckets: `expires_at` is the instant the bucket is full again (token-bucket.ts), which is
  // also when the row stops mattering; the `last_*` columns hold the outcome of the statement that
  // last wrote the row, read back by `takeTokens` from its own RETURNING, as `last_claim_won` is.
  //
  // Lease members: one row per member. A count-then-insert cannot be one statement under READ
  // COMMITTED (its snapshot predates any lock it takes), so `lease_acquire` is a function: it takes
  // a transaction-scoped advisory lock on the lease key, and each statement after it, in a VOLATILE
  // function, reads a fresh snapshot that includes every insert of the previous lock holder (which
  // committed before its lock was released). Only acquires insert, and each holds the lock, so the
  // count it checks cannot change under it but by a release, renewal or sweep, none of which adds a
  // live member. Two keys whose hashes collide only wait for each other. The search_path is pinned
  // and every name qualified, so no object in another schema can stand in for these.
  (s) => `
    CREATE TABLE ${s}.buckets (
      key text COLLATE "C" PRIMARY KEY,
      expires_at timestamptz NOT NULL,
      last_allowed boolean NOT NULL DEFAULT true,
      last_remaining double precision NOT NULL DEFAULT 0,
      last_wait_ms double precision NOT NULL DEFAULT 0
    );
    CREATE INDEX buckets_expires_at ON ${s}.buckets (expires_at);
    CREATE TABLE ${s}.lease_members (
      lease_key text COLLATE "C" NOT NULL,
      member bytea NOT NULL,
      expires_at timestamptz NOT NULL,
      PRIMARY KEY (lease_key, member)
    );
    CREATE INDEX lease_members_expires_at ON ${s}.lease_members (expires_at);
    CREATE FUNCTION ${s}.lease_acquire(p_key text, p_member bytea, p_limit bigint, p_ttl_ms bigint)
      RETURNS boolean LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
    AS $fn$
    DECLARE
      t timestamptz;
      live bigint;
    BEGIN
      PERFORM pg_advisory_xact_lock(hashtextextended('tenantgate/lease/' || p_key, 0));
      t := clock_timestamp();
      DELETE FROM ${s}.lease_members WHERE lease_key = p_key AND expires_at <= t;
      UPDATE ${s}.lease_members SET expires_at = t + p_ttl_ms * interval '1 millisecond'
        WHERE lease_key = p_key AND member = p_member;
      IF FOUND THEN
        RETURN true;
      END IF;
      SELECT count(*) INTO live FROM ${s}.lease_members WHERE lease_key = p_key;
      IF live >= p_limit THEN
        RETURN false;
      END IF;
      INSERT INTO ${s}.lease_members (lease_key, member, expires_at)
        VALUES (p_key, p_member, t + p_ttl_ms * interval '1 millisecond');
      RETURN true;
    END
    $fn$;
  `,
];

/** The schema version this release writes and understands. */
export const POSTGRES_SCHEMA_VERSION = MIGRATIONS.length;

function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/**
 * Brings `schema` to POSTGRES_SCHEMA_VERSION. Runs in one transaction under an advisory lock keyed
 * by the schema name, so processes opening a new schema at once queue instead of racing on
 * CREATE (which would fail one of them with a unique violation on the catalog). The lock is
 * transaction-scoped, so it is released by COMMIT, ROLLBACK or a dropped connection, and it works
 * behind a transaction-pooling proxy. DDL runs only when something is missing, so a role without
 * CREATE can run tenantgate on a schema an administrator has migrated.
 */
async function migrate(client: pg.PoolClient, schema: string, timeoutMs: number): Promise<void> {
  const s = quoteIdentifier(schema);
  // SET LOCAL rather than startup parameters: poolers such as PgBouncer refuse unknown startup
  // parameters. The idle timeout frees the lock if this process stalls mid-migration.
  await client.query(
    `BEGIN; SET LOCAL statement_timeout = ${timeoutMs}; ` +
      `SET LOCAL idle_in_transaction_session_timeout = ${timeoutMs}`,
  );
  await client.query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", [
    `tenantgate/migrate/${schema}`,
  ]);
  const found = await client.query<{ has_schema: boolean; has_table: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS has_schema,
            to_regclass($2) IS NOT NULL AS has_table`,
    [schema, `${s}.migrations`],
  );
  const { has_schema: hasSchema, has_table: hasTable } = found.rows[0] ?? {};
  // CREATE SCHEMA IF NOT EXISTS checks the CREATE privilege before existence: ask first.
  if (!hasSchema) await client.query(`CREATE SCHEMA ${s}`);
  if (!hasTable) {
    await client.query(
      `CREATE TABLE ${s}.migrations (
         version integer PRIMARY KEY,
         applied_at timestamptz NOT NULL DEFAULT now()
       )`,
    );
  }
  const current = await client.query<{ version: number }>(
    `SELECT coalesce(max(version), 0) AS version FROM ${s}.migrations`,
  );
  const version = current.rows[0]?.version ?? 0;
  if (version > POSTGRES_SCHEMA_VERSION) {
    // Fail closed: an older release cannot know what a newer schema's rows mean.
    throw new GateError("ERR_STORE_UNAVAILABLE", "store unavailable", {
      detail: `postgres schema is at version ${version}; this release knows up to ${POSTGRES_SCHEMA_VERSION}`,
    });
  }
  for (let next = version + 1; next <= POSTGRES_SCHEMA_VERSION; next++) {
    await client.query(MIGRATIONS[next - 1]!(s));
    await client.query(`INSERT INTO ${s}.migrations (version) VALUES ($1)`, [next]);
  }
  await client.query("COMMIT");
}

// ---------------------------------------------------------------------------------------------
// Statements. `$ttl` is milliseconds or NULL; NULL + interval is NULL, i.e. no expiry.
// ---------------------------------------------------------------------------------------------

const LIVE = "(expires_at IS NULL OR expires_at > now())";

interface Statements {
  readonly get: string;
  readonly getMany: string;
  readonly put: string;
  readonly claim: string;
  readonly take: string;
  readonly takeIfEquals: string;
  readonly replaceIfEquals: string;
  readonly increment: string;
  readonly indexAdd: string;
  readonly indexRemove: string;
  readonly indexList: string;
  readonly takeTokens: string;
  readonly leaseAcquire: string;
  readonly leaseRenew: string;
  readonly leaseRelease: string;
  readonly leaseCount: string;
  readonly sweep: readonly string[];
}

function statements(schema: string): Statements {
  const s = quoteIdentifier(schema);
  const expiry = (param: string) => `now() + ${param}::bigint * interval '1 millisecond'`;
  const sweep = (table: string, key: string) =>
    // SKIP LOCKED: a sweep never waits on (or blocks) a live operation, nor on another replica's
    // sweep. The outer `expires_at <= now()` is re-checked on the latest row version, so a row
    // that a concurrent claim has just revived is left alone.
    `DELETE FROM ${s}.${table} WHERE (${key}) IN (
       SELECT ${key} FROM ${s}.${table} WHERE expires_at <= now()
       LIMIT ${SWEEP_BATCH} FOR UPDATE SKIP LOCKED
     ) AND expires_at <= now()`;
  return {
    get: `SELECT value FROM ${s}.records WHERE key = $1 AND ${LIVE}`,
    getMany: `SELECT key, value FROM ${s}.records WHERE key = ANY($1::text[]) AND ${LIVE}`,

    put: `INSERT INTO ${s}.records AS r (key, value, expires_at, last_claim_won)
          VALUES ($1, $2, ${expiry("$3")}, false)
          ON CONFLICT (key) DO UPDATE
            SET value = excluded.value, expires_at = excluded.expires_at, last_claim_won = false`,

    // Atomicity, first path: `seen` reads the statement's snapshot. If it holds a live record, that
    // record was committed and live at the instant the snapshot was taken, so "lost, the winner is
    // its value" is exactly what a claim at that instant answers; nothing is written (no row lock,
    // no WAL flush), which keeps repeated and losing claims cheap.
    //
    // Second path, taken only when the snapshot shows no live record: INSERT … ON CONFLICT DO
    // UPDATE either inserts or, if the key exists (including a row committed after the snapshot,
    // which `seen` cannot see), waits for and locks the latest committed version and evaluates SET
    // against that version, not against the snapshot. There is no WHERE on DO UPDATE, so RETURNING
    // always yields the version this very statement wrote. Claims of one key on this path run one
    // at a time on the row lock; a call replaces value and expiry only if the version it locked has
    // expired (or it inserted), and records that in `last_claim_won`. So exactly one call per live
    // lifetime is told it won, and every call returns the value stored after it: the winner's. A
    // NULL expiry makes `expires_at <= …` NULL: the CASE keeps the row, coalesce reports false.
    // The write path judges expiry, and computes the new expiry, by `clock_timestamp()` (the time of
    // the write), not `now()` (the statement's start): a claim that waited on the row lock longer
    // than its TTL must not write a record that is already expired, or the next claimant would win
    // too.
    claim: `WITH seen AS (
              SELECT value FROM ${s}.records WHERE key = $1::text AND ${LIVE}
            ), written AS (
              INSERT INTO ${s}.records AS r (key, value, expires_at, last_claim_won)
              SELECT $1::text, $2::bytea, ${expiry("$3")}, true
              WHERE NOT EXISTS (SELECT 1 FROM seen)
              ON CONFLICT (key) DO UPDATE SET
                value = CASE WHEN r.expires_at <= clock_timestamp() THEN excluded.value ELSE r.value END,
                expires_at = CASE WHEN r.expires_at <= clock_timestamp()
                  THEN clock_timestamp() + $3::bigint * interval '1 millisecond' ELSE r.expires_at END,
                last_claim_won = coalesce(r.expires_at <= clock_timestamp(), false)
              RETURNING value, last_claim_won
            )
            SELECT value, false AS won FROM seen
            UNION ALL
            SELECT value, last_claim_won AS won FROM written`,

    // Atomicity: DELETE locks the row; a concurrent DELETE of the same row waits for the lock and,
    // once the first commits, re-checks its WHERE against the latest version, finds it deleted and
    // returns nothing. Of any number of takers exactly one receives the row. An expired row is
    // deleted too (it is garbage) but reported as absent. `delete` is the same statement.
    take: `DELETE FROM ${s}.records WHERE key = $1 RETURNING value, ${LIVE} AS live`,

    // Atomicity: as take, with the comparison in the WHERE clause, which PostgreSQL re-evaluates on
    // the latest row version after waiting for a lock, so a value overwritten by a concurrent put is
    // compared in its new form, and a mismatch deletes nothing.
    takeIfEquals: `DELETE FROM ${s}.records WHERE key = $1 AND value = $2 AND ${LIVE}`,

    // Atomicity: as takeIfEquals. UPDATE locks the row and, after waiting for a concurrent writer,
    // re-evaluates its WHERE on the latest row version: of two replacements of one value the second
    // finds the first's value, not `expected`, and writes nothing. `expires_at` is left as it is.
    replaceIfEquals: `UPDATE ${s}.records SET value = $3 WHERE key = $1 AND value = $2 AND ${LIVE}`,

    // Atomicity, first path: when a limit is given, `delta` is an increase, and the snapshot's value
    // (0 if absent or expired) plus `delta` exceeds the limit, the increment is refused at the
    // snapshot's instant, when that value was committed, and nothing is written. Refusals are what
    // an abusive caller produces in bulk, so they cost no row lock and no WAL flush.
    //
    // Otherwise the same ON CONFLICT argument as claim: increments of one key run one at a time on
    // the row lock, each computing from the latest committed version, and the limit is checked and
    // the sum written in that one locked step, so concurrent increments are exact and a limit is
    // never exceeded. A refusal decided there writes the row back unchanged. Releases (delta <= 0)
    // are never refused, and the sum is floored at 0.
    //
    // A counter that reaches 0 is "removed" by writing it born expired (`-infinity`): every read
    // treats it as absent, the next increment replaces it as an expired row (starting a fresh TTL),
    // and the sweep deletes it. A DELETE cannot share a statement with this upsert, and this keeps
    // one round trip. The proposed row (used only when no row exists at all) is `delta` with the TTL
    // when it is allowed and positive, and otherwise such a placeholder, so neither a refused nor a
    // non-positive first increment creates anything live. A live row keeps its expiry: later
    // increments never extend the window.
    increment: `WITH seen AS (
                  SELECT coalesce(
                    (SELECT value FROM ${s}.counters WHERE key = $1::text AND ${LIVE}), 0
                  ) AS value
                ), refused AS (
                  SELECT value FROM seen
                  WHERE $4::bigint IS NOT NULL AND $2::bigint > 0 AND value + $2::bigint > $4::bigint
                ), written AS (
                  INSERT INTO ${s}.counters AS c (key, value, expires_at, last_increment_applied)
                  SELECT $1::text,
                         CASE WHEN fresh.ok THEN greatest(0, $2::bigint) ELSE 0 END,
                         CASE WHEN fresh.ok AND $2::bigint > 0 THEN ${expiry("$3")} ELSE '-infinity' END,
                         fresh.ok
                  FROM (
                    SELECT $4::bigint IS NULL OR $2::bigint <= 0 OR $2::bigint <= $4::bigint AS ok
                  ) AS fresh
                  WHERE NOT EXISTS (SELECT 1 FROM refused)
                  ON CONFLICT (key) DO UPDATE SET
                    value = CASE
                      WHEN c.expires_at <= now() THEN excluded.value
                      WHEN $4::bigint IS NULL OR $2::bigint <= 0 OR c.value + $2::bigint <= $4::bigint
                        THEN greatest(0, c.value + $2::bigint)
                      ELSE c.value END,
                    expires_at = CASE
                      WHEN c.expires_at <= now() THEN excluded.expires_at
                      WHEN ($4::bigint IS NULL OR $2::bigint <= 0 OR c.value + $2::bigint <= $4::bigint)
                        AND c.value + $2::bigint <= 0 THEN '-infinity'
                      ELSE c.expires_at END,
                    last_increment_applied = CASE
                      WHEN c.expires_at <= now() THEN excluded.last_increment_applied
                      ELSE $4::bigint IS NULL OR $2::bigint <= 0 OR c.value + $2::bigint <= $4::bigint END
                  RETURNING last_increment_applied AS applied,
                            CASE WHEN ${LIVE} THEN value ELSE 0 END AS value
                )
                SELECT false AS applied, value FROM refused
                UNION ALL
                SELECT applied, value FROM written`,

    indexAdd: `INSERT INTO ${s}.index_members (index_key, member, expires_at)
               VALUES ($1, $2, ${expiry("$3")})
               ON CONFLICT (index_key, member) DO UPDATE SET expires_at = excluded.expires_at`,

    indexRemove: `DELETE FROM ${s}.index_members WHERE index_key = $1 AND member = $2
                  RETURNING ${LIVE} AS live`,

    indexList: `SELECT member FROM ${s}.index_members WHERE index_key = $1 AND ${LIVE}`,

    // The token bucket of token-bucket.ts (stepBucket), with $2 capacity, $3 refill per ms, $4 cost,
    // timed by the database's clock so every replica shares one bucket.
    //
    // Atomicity, first path: `seen` reads the statement's snapshot at `clock_timestamp()`. Commits
    // after the snapshot can only have moved the full instant later and time only refills, so the
    // tokens the snapshot shows lacking are at most what is really lacking: a refusal there is right
    // at that instant, and costs no row lock and no WAL flush (refusals are what an abusive caller
    // produces in bulk). Its retry time may come out early under concurrency, never late.
    //
    // Second path: the ON CONFLICT argument of claim and increment. Takes of one key run one at a
    // time on the row lock, and the multi-column SET is one sub-SELECT, evaluated after the lock is
    // taken, against the latest committed version, with one reading of `clock_timestamp()` (the time
    // of the write, not of the statement's start: a take that waited on the lock must not be credited
    // with refill it did not wait for, nor charged from a stale clock). A refused take writes the row
    // back with its expiry unchanged. A row past its instant is a full bucket (greatest(…, 0)), so an
    // expired row needs no special case. A new row is a full bucket with `cost` taken.
    takeTokens: `WITH seen AS (
                   SELECT least(
                     greatest(extract(epoch FROM expires_at - clock_timestamp())::float8 * 1000, 0)
                       * $3::float8,
                     $2::float8) AS lacking
                   FROM ${s}.buckets WHERE key = $1::text
                 ), refused AS (
                   SELECT lacking FROM seen WHERE lacking + $4::float8 > $2::float8 + ${BUCKET_EPSILON}
                 ), written AS (
                   INSERT INTO ${s}.buckets AS b
                     (key, expires_at, last_allowed, last_remaining, last_wait_ms)
                   SELECT $1::text, clock_timestamp() + $4::float8 / $3::float8 * interval '1 millisecond',
                          true, $2::float8 - $4::float8, 0
                   WHERE NOT EXISTS (SELECT 1 FROM refused)
                   ON CONFLICT (key) DO UPDATE SET
                     (expires_at, last_allowed, last_remaining, last_wait_ms) = (
                       SELECT CASE WHEN o.ok
                                THEN clock.at + (d.lacking + $4::float8) / $3::float8 * interval '1 millisecond'
                                ELSE b.expires_at END,
                              o.ok,
                              CASE WHEN o.ok THEN $2::float8 - d.lacking - $4::float8
                                ELSE $2::float8 - d.lacking END,
                              CASE WHEN o.ok THEN 0
                                ELSE (d.lacking + $4::float8 - $2::float8) / $3::float8 END
                       FROM (SELECT clock_timestamp() AS at) AS clock
                       CROSS JOIN LATERAL (
                         SELECT least(
                           greatest(extract(epoch FROM b.expires_at - clock.at)::float8 * 1000, 0)
                             * $3::float8,
                           $2::float8) AS lacking
                       ) AS d
                       CROSS JOIN LATERAL (
                         SELECT d.lacking + $4::float8 <= $2::float8 + ${BUCKET_EPSILON} AS ok
                       ) AS o
                     )
                   RETURNING last_allowed, last_remaining, last_wait_ms
                 )
                 SELECT false AS allowed, $2::float8 - lacking AS remaining,
                        (lacking + $4::float8 - $2::float8) / $3::float8 AS wait_ms
                 FROM refused
                 UNION ALL
                 SELECT last_allowed, last_remaining, last_wait_ms FROM written`,

    // See the migration: the count and the insert run under the lease key's advisory lock.
    leaseAcquire: `SELECT ${s}.lease_acquire($1::text, $2::bytea, $3::bigint, $4::bigint) AS acquired`,

    // Atomicity: one UPDATE; each row it changes is locked and its WHERE re-checked on the latest
    // version (with the clock read again), so a member that an acquirer deleted as expired, or that
    // expired meanwhile, is never brought back, and a member renewed here is one an acquirer that
    // waits on its row lock then counts as live. Never adds a row, so it cannot pass a limit.
    leaseRenew: `UPDATE ${s}.lease_members
                 SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
                 WHERE lease_key = $1::text AND member = ANY($2::bytea[]) AND expires_at > clock_timestamp()`,

    // Atomicity: as take. A release only lowers the count, so it needs no lease lock.
    leaseRelease: `DELETE FROM ${s}.lease_members WHERE lease_key = $1 AND member = $2
                   RETURNING expires_at > clock_timestamp() AS live`,

    leaseCount: `SELECT count(*) AS live FROM ${s}.lease_members
                 WHERE lease_key = $1 AND expires_at > clock_timestamp()`,

    sweep: [
      sweep("records", "key"),
      sweep("counters", "key"),
      sweep("index_members", "index_key, member"),
      sweep("buckets", "key"),
      sweep("lease_members", "lease_key, member"),
    ],
  };
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/**
 * What of a driver error may travel as `cause`: a server error's SQLSTATE and severity, or a client
 * error's message and code. Server errors can quote row contents in `detail` (a key, a value), and
 * some client errors carry the connection string as a property, so neither is passed on whole.
 */
function safeCause(error: unknown): Error {
  if (error instanceof pg.DatabaseError) {
    return Object.assign(new Error(`server error ${error.code ?? "unknown"} (${error.severity ?? "?"})`), {
      code: error.code,
    });
  }
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return Object.assign(new Error(error.message), typeof code === "string" ? { code } : {});
  }
  return new Error("unknown driver failure");
}

function unavailable(error: unknown): GateError {
  if (error instanceof GateError) return error;
  return storeUnavailable(BACKEND, safeCause(error));
}

function positiveInteger(value: number | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) throw invalidArgument(name, "must be a positive integer");
  return value;
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

interface Connections {
  readonly pool: pg.Pool;
  /** Every socket the pool has opened and not yet seen closed, to force shut on close. */
  readonly sockets: Set<Socket>;
}

/** The server-side statement timeout trails the client's, so the client decides first. */
const SERVER_TIMEOUT_MARGIN_MS = 250;

function createPool(url: string, timeoutMs: number, poolSize: number): Connections {
  const sockets = new Set<Socket>();
  const pool = new pg.Pool({
    connectionString: url,
    max: poolSize,
    // Bounds opening a connection. Waiting for a free one is bounded by Admission, which hands out
    // at most `max` slots, so the pool's own queue stays empty.
    connectionTimeoutMillis: timeoutMs,
    // On expiry the driver fails the query and pool.query releases the client with the error,
    // which destroys it instead of returning it to the pool: a connection with an unanswered query
    // is never reused, and the next call opens a new one, so service resumes by itself.
    query_timeout: timeoutMs,
    keepAlive: true,
    application_name: "tenantgate",
    allowExitOnIdle: true,
    // The client-side timeout only abandons a query; the server would go on running or waiting for a
    // lock, holding a backend, and could still apply the write much later. Server-side limits end it
    // there too, just after the client gave up. Set per connection (not as startup parameters, which
    // PgBouncer refuses), awaited by the pool before the connection serves any caller; if it fails,
    // the pool drops the connection and the caller gets the error.
    //
    // Every atomicity argument below assumes READ COMMITTED: a statement that waited on a lock reads
    // the rows committed meanwhile (lease_acquire's count after its advisory lock; ON CONFLICT and
    // UPDATE re-reading the latest row). A database or role defaulting to REPEATABLE READ would let
    // lease sets pass their limit and turn concurrent takes into serialization failures, so the
    // connection pins it rather than inheriting whatever ALTER DATABASE/ROLE … SET chose.
    onConnect: async (client: pg.ClientBase) => {
      await client.query(
        `SET statement_timeout = ${timeoutMs + SERVER_TIMEOUT_MARGIN_MS}; SET lock_timeout = ${timeoutMs}; ` +
          "SET default_transaction_isolation = 'read committed'",
      );
    },
    stream: () => {
      const socket = new Socket();
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
      return socket;
    },
  });
  // An idle connection that fails (server restart, network reset) is already removed from the pool
  // when this fires; the next call opens a new one. Without a listener it would crash the process.
  pool.on("error", () => {});
  return { pool, sockets };
}

/**
 * Ends the pool and waits for its sockets to close, up to `graceMs` for a polite goodbye; then
 * destroys what is left. pool.end() resolves as soon as no client is checked out, while each
 * connection's goodbye is still under way, and a server that has stopped answering never
 * acknowledges it: without this the sockets would linger and close() would not mean closed.
 */
async function endPool({ pool, sockets }: Connections, graceMs: number): Promise<void> {
  const force = setTimeout(() => {
    for (const socket of sockets) socket.destroy();
  }, graceMs);
  try {
    await pool.end().catch(() => {});
    await Promise.all([...sockets].map((socket) => new Promise((resolve) => socket.once("close", resolve))));
  } finally {
    clearTimeout(force);
  }
}

// ---------------------------------------------------------------------------------------------
// Admission
// ---------------------------------------------------------------------------------------------

/** Whether the server answered, even if with an error: progress, as opposed to silence. */
function serverAnswered(error: unknown): boolean {
  return error instanceof pg.DatabaseError;
}

interface Waiter {
  /** The query-time budget left when admitted: the timeout less the server's silence so far. */
  readonly admit: (budgetMs: number) => void;
  readonly refuse: (error: GateError) => void;
}

/**
 * Admission to the pool's `capacity` connections, in arrival order.
 *
 * A caller waiting for a connection is refused when the server has given no answer for `stallMs`,
 * not merely when it has waited `stallMs` itself. The difference matters under a burst: a thousand
 * callers racing for one row are served one commit at a time, and the last of them may wait longer
 * than the timeout while the server answers steadily; refusing them would turn a busy store into
 * an unavailable one. A silent server, by contrast, makes every connection's query time out (or
 * its connect fail) within `stallMs`, so waiting callers are refused within `stallMs` of the last
 * answer and never queue behind a dead server.
 */
class Admission {
  readonly #capacity: number;
  readonly #stallMs: number;
  readonly #waiting: Waiter[] = [];
  #inUse = 0;
  #lastAnswerAt = performance.now();
  #closed = false;

  constructor(capacity: number, stallMs: number) {
    this.#capacity = capacity;
    this.#stallMs = stallMs;
  }

  /**
   * Runs `work` with a connection slot. `work` receives the query-time budget: the full timeout for
   * a caller admitted at once; for one that waited, the timeout less the server's silence so far, so
   * a queued call fails once the server has been silent for the timeout, not a timeout later.
   */
  async run<T>(work: (budgetMs: number) => Promise<T>): Promise<T> {
    const budgetMs = await this.#acquire();
    try {
      const result = await work(budgetMs);
      this.#lastAnswerAt = performance.now();
      return result;
    } catch (error) {
      if (serverAnswered(error)) this.#lastAnswerAt = performance.now();
      throw error;
    } finally {
      this.#release();
    }
  }

  /** Refuses everyone still waiting; later calls are refused by the store before reaching here. */
  close(): void {
    this.#closed = true;
    for (const waiter of this.#waiting.splice(0)) waiter.refuse(storeClosed(BACKEND));
  }

  #acquire(): Promise<number> {
    if (this.#closed) return Promise.reject(storeClosed(BACKEND));
    if (this.#inUse < this.#capacity) {
      this.#inUse++;
      return Promise.resolve(this.#stallMs);
    }
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const waiter: Waiter = {
        admit: (budgetMs) => {
          clearTimeout(timer);
          resolve(budgetMs);
        },
        refuse: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const check = () => {
        const silentFor = performance.now() - this.#lastAnswerAt;
        if (silentFor < this.#stallMs) {
          timer = setTimeout(check, this.#stallMs - silentFor);
          return;
        }
        const index = this.#waiting.indexOf(waiter);
        if (index !== -1) this.#waiting.splice(index, 1);
        waiter.refuse(storeUnavailable(BACKEND, new Error("no answer while waiting for a connection")));
      };
      timer = setTimeout(check, this.#stallMs);
      this.#waiting.push(waiter);
    });
  }

  #release(): void {
    // The slot passes straight to the next waiter (so #inUse is unchanged), unless the server has
    // been silent for the timeout: then waiters are refused now rather than handed a fresh timeout.
    for (let next = this.#waiting.shift(); next; next = this.#waiting.shift()) {
      const silentFor = performance.now() - this.#lastAnswerAt;
      if (silentFor < this.#stallMs) {
        next.admit(Math.max(1, Math.floor(this.#stallMs - silentFor)));
        return;
      }
      next.refuse(storeUnavailable(BACKEND, new Error("no answer while waiting for a connection")));
    }
    this.#inUse--;
  }
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

class PostgresStore implements Store {
  readonly backend = BACKEND;
  readonly #connections: Connections;
  readonly #admission: Admission;
  readonly #sql: Statements;
  readonly #timeoutMs: number;
  readonly #sweepTimer: NodeJS.Timeout;
  #sweeping = false;
  #closing: Promise<void> | null = null;

  constructor(
    connections: Connections,
    schema: string,
    options: { timeoutMs: number; poolSize: number; sweepIntervalMs: number },
  ) {
    const { timeoutMs, poolSize, sweepIntervalMs } = options;
    this.#connections = connections;
    this.#admission = new Admission(poolSize, timeoutMs);
    this.#sql = statements(schema);
    this.#timeoutMs = timeoutMs;
    this.#sweepTimer = setInterval(() => void this.#sweep(), sweepIntervalMs);
    this.#sweepTimer.unref();
  }

  async get(key: RecordKey): Promise<string | null> {
    const { rows } = await this.#query<{ value: Buffer }>(this.#sql.get, [key.encoded]);
    return rows[0] ? decode(rows[0].value) : null;
  }

  async getMany(keys: readonly RecordKey[]): Promise<Array<string | null>> {
    // As on every other backend: a closed handle refuses before anything else (an empty batch
    // never reaches #query, which would check it).
    this.#open();
    checkBatch(keys);
    if (keys.length === 0) return [];
    const names = keys.map((key) => key.encoded);
    const { rows } = await this.#query<{ key: string; value: Buffer }>(this.#sql.getMany, [names]);
    const found = new Map(rows.map((row) => [row.key, decode(row.value)]));
    return names.map((name) => found.get(name) ?? null);
  }

  async put(key: RecordKey, value: string, options?: TtlOptions): Promise<void> {
    this.#open();
    checkValue(value);
    const ttlMs = checkTtl(options);
    await this.#query(this.#sql.put, [key.encoded, encode(value), ttlMs ?? null]);
  }

  async claim(key: RecordKey, value: string, options?: TtlOptions): Promise<ClaimOutcome> {
    this.#open();
    checkValue(value);
    const ttlMs = checkTtl(options);
    const { rows } = await this.#query<{ value: Buffer; won: boolean }>(this.#sql.claim, [
      key.encoded,
      encode(value),
      ttlMs ?? null,
    ]);
    const row = rows[0];
    if (!row) throw unavailable(new Error("claim returned no row"));
    return { won: row.won, winner: decode(row.value) };
  }

  async take(key: RecordKey): Promise<string | null> {
    const { rows } = await this.#query<{ value: Buffer; live: boolean }>(this.#sql.take, [key.encoded]);
    return rows[0]?.live ? decode(rows[0].value) : null;
  }

  async takeIfEquals(key: RecordKey, expected: string): Promise<boolean> {
    this.#open();
    // Stored values are well-formed strings (checkValue), so a malformed one equals none of them.
    // It must not reach the driver, whose UTF-8 encoding would turn a lone surrogate into U+FFFD
    // and could match a stored value that really holds U+FFFD.
    if (typeof expected !== "string" || !expected.isWellFormed()) return false;
    const { rowCount } = await this.#query(this.#sql.takeIfEquals, [key.encoded, encode(expected)]);
    return rowCount === 1;
  }

  async replaceIfEquals(key: RecordKey, expected: string, value: string): Promise<boolean> {
    this.#open();
    checkValue(value);
    // As in takeIfEquals: a malformed `expected` equals no stored value and must not reach the driver.
    if (typeof expected !== "string" || !expected.isWellFormed()) return false;
    const { rowCount } = await this.#query(this.#sql.replaceIfEquals, [
      key.encoded,
      encode(expected),
      encode(value),
    ]);
    return rowCount === 1;
  }

  async delete(key: RecordKey): Promise<boolean> {
    const { rows } = await this.#query<{ live: boolean }>(this.#sql.take, [key.encoded]);
    return rows[0]?.live === true;
  }

  async increment(key: CounterKey, delta: number, options?: CounterOptions): Promise<CounterOutcome> {
    this.#open();
    const { ttlMs, limit } = checkCounter(delta, options);
    const { rows } = await this.#query<{ applied: boolean; value: string }>(this.#sql.increment, [
      key.encoded,
      delta,
      ttlMs ?? null,
      limit ?? null,
    ]);
    const row = rows[0];
    if (!row) throw unavailable(new Error("increment returned no row"));
    return { applied: row.applied, value: Number(row.value) };
  }

  async indexAdd(key: IndexKey, member: string, options?: TtlOptions): Promise<void> {
    this.#open();
    checkMember(member);
    const ttlMs = checkTtl(options);
    await this.#query(this.#sql.indexAdd, [key.encoded, encode(member), ttlMs ?? null]);
  }

  async indexRemove(key: IndexKey, member: string): Promise<boolean> {
    this.#open();
    // As in takeIfEquals: a member that could never have been added is not there.
    if (typeof member !== "string" || !member.isWellFormed()) return false;
    const { rows } = await this.#query<{ live: boolean }>(this.#sql.indexRemove, [
      key.encoded,
      encode(member),
    ]);
    return rows[0]?.live === true;
  }

  async indexList(key: IndexKey): Promise<string[]> {
    const { rows } = await this.#query<{ member: Buffer }>(this.#sql.indexList, [key.encoded]);
    return rows.map((row) => decode(row.member));
  }

  async takeTokens(key: BucketKey, bucket: TokenBucket): Promise<TokenOutcome> {
    this.#open();
    const { capacity, refillPerMs, cost } = checkBucket(bucket);
    const { rows } = await this.#query<{ allowed: boolean; remaining: number; wait_ms: number }>(
      this.#sql.takeTokens,
      [key.encoded, capacity, refillPerMs, cost],
    );
    const row = rows[0];
    if (!row) throw unavailable(new Error("takeTokens returned no row"));
    return tokenOutcome(row.allowed, Number(row.remaining), Number(row.wait_ms));
  }

  async leaseAcquire(key: LeaseKey, member: string, limit: number, ttlMs: number): Promise<boolean> {
    this.#open();
    const checked = checkLease(limit, ttlMs);
    checkMember(member);
    const { rows } = await this.#query<{ acquired: boolean }>(this.#sql.leaseAcquire, [
      key.encoded,
      encode(member),
      checked.limit,
      checked.ttlMs,
    ]);
    return rows[0]?.acquired === true;
  }

  async leaseRenew(key: LeaseKey, members: readonly string[], ttlMs: number): Promise<number> {
    this.#open();
    const ttl = checkLeaseTtl(ttlMs);
    const distinct = checkLeaseMembers(members);
    if (distinct.length === 0) return 0;
    const { rowCount } = await this.#query(this.#sql.leaseRenew, [key.encoded, distinct.map(encode), ttl]);
    return rowCount ?? 0;
  }

  async leaseRelease(key: LeaseKey, member: string): Promise<boolean> {
    this.#open();
    // As in indexRemove: a member that could never have been added is not there.
    if (typeof member !== "string" || !member.isWellFormed()) return false;
    const { rows } = await this.#query<{ live: boolean }>(this.#sql.leaseRelease, [
      key.encoded,
      encode(member),
    ]);
    return rows[0]?.live === true;
  }

  async leaseCount(key: LeaseKey): Promise<number> {
    const { rows } = await this.#query<{ live: string }>(this.#sql.leaseCount, [key.encoded]);
    return Number(rows[0]?.live ?? 0);
  }

  async ping(): Promise<void> {
    await this.#query("SELECT 1", []);
  }

  async close(): Promise<void> {
    if (!this.#closing) {
      clearInterval(this.#sweepTimer);
      this.#admission.close();
      this.#closing = endPool(this.#connections, this.#timeoutMs);
    }
    await this.#closing;
  }

  #open(): void {
    if (this.#closing) throw storeClosed(BACKEND);
  }

  async #query<R extends pg.QueryResultRow>(text: string, values: unknown[]): Promise<pg.QueryResult<R>> {
    this.#open();
    try {
      return await this.#admission.run((budgetMs) =>
        this.#connections.pool.query<R>({ text, values, query_timeout: budgetMs } as pg.QueryConfig),
      );
    } catch (error) {
      throw unavailable(error);
    }
  }

  /** Deletes expired rows in small batches. Failures are ignored: the next sweep tries again. */
  async #sweep(): Promise<void> {
    if (this.#sweeping || this.#closing) return;
    this.#sweeping = true;
    try {
      for (const statement of this.#sql.sweep) {
        for (let batch = 0; batch < SWEEP_MAX_BATCHES && !this.#closing; batch++) {
          const { rowCount } = await this.#admission.run(() => this.#connections.pool.query(statement));
          if ((rowCount ?? 0) < SWEEP_BATCH) break;
        }
      }
    } catch {
      // Expired rows already read as absent; removing them is housekeeping, not correctness.
    } finally {
      this.#sweeping = false;
    }
  }
}

function encode(text: string): Buffer {
  return Buffer.from(text, "utf8");
}

function decode(bytes: Buffer): string {
  return bytes.toString("utf8");
}

/**
 * Opens (and if needed creates or migrates) the store in `options.schema`. Rejects with
 * ERR_STORE_UNAVAILABLE, after ending its connections, if the server does not answer within the
 * timeout.
 */
export async function openPostgresStore(options: PostgresStoreOptions): Promise<Store> {
  if (typeof options.schema !== "string" || !SCHEMA_NAME.test(options.schema)) {
    throw invalidArgument("schema", "must match [a-z_][a-z0-9_]{0,62}");
  }
  const timeoutMs = positiveInteger(options.timeoutMs, "timeoutMs", DEFAULT_TIMEOUT_MS);
  const poolSize = positiveInteger(options.poolSize, "poolSize", DEFAULT_POOL_SIZE);
  const sweepIntervalMs = positiveInteger(
    options.sweepIntervalMs,
    "sweepIntervalMs",
    DEFAULT_SWEEP_INTERVAL_MS,
  );
  const connections = createPool(options.url, timeoutMs, poolSize);
  try {
    const client = await connections.pool.connect();
    // A checked-out client emits "error" when its connection fails; the failing query rejects
    // with it too, so the listener only keeps the event from crashing the process.
    const ignore = () => {};
    client.on("error", ignore);
    let failure: unknown;
    try {
      await migrate(client, options.schema, timeoutMs);
    } catch (error) {
      failure = error;
      throw error;
    } finally {
      client.off("error", ignore);
      // A failed migration leaves the connection mid-transaction: destroy it, which rolls back.
      client.release(failure === undefined ? undefined : true);
    }
  } catch (error) {
    await endPool(connections, timeoutMs);
    throw unavailable(error);
  }
  return new PostgresStore(connections, options.schema, { timeoutMs, poolSize, sweepIntervalMs });
}
