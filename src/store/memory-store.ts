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
 * An in-process store for single-replica deployments and tests.
 *
 * Bounded twice, by entries and by (approximate) bytes: past either bound it refuses new entries
 * with `ERR_STORE_FULL` and never evicts a live one, so one principal creating state without end
 * cannot push out another's (THREATS L6). Per-principal caps, applied before any write, keep one
 * principal from filling it in the first place.
 *
 * Every method body runs without an `await`, so each operation is atomic on the event loop.
 */

export interface MemoryStoreOptions {
  /**
   * Live entries (records + counters + index members + token buckets + lease members) allowed.
   * Default 100,000.
   */
  readonly maxEntries?: number;
  /** Approximate bytes of keys and values allowed. Default 256 MiB. */
  readonly maxBytes?: number;
  /** How often expired entries are swept. Default 30 s. */
  readonly sweepIntervalMs?: number;
  /** Clock, for tests. */
  readonly now?: () => number;
}

interface Entry<T> {
  value: T;
  /** Epoch ms; Infinity for no expiry. */
  expiresAt: number;
}

/** Rough per-entry overhead in bytes (map slot, entry object). */
const ENTRY_OVERHEAD = 64;

function expiry(now: number, ttlMs: number | undefined): number {
  return ttlMs === undefined ? Number.POSITIVE_INFINITY : now + ttlMs;
}

function positiveIntegerOption(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) throw invalidArgument(name, "must be a positive integer");
  return value;
}

/** JS strings are UTF-16: two bytes a code unit. */
function recordBytes(encodedKey: string, value: string): number {
  return 2 * (encodedKey.length + value.length) + ENTRY_OVERHEAD;
}

export class MemoryStore implements Store {
  readonly backend = "memory" as const;
  readonly #records = new Map<string, Entry<string>>();
  readonly #counters = new Map<string, Entry<number>>();
  readonly #indexes = new Map<string, Map<string, number>>();
  /** Token buckets: the value is the instant the bucket is full again, which is also its expiry. */
  readonly #buckets = new Map<string, Entry<number>>();
  readonly #leases = new Map<string, Map<string, number>>();
  readonly #maxEntries: number;
  readonly #maxBytes: number;
  readonly #now: () => number;
  readonly #sweepTimer: NodeJS.Timeout;
  #entries = 0;
  #bytes = 0;
  /**
   * No entry expires before this time (a lower bound; it may be stale-low after deletions). A full
   * store sweeps only once this has passed, so refusing a flood of writes costs O(1) each.
   */
  #earliestExpiry = Number.POSITIVE_INFINITY;
  #closed = false;

  constructor(options: MemoryStoreOptions = {}) {
    this.#maxEntries = positiveIntegerOption("maxEntries", options.maxEntries, 100_000);
    this.#maxBytes = positiveIntegerOption("maxBytes", options.maxBytes, 256 * 1024 * 1024);
    const sweepIntervalMs = positiveIntegerOption("sweepIntervalMs", options.sweepIntervalMs, 30_000);
    this.#now = options.now ?? Date.now;
    this.#sweepTimer = setInterval(() => this.#sweep(this.#now()), sweepIntervalMs);
    this.#sweepTimer.unref();
  }

  /** Live entries (records, counters, index members, buckets and lease members), for metrics and tests. */
  get size(): number {
    this.#sweep(this.#now());
    return this.#entries;
  }

  async get(key: RecordKey): Promise<string | null> {
    this.#open();
    return this.#live(this.#records, key.encoded, this.#now())?.value ?? null;
  }

  async getMany(keys: readonly RecordKey[]): Promise<Array<string | null>> {
    this.#open();
    checkBatch(keys);
    const now = this.#now();
    return keys.map((key) => this.#live(this.#records, key.encoded, now)?.value ?? null);
  }

  async put(key: RecordKey, value: string, options?: TtlOptions): Promise<void> {
    this.#open();
    checkValue(value);
    // One clock reading per operation: an entry live when read cannot expire (and be swept by
    // #reserve) before it is written.
    const now = this.#now();
    const expiresAt = expiry(now, checkTtl(options));
    const existing = this.#live(this.#records, key.encoded, now);
    if (existing) {
      const growth = recordBytes(key.encoded, value) - recordBytes(key.encoded, existing.value);
      if (growth > 0) this.#reserve(growth, false, now);
      else this.#bytes += growth;
      existing.value = value;
      existing.expiresAt = expiresAt;
      this.#noteExpiry(expiresAt);
      return;
    }
    this.#insertRecord(key.encoded, value, expiresAt, now);
  }

  async claim(key: RecordKey, value: string, options?: TtlOptions): Promise<ClaimOutcome> {
    this.#open();
    checkValue(value);
    const now = this.#now();
    const expiresAt = expiry(now, checkTtl(options));
    const existing = this.#live(this.#records, key.encoded, now);
    if (existing) return { won: false, winner: existing.value };
    this.#insertRecord(key.encoded, value, expiresAt, now);
    return { won: true, winner: value };
  }

  async take(key: RecordKey): Promise<string | null> {
    this.#open();
    const existing = this.#live(this.#records, key.encoded, this.#now());
    if (!existing) return null;
    this.#deleteRecord(key.encoded, existing);
    return existing.value;
  }

  async takeIfEquals(key: RecordKey, expected: string): Promise<boolean> {
    this.#open();
    const existing = this.#live(this.#records, key.encoded, this.#now());
    if (!existing || existing.value !== expected) return false;
    this.#deleteRecord(key.encoded, existing);
    return true;
  }

  async replaceIfEquals(key: RecordKey, expected: string, value: string): Promise<boolean> {
    this.#open();
    checkValue(value);
    const now = this.#now();
    const existing = this.#live(this.#records, key.encoded, now);
    if (!existing || existing.value !== expected) return false;
    // The same accounting as an overwrite by put; the expiry is left as it is.
    const growth = recordBytes(key.encoded, value) - recordBytes(key.encoded, existing.value);
    if (growth > 0) this.#reserve(growth, false, now);
    else this.#bytes += growth;
    existing.value = value;
    return true;
  }

  async delete(key: RecordKey): Promise<boolean> {
    return (await this.take(key)) !== null;
  }

  async increment(key: CounterKey, delta: number, options?: CounterOptions): Promise<CounterOutcome> {
    this.#open();
    const { ttlMs, limit } = checkCounter(delta, options);
    const now = this.#now();
    const existing = this.#live(this.#counters, key.encoded, now);
    const current = existing?.value ?? 0;
    if (limit !== undefined && delta > 0 && current + delta > limit)
      return { applied: false, value: current };
    const next = Math.max(0, current + delta);
    // The other backends refuse a result they could not represent exactly; so does this one.
    if (!Number.isSafeInteger(next)) throw invalidArgument("delta", "would take the counter past 2^53");
    if (next === 0) {
      if (existing) {
        this.#counters.delete(key.encoded);
        this.#release(recordBytes(key.encoded, ""));
      }
    } else if (existing) {
      existing.value = next;
    } else {
      this.#reserve(recordBytes(key.encoded, ""), true, now);
      const expiresAt = expiry(now, ttlMs);
      this.#counters.set(key.encoded, { value: next, expiresAt });
      this.#noteExpiry(expiresAt);
    }
    return { applied: true, value: next };
  }

  async indexAdd(key: IndexKey, member: string, options?: TtlOptions): Promise<void> {
    this.#open();
    checkMember(member);
    const now = this.#now();
    const expiresAt = expiry(now, checkTtl(options));
    const existing = this.#indexes.get(key.encoded)?.get(member);
    if (existing !== undefined && existing > now) {
      this.#indexes.get(key.encoded)?.set(member, expiresAt);
      this.#noteExpiry(expiresAt);
      return;
    }
    if (existing !== undefined) {
      this.#indexes.get(key.encoded)?.delete(member);
      this.#release(recordBytes(key.encoded, member));
    }
    this.#reserve(recordBytes(key.encoded, member), true, now);
    // Looked up after #reserve: its sweep may have dropped this index's map once all its members
    // had expired, and a member written into a detached map would be lost with its slot.
    const members = this.#indexes.get(key.encoded);
    if (members) members.set(member, expiresAt);
    else this.#indexes.set(key.encoded, new Map([[member, expiresAt]]));
    this.#noteExpiry(expiresAt);
  }

  async indexRemove(key: IndexKey, member: string): Promise<boolean> {
    this.#open();
    const members = this.#indexes.get(key.encoded);
    const expiresAt = members?.get(member);
    if (!members || expiresAt === undefined) return false;
    members.delete(member);
    this.#release(recordBytes(key.encoded, member));
    if (members.size === 0) this.#indexes.delete(key.encoded);
    return expiresAt > this.#now();
  }

  async indexList(key: IndexKey): Promise<string[]> {
    this.#open();
    const members = this.#indexes.get(key.encoded);
    if (!members) return [];
    const now = this.#now();
    const live: string[] = [];
    for (const [member, expiresAt] of members) {
      if (expiresAt > now) live.push(member);
    }
    return live;
  }

  async takeTokens(key: BucketKey, bucket: TokenBucket): Promise<TokenOutcome> {
    this.#open();
    const parameters = checkBucket(bucket);
    const now = this.#now();
    const existing = this.#live(this.#buckets, key.encoded, now);
    const step = stepBucket(existing?.value ?? null, now, parameters);
    if (step.allowed) {
      if (existing) {
        existing.value = step.fullAt;
        existing.expiresAt = step.fullAt;
      } else {
        // Only a take from a full (absent) bucket needs a slot; a full store refuses it, which is
        // the rate limiter's concern, never a reason to evict another principal's state.
        this.#reserve(recordBytes(key.encoded, ""), true, now);
        this.#buckets.set(key.encoded, { value: step.fullAt, expiresAt: step.fullAt });
      }
      this.#noteExpiry(step.fullAt);
    }
    return tokenOutcome(step.allowed, step.remaining, step.waitMs);
  }

  async leaseAcquire(key: LeaseKey, member: string, limit: number, ttlMs: number): Promise<boolean> {
    this.#open();
    const checked = checkLease(limit, ttlMs);
    checkMember(member);
    const now = this.#now();
    const expiresAt = now + checked.ttlMs;
    const members = this.#liveLeases(key.encoded, now);
    if (members?.has(member)) {
      members.set(member, expiresAt);
      this.#noteExpiry(expiresAt);
      return true;
    }
    if ((members?.size ?? 0) >= checked.limit) return false;
    this.#reserve(recordBytes(key.encoded, member), true, now);
    // Looked up again after #reserve, whose sweep drops a lease set left empty (as in indexAdd).
    const current = this.#leases.get(key.encoded);
    if (current) current.set(member, expiresAt);
    else this.#leases.set(key.encoded, new Map([[member, expiresAt]]));
    this.#noteExpiry(expiresAt);
    return true;
  }

  async leaseRenew(key: LeaseKey, members: readonly string[], ttlMs: number): Promise<number> {
    this.#open();
    const ttl = checkLeaseTtl(ttlMs);
    const distinct = checkLeaseMembers(members);
    const now = this.#now();
    const live = this.#liveLeases(key.encoded, now);
    if (!live) return 0;
    let renewed = 0;
    for (const member of distinct) {
      if (!live.has(member)) continue;
      live.set(member, now + ttl);
      renewed++;
    }
    if (renewed > 0) this.#noteExpiry(now + ttl);
    return renewed;
  }

  async leaseRelease(key: LeaseKey, member: string): Promise<boolean> {
    this.#open();
    if (typeof member !== "string" || !member.isWellFormed()) return false;
    const live = this.#liveLeases(key.encoded, this.#now());
    if (!live?.has(member)) return false;
    live.delete(member);
    this.#release(recordBytes(key.encoded, member));
    if (live.size === 0) this.#leases.delete(key.encoded);
    return true;
  }

  async leaseCount(key: LeaseKey): Promise<number> {
    this.#open();
    return this.#liveLeases(key.encoded, this.#now())?.size ?? 0;
  }

  async ping(): Promise<void> {
    this.#open();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#sweepTimer);
    this.#records.clear();
    this.#counters.clear();
    this.#indexes.clear();
    this.#buckets.clear();
    this.#leases.clear();
    this.#entries = 0;
    this.#bytes = 0;
  }

  #open(): void {
    if (this.#closed) throw storeClosed(this.backend);
  }

  #noteExpiry(expiresAt: number): void {
    if (expiresAt < this.#earliestExpiry) this.#earliestExpiry = expiresAt;
  }

  #insertRecord(encoded: string, value: string, expiresAt: number, now: number): void {
    this.#reserve(recordBytes(encoded, value), true, now);
    this.#records.set(encoded, { value, expiresAt });
    this.#noteExpiry(expiresAt);
  }

  #deleteRecord(encoded: string, entry: Entry<string>): void {
    this.#records.delete(encoded);
    this.#release(recordBytes(encoded, entry.value));
  }

  /** The live entry, dropping it first if it has expired. */
  #live<T>(map: Map<string, Entry<T>>, encoded: string, now: number): Entry<T> | undefined {
    const entry = map.get(encoded);
    if (!entry) return undefined;
    if (entry.expiresAt > now) return entry;
    map.delete(encoded);
    this.#release(recordBytes(encoded, typeof entry.value === "string" ? entry.value : ""));
    return undefined;
  }

  /** The unexpired members of a lease set, after dropping (and releasing) the expired ones. */
  #liveLeases(encoded: string, now: number): Map<string, number> | undefined {
    const members = this.#leases.get(encoded);
    if (!members) return undefined;
    for (const [member, expiresAt] of members) {
      if (expiresAt > now) continue;
      members.delete(member);
      this.#release(recordBytes(encoded, member));
    }
    if (members.size > 0) return members;
    this.#leases.delete(encoded);
    return undefined;
  }

  /**
   * Accounts for `bytes` more (and one more entry when `newEntry`), or refuses when a bound would be
   * passed, after reclaiming what has expired if anything can have.
   */
  #reserve(bytes: number, newEntry: boolean, now: number): void {
    const entries = newEntry ? 1 : 0;
    const fits = () => this.#entries + entries <= this.#maxEntries && this.#bytes + bytes <= this.#maxBytes;
    if (!fits() && this.#earliestExpiry <= now) this.#sweep(now);
    if (!fits()) {
      throw new GateError("ERR_STORE_FULL", "store full", {
        detail: "memory store is at its entry or byte bound",
      });
    }
    this.#entries += entries;
    this.#bytes += bytes;
  }

  #release(bytes: number): void {
    this.#entries--;
    this.#bytes -= bytes;
  }

  #sweep(now: number): void {
    let earliest = Number.POSITIVE_INFINITY;
    for (const [encoded, entry] of this.#records) {
      if (entry.expiresAt <= now) this.#deleteRecord(encoded, entry);
      else earliest = Math.min(earliest, entry.expiresAt);
    }
    for (const [encoded, entry] of this.#counters) {
      if (entry.expiresAt <= now) {
        this.#counters.delete(encoded);
        this.#release(recordBytes(encoded, ""));
      } else earliest = Math.min(earliest, entry.expiresAt);
    }
    for (const [encoded, entry] of this.#buckets) {
      if (entry.expiresAt <= now) {
        this.#buckets.delete(encoded);
        this.#release(recordBytes(encoded, ""));
      } else earliest = Math.min(earliest, entry.expiresAt);
    }
    for (const sets of [this.#indexes, this.#leases]) {
      for (const [encoded, members] of sets) {
        for (const [member, expiresAt] of members) {
          if (expiresAt <= now) {
            members.delete(member);
            this.#release(recordBytes(encoded, member));
          } else earliest = Math.min(earliest, expiresAt);
        }
        if (members.size === 0) sets.delete(encoded);
      }
    }
    this.#earliestExpiry = earliest;
  }
}
