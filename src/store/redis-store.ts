import { Redis, type RedisOptions } from "ioredis";
import { GateError } from "../errors.ts";
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
 * A store on Redis (>= 7.0: GETDEL, and script flags so releases work at maxmemory), shared by every gateway replica.
 *
 * Layout under the prefix (see docs/storage-schema.md): records, counters and token buckets are
 * plain strings, indexes and lease sets are sorted sets scored by expiry time in ms on the server's
 * clock (+inf for no expiry).
 * Every operation is one command or one Lua script, so each is atomic on the server whatever the
 * number of clients, connections and processes.
 *
 * Fail fast (DESIGN invariant 6): no offline queue, a bound on connecting and on every command, and no
 * command is retried or resent after a disconnect, so an outage answers ERR_STORE_UNAVAILABLE within
 * `timeoutMs` while the client keeps reconnecting in the background.
 */

export interface RedisStoreOptions {
  /** redis:// or rediss:// URL without query parameters (may carry a password: never log it). */
  readonly url: string;
  /** Prefix of every key this store writes. */
  readonly prefix: string;
  /** Bound on connecting and on each command before ERR_STORE_UNAVAILABLE. */
  readonly timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 1_000;
const RECONNECT_BASE_MS = 100;
const RECONNECT_CAP_MS = 2_000;

/**
 * SET NX (with PX) and the read of the winner in one script: a loser learns the value that beat it
 * even if the winner's record is deleted or expires right after, because nothing runs between the
 * two calls. SET NX treats an expired key as absent, so an expired claim is free again.
 */
const CLAIM = `
local written
if ARGV[2] == '' then
  written = redis.call('SET', KEYS[1], ARGV[1], 'NX')
else
  written = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
if written then return {1, ARGV[1]} end
return {0, redis.call('GET', KEYS[1])}
`;

/** Compare and delete as one step: a mismatch leaves the value for the party it belongs to. */
const TAKE_IF_EQUALS = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`;

/**
 * Compare and replace as one step. KEEPTTL keeps the record's expiry (a plain SET would drop it);
 * GET on an expired key is nil, so an expired record never matches.
 */
const REPLACE_IF_EQUALS = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
`;

/**
 * Read, limit check and add in one script, so concurrent increments cannot both pass a cap. The limit
 * holds back increases only; a release is never refused. A sum at or below 0 deletes the key (the
 * contract: counters floor at 0 and a counter at 0 is gone, so the next increment starts a new
 * window). Otherwise the add is INCRBY (exact integer arithmetic on the stored value) and the TTL is
 * set only when this call created the key, so later increments never extend a window. A refused
 * increment writes nothing. Values go back as the stored string, not a Lua number, so no float
 * formatting touches them (sums are compared as doubles, exact within the contract's ±2^53).
 */
const INCREMENT = `
local stored = redis.call('GET', KEYS[1])
local current = tonumber(stored or '0')
local delta = tonumber(ARGV[1])
if ARGV[2] ~= '' and delta > 0 and current + delta > tonumber(ARGV[2]) then
  return {0, stored or '0'}
end
if current + delta <= 0 then
  if stored then redis.call('DEL', KEYS[1]) end
  return {1, '0'}
end
redis.call('INCRBY', KEYS[1], ARGV[1])
if not stored and ARGV[3] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return {1, redis.call('GET', KEYS[1])}
`;

/**
 * A release (delta <= 0) in a script of its own, flagged `allow-oom`: under `noeviction` at maxmemory
 * Redis refuses deny-oom commands such as INCRBY, and a refused release would leak a reservation
 * (invariant 7; the contract: a release is never refused). A release only shrinks or deletes a value,
 * so allowing it past maxmemory cannot grow memory. Needs Redis >= 7.0 (script flags).
 */
const RELEASE = `#!lua flags=allow-oom
local stored = redis.call('GET', KEYS[1])
if not stored then
  return {1, '0'}
end
if tonumber(ARGV[1]) == 0 then
  return {1, stored}
end
local next = tonumber(stored) + tonumber(ARGV[1])
if next <= 0 then
  redis.call('DEL', KEYS[1])
  return {1, '0'}
end
redis.call('SET', KEYS[1], string.format('%d', next), 'KEEPTTL')
return {1, redis.call('GET', KEYS[1])}
`;

/**
 * Index scripts share a prelude and a postlude. Expiry is judged by the server's clock (TIME), never a
 * replica's own, so every gateway replica agrees on which members are live; a member is live while its
 * score is greater than now, as in the memory store. Expired members are dropped before anything else,
 * so they are never listed, never reported as removed and never kept forever.
 */
const INDEX_PRELUDE = `
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
`;

/**
 * The sorted set itself expires with its latest member (or persists while a member has no expiry), so
 * an index nobody reads again does not outlive what it lists.
 */
const INDEX_COVER = `
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] == 'inf' then
  redis.call('PERSIST', KEYS[1])
elseif last[2] then
  redis.call('PEXPIREAT', KEYS[1], last[2])
end
`;

const INDEX_ADD = `${INDEX_PRELUDE}
local score = 'inf'
if ARGV[2] ~= '' then score = now + tonumber(ARGV[2]) end
redis.call('ZADD', KEYS[1], score, ARGV[1])
${INDEX_COVER}
return 1
`;

const INDEX_REMOVE = `${INDEX_PRELUDE}
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
${INDEX_COVER}
end
return removed
`;

const INDEX_LIST = `${INDEX_PRELUDE}
return redis.call('ZRANGE', KEYS[1], 0, -1)
`;

/**
 * A token bucket (token-bucket.ts, stepBucket, step for step) in one script, on the server's clock
 * (TIME, to the microsecond), so replicas with skewed clocks share one bucket. The key is a string
 * holding the instant, in ms, at which the bucket is full again (printed with 17 significant digits,
 * so the double round-trips exactly); the key expires at that instant (PXAT), so an idle bucket takes
 * no space. A refused take writes nothing. Numbers go back as strings: Redis truncates Lua numbers in
 * replies to integers. ARGV: capacity, refill per ms, cost.
 */
const TAKE_TOKENS = `
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local stored = redis.call('GET', KEYS[1])
local ahead = 0
if stored then ahead = math.max(0, tonumber(stored) - now) end
local lacking = math.min(ahead * rate, capacity)
local after = lacking + cost
if after <= capacity + ${BUCKET_EPSILON} then
  local full_at = now + after / rate
  redis.call('SET', KEYS[1], string.format('%.17g', full_at), 'PXAT', string.format('%d', math.ceil(full_at)))
  return {1, string.format('%.17g', capacity - after), '0'}
end
return {0, string.format('%.17g', capacity - lacking), string.format('%.17g', (after - capacity) / rate)}
`;

/**
 * Lease sets are sorted sets scored by expiry in ms on the server's clock, like indexes, and share
 * their prelude (expired members dropped first) and cover (the set expires with its latest member).
 * The count, the check against the limit and the add are one script, so concurrent acquirers on any
 * connection never pass the limit. ARGV: member, limit, ttl ms.
 *
 * Declared with a shebang and no flags, so Redis checks maxmemory before the script runs: a script
 * without one is checked only at its first write, and here that is the prelude's removal (never
 * refused), after which the ZADD of a new member would go through at maxmemory.
 */
const LEASE_ACQUIRE = `#!lua
${INDEX_PRELUDE}
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
${INDEX_COVER}
  return 1
end
return 0
`;

/**
 * Renewal, release and count never add a member, so they are flagged `allow-oom` like counter
 * releases: at maxmemory a replica can still keep its leases alive and give slots back. The prelude
 * runs first, so an expired member is gone before ZSCORE asks, and is never re-added (ZADD XX).
 * ARGV: ttl ms, then the members.
 */
const LEASE_RENEW = `#!lua flags=allow-oom
${INDEX_PRELUDE}
local score = now + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', score, ARGV[i])
    renewed = renewed + 1
  end
end
if renewed > 0 then
${INDEX_COVER}
end
return renewed
`;

const LEASE_RELEASE = `#!lua flags=allow-oom
${INDEX_PRELUDE}
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
${INDEX_COVER}
end
return removed
`;

const LEASE_COUNT = `#!lua flags=allow-oom
${INDEX_PRELUDE}
return redis.call('ZCARD', KEYS[1])
`;

/** The scripts as ioredis custom commands: EVALSHA, falling back to EVAL on NOSCRIPT. */
const scripts = {
  tenantgateClaim: { lua: CLAIM, numberOfKeys: 1 },
  tenantgateTakeIfEquals: { lua: TAKE_IF_EQUALS, numberOfKeys: 1 },
  tenantgateReplaceIfEquals: { lua: REPLACE_IF_EQUALS, numberOfKeys: 1 },
  tenantgateIncrement: { lua: INCREMENT, numberOfKeys: 1 },
  tenantgateRelease: { lua: RELEASE, numberOfKeys: 1 },
  tenantgateIndexAdd: { lua: INDEX_ADD, numberOfKeys: 1 },
  tenantgateIndexRemove: { lua: INDEX_REMOVE, numberOfKeys: 1 },
  tenantgateIndexList: { lua: INDEX_LIST, numberOfKeys: 1 },
  tenantgateTakeTokens: { lua: TAKE_TOKENS, numberOfKeys: 1 },
  tenantgateLeaseAcquire: { lua: LEASE_ACQUIRE, numberOfKeys: 1 },
  tenantgateLeaseRenew: { lua: LEASE_RENEW, numberOfKeys: 1 },
  tenantgateLeaseRelease: { lua: LEASE_RELEASE, numberOfKeys: 1 },
  tenantgateLeaseCount: { lua: LEASE_COUNT, numberOfKeys: 1 },
} as const;

interface ScriptedRedis extends Redis {
  tenantgateClaim(key: string, value: string, ttlMs: string): Promise<[number, string]>;
  tenantgateTakeIfEquals(key: string, expected: string): Promise<number>;
  tenantgateReplaceIfEquals(key: string, expected: string, value: string): Promise<number>;
  tenantgateIncrement(key: string, delta: string, limit: string, ttlMs: string): Promise<[number, string]>;
  tenantgateRelease(key: string, delta: string): Promise<[number, string]>;
  tenantgateIndexAdd(key: string, member: string, ttlMs: string): Promise<number>;
  tenantgateIndexRemove(key: string, member: string): Promise<number>;
  tenantgateIndexList(key: string): Promise<string[]>;
  tenantgateTakeTokens(
    key: string,
    capacity: string,
    refillPerMs: string,
    cost: string,
  ): Promise<[number, string, string]>;
  tenantgateLeaseAcquire(key: string, member: string, limit: string, ttlMs: string): Promise<number>;
  tenantgateLeaseRenew(key: string, ttlMs: string, ...members: string[]): Promise<number>;
  tenantgateLeaseRelease(key: string, member: string): Promise<number>;
  tenantgateLeaseCount(key: string): Promise<number>;
}

/** Optional numbers travel to scripts as strings, '' for absent. */
function scriptArgument(value: number | undefined): string {
  return value === undefined ? "" : String(value);
}

/**
 * What of a client error may go into `cause`. ioredis attaches the failed command's arguments (keys,
 * values, sealed secrets) to reply and abort errors, a parser error carries raw reply bytes, and Redis
 * echoes arguments in some replies ("unknown command ..., with args beginning with"), so a reply keeps
 * only its error code and nothing is copied from the original object but its name and, for client-side
 * errors (timeouts, refused connections), its message.
 */
class RedisFailure extends Error {
  override readonly name = "RedisFailure";
  readonly code: string | undefined;

  constructor(message: string, code: string | undefined) {
    super(message);
    this.code = code;
  }
}

function replyCode(error: Error): string | undefined {
  // Redis before 7 wraps an error raised inside a script as "ERR Error running script ...: -OOM ...".
  if (/-OOM command not allowed/.test(error.message)) return "OOM";
  return /^[A-Z][A-Z_-]{1,30}\b/.exec(error.message)?.[0];
}

function describeFailure(error: unknown): RedisFailure {
  if (!(error instanceof Error)) return new RedisFailure("redis client failed", undefined);
  if (error.name === "ReplyError") {
    const code = replyCode(error);
    return new RedisFailure(`redis replied with an error${code ? ` (${code})` : ""}`, code);
  }
  if (error.name === "ParserError") return new RedisFailure("redis reply could not be parsed", undefined);
  const code = (error as { code?: unknown }).code;
  return new RedisFailure(
    `${error.name}: ${error.message.slice(0, 200)}`,
    typeof code === "string" ? code : undefined,
  );
}

function failure(error: unknown): GateError {
  const described = describeFailure(error);
  // maxmemory reached under the noeviction policy: Redis refuses writes instead of evicting, which is
  // the contract's "full" (THREATS L6), not an outage.
  if (described.code === "OOM") {
    return new GateError("ERR_STORE_FULL", "store full", {
      detail: "redis store refused a write at its maxmemory limit",
      cause: described,
    });
  }
  return storeUnavailable("redis", described);
}

/** Rejects with `onTimeout()` if `promise` has not settled within `ms`. */
function within<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

class RedisStore implements Store {
  readonly backend = "redis" as const;
  readonly #client: ScriptedRedis;
  readonly #prefix: string;
  readonly #timeoutMs: number;
  #closing: Promise<void> | null = null;

  /** Use `openRedisStore`, which connects before handing the store out. */
  constructor(client: ScriptedRedis, prefix: string, timeoutMs: number) {
    this.#client = client;
    this.#prefix = prefix;
    this.#timeoutMs = timeoutMs;
  }

  async get(key: RecordKey): Promise<string | null> {
    this.#open();
    return this.#call(() => this.#client.get(this.#name(key)));
  }

  async getMany(keys: readonly RecordKey[]): Promise<Array<string | null>> {
    this.#open();
    checkBatch(keys);
    if (keys.length === 0) return [];
    return this.#call(() => this.#client.mget(keys.map((key) => this.#name(key))));
  }

  async put(key: RecordKey, value: string, options?: TtlOptions): Promise<void> {
    this.#open();
    checkValue(value);
    const ttlMs = checkTtl(options);
    const name = this.#name(key);
    // SET without KEEPTTL drops an earlier expiry, so an overwrite without a TTL lasts, as in memory.
    await this.#call(() =>
      ttlMs === undefined ? this.#client.set(name, value) : this.#client.set(name, value, "PX", ttlMs),
    );
  }

  async claim(key: RecordKey, value: string, options?: TtlOptions): Promise<ClaimOutcome> {
    this.#open();
    checkValue(value);
    const ttlMs = checkTtl(options);
    const [won, winner] = await this.#call(() =>
      this.#client.tenantgateClaim(this.#name(key), value, scriptArgument(ttlMs)),
    );
    return { won: won === 1, winner };
  }

  async take(key: RecordKey): Promise<string | null> {
    this.#open();
    // GETDEL is one command: of concurrent takers, exactly one receives the value.
    return this.#call(() => this.#client.getdel(this.#name(key)));
  }

  async takeIfEquals(key: RecordKey, expected: string): Promise<boolean> {
    this.#open();
    // ioredis encodes a lone surrogate as U+FFFD, which would match a stored U+FFFD; no stored value
    // is ill-formed (put refuses them), so an ill-formed `expected` matches nothing.
    if (typeof expected !== "string" || !expected.isWellFormed()) return false;
    const deleted = await this.#call(() => this.#client.tenantgateTakeIfEquals(this.#name(key), expected));
    return deleted === 1;
  }

  async replaceIfEquals(key: RecordKey, expected: string, value: string): Promise<boolean> {
    this.#open();
    checkValue(value);
    // As in takeIfEquals: ioredis would send a lone surrogate as U+FFFD, which could match.
    if (typeof expected !== "string" || !expected.isWellFormed()) return false;
    const replaced = await this.#call(() =>
      this.#client.tenantgateReplaceIfEquals(this.#name(key), expected, value),
    );
    return replaced === 1;
  }

  async delete(key: RecordKey): Promise<boolean> {
    this.#open();
    // DEL of a logically expired key counts 0: expired reads as absent here too.
    const deleted = await this.#call(() => this.#client.del(this.#name(key)));
    return deleted === 1;
  }

  async increment(key: CounterKey, delta: number, options?: CounterOptions): Promise<CounterOutcome> {
    this.#open();
    const { ttlMs, limit } = checkCounter(delta, options);
    // Releases and reads go through the allow-oom script, so a full Redis never refuses them.
    const [applied, value] = await this.#call(() =>
      delta <= 0
        ? this.#client.tenantgateRelease(this.#name(key), String(delta))
        : this.#client.tenantgateIncrement(
            this.#name(key),
            String(delta),
            scriptArgument(limit),
            scriptArgument(ttlMs),
          ),
    );
    return { applied: applied === 1, value: Number(value) };
  }

  async indexAdd(key: IndexKey, member: string, options?: TtlOptions): Promise<void> {
    this.#open();
    checkMember(member);
    const ttlMs = checkTtl(options);
    await this.#call(() => this.#client.tenantgateIndexAdd(this.#name(key), member, scriptArgument(ttlMs)));
  }

  async indexRemove(key: IndexKey, member: string): Promise<boolean> {
    this.#open();
    // As in takeIfEquals: an ill-formed member was never added (checkMember), so it is not there.
    if (typeof member !== "string" || !member.isWellFormed()) return false;
    const removed = await this.#call(() => this.#client.tenantgateIndexRemove(this.#name(key), member));
    return removed === 1;
  }

  async indexList(key: IndexKey): Promise<string[]> {
    this.#open();
    return this.#call(() => this.#client.tenantgateIndexList(this.#name(key)));
  }

  async takeTokens(key: BucketKey, bucket: TokenBucket): Promise<TokenOutcome> {
    this.#open();
    const { capacity, refillPerMs, cost } = checkBucket(bucket);
    const [allowed, remaining, waitMs] = await this.#call(() =>
      this.#client.tenantgateTakeTokens(this.#name(key), String(capacity), String(refillPerMs), String(cost)),
    );
    return tokenOutcome(allowed === 1, Number(remaining), Number(waitMs));
  }

  async leaseAcquire(key: LeaseKey, member: string, limit: number, ttlMs: number): Promise<boolean> {
    this.#open();
    const checked = checkLease(limit, ttlMs);
    checkMember(member);
    const acquired = await this.#call(() =>
      this.#client.tenantgateLeaseAcquire(
        this.#name(key),
        member,
        String(checked.limit),
        String(checked.ttlMs),
      ),
    );
    return acquired === 1;
  }

  async leaseRenew(key: LeaseKey, members: readonly string[], ttlMs: number): Promise<number> {
    this.#open();
    const ttl = checkLeaseTtl(ttlMs);
    const distinct = checkLeaseMembers(members);
    if (distinct.length === 0) return 0;
    return this.#call(() => this.#client.tenantgateLeaseRenew(this.#name(key), String(ttl), ...distinct));
  }

  async leaseRelease(key: LeaseKey, member: string): Promise<boolean> {
    this.#open();
    // As in indexRemove: an ill-formed member was never added (checkMember), so it is not there.
    if (typeof member !== "string" || !member.isWellFormed()) return false;
    const removed = await this.#call(() => this.#client.tenantgateLeaseRelease(this.#name(key), member));
    return removed === 1;
  }

  async leaseCount(key: LeaseKey): Promise<number> {
    this.#open();
    return this.#call(() => this.#client.tenantgateLeaseCount(this.#name(key)));
  }

  async ping(): Promise<void> {
    this.#open();
    await this.#call(() => this.#client.ping());
  }

  async close(): Promise<void> {
    this.#closing ??= this.#quit();
    return this.#closing;
  }

  /** QUIT lets replies already on their way arrive; a server that does not answer is cut off. */
  async #quit(): Promise<void> {
    try {
      await within(this.#client.quit(), this.#timeoutMs, () => new Error("quit timed out"));
    } catch {
      // Nothing to report: the connection is dropped below either way.
    } finally {
      this.#client.disconnect();
    }
  }

  #open(): void {
    if (this.#closing) throw storeClosed(this.backend);
  }

  #name(key: RecordKey | CounterKey | IndexKey | BucketKey | LeaseKey): string {
    return this.#prefix + key.encoded;
  }

  async #call<T>(command: () => Promise<T>): Promise<T> {
    try {
      return await command();
    } catch (error) {
      throw failure(error);
    }
  }
}

function clientOptions(timeoutMs: number): RedisOptions {
  return {
    lazyConnect: true,
    // Commands issued while disconnected fail at once instead of waiting for a reconnect.
    enableOfflineQueue: false,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    // A connection that stops answering (a black-holed network keeps TCP up for minutes) is destroyed
    // and reconnected, so service resumes without waiting for keepalive to notice.
    socketTimeout: timeoutMs,
    // A command in flight when the connection drops may or may not have run; resending it could apply
    // an increment twice or write a claim after its caller was told the store failed. Reject instead.
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    // Keep reconnecting with capped, jittered backoff: the store recovers by itself when Redis returns.
    retryStrategy: (attempt) =>
      Math.min(RECONNECT_BASE_MS * 2 ** Math.min(attempt - 1, 10), RECONNECT_CAP_MS) +
      Math.floor(Math.random() * RECONNECT_BASE_MS),
    // After a failover the old primary answers READONLY: reconnect (DNS then names the new one), but
    // never resend the refused write.
    reconnectOnError: (error) => error.message.startsWith("READONLY"),
    scripts,
  };
}

export async function openRedisStore(options: RedisStoreOptions): Promise<Store> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  let client: ScriptedRedis;
  try {
    client = new Redis(options.url, clientOptions(timeoutMs)) as ScriptedRedis;
  } catch {
    // The URL may carry a password: only the error's kind goes on, never its text.
    throw storeUnavailable("redis", new RedisFailure("redis client could not be created", undefined));
  }
  // Without a listener ioredis prints each connection error (with its stack) to stderr; failures reach
  // callers as rejected calls instead.
  client.on("error", () => {});
  const connecting = client.connect();
  connecting.catch(() => {});
  try {
    await within(connecting, timeoutMs, () => new Error("Redis did not become ready in time"));
  } catch (error) {
    client.disconnect();
    throw storeUnavailable("redis", describeFailure(error));
  }
  await refuseEvictingPolicy(client, timeoutMs);
  return new RedisStore(client, options.prefix, timeoutMs);
}

/**
 * An evicting `maxmemory-policy` (allkeys-lru, volatile-lru, … as many managed services default to)
 * would let Redis drop an ownership record under memory pressure, after which a known session or
 * task id could be claimed by someone else (DESIGN invariants 3 and 6, THREATS L6). Only
 * `noeviction`, where a full Redis refuses writes (answered as ERR_STORE_FULL), is accepted.
 */
async function refuseEvictingPolicy(client: ScriptedRedis, timeoutMs: number): Promise<void> {
  let info: string;
  try {
    info = await within(client.info("memory"), timeoutMs, () => new Error("INFO did not answer in time"));
  } catch (error) {
    client.disconnect();
    throw storeUnavailable("redis", describeFailure(error));
  }
  const policy = /^maxmemory_policy:(\S+)/m.exec(info)?.[1];
  if (policy !== "noeviction") {
    client.disconnect();
    throw new GateError(
      "ERR_CONFIG_INVALID",
      `store: Redis maxmemory-policy is ${policy ?? "unknown"}; tenantgate needs noeviction (an evicting policy would drop ownership records)`,
    );
  }
}
