import { GateError } from "../errors.ts";
import { checkCounter, checkMember, checkTtl, checkValue, storeClosed } from "./arguments.ts";
import type { ClaimOutcome, CounterOptions, CounterOutcome, Store, TtlOptions } from "./contract.ts";
import type { CounterKey, IndexKey, RecordKey } from "./keys.ts";

/**
 * An in-process store for single-replica deployments and tests.
 *
 * Bounded: past `maxEntries` live entries (records + counters + index members) it refuses new ones
 * with `ERR_STORE_FULL` and never evicts a live entry, so one principal creating state without end
 * cannot push out another's (THREATS L6). Expired entries are swept lazily and on a timer.
 *
 * Every method body runs without an `await`, so each operation is atomic on the event loop.
 */

export interface MemoryStoreOptions {
  /** Live entries allowed before new ones are refused. Default 100,000. */
  readonly maxEntries?: number;
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

export class MemoryStore implements Store {
  readonly backend = "memory" as const;
  readonly #records = new Map<string, Entry<string>>();
  readonly #counters = new Map<string, Entry<number>>();
  readonly #indexes = new Map<string, Map<string, number>>();
  readonly #maxEntries: number;
  readonly #now: () => number;
  readonly #sweepTimer: NodeJS.Timeout;
  #entries = 0;
  #closed = false;

  constructor(options: MemoryStoreOptions = {}) {
    this.#maxEntries = options.maxEntries ?? 100_000;
    this.#now = options.now ?? Date.now;
    this.#sweepTimer = setInterval(() => this.#sweep(), options.sweepIntervalMs ?? 30_000);
    this.#sweepTimer.unref();
  }

  /** Live entries (records, counters and index members), for metrics and tests. */
  get size(): number {
    this.#sweep();
    return this.#entries;
  }

  async get(key: RecordKey): Promise<string | null> {
    this.#open();
    return this.#live(this.#records, key.encoded)?.value ?? null;
  }

  async put(key: RecordKey, value: string, options?: TtlOptions): Promise<void> {
    this.#open();
    checkValue(value);
    const expiresAt = this.#expiry(checkTtl(options));
    const existing = this.#live(this.#records, key.encoded);
    if (existing) {
      existing.value = value;
      existing.expiresAt = expiresAt;
      return;
    }
    this.#reserve();
    this.#records.set(key.encoded, { value, expiresAt });
  }

  async claim(key: RecordKey, value: string, options?: TtlOptions): Promise<ClaimOutcome> {
    this.#open();
    checkValue(value);
    const expiresAt = this.#expiry(checkTtl(options));
    const existing = this.#live(this.#records, key.encoded);
    if (existing) return { won: false, winner: existing.value };
    this.#reserve();
    this.#records.set(key.encoded, { value, expiresAt });
    return { won: true, winner: value };
  }

  async take(key: RecordKey): Promise<string | null> {
    this.#open();
    const existing = this.#live(this.#records, key.encoded);
    if (!existing) return null;
    this.#records.delete(key.encoded);
    this.#entries--;
    return existing.value;
  }

  async takeIfEquals(key: RecordKey, expected: string): Promise<boolean> {
    this.#open();
    const existing = this.#live(this.#records, key.encoded);
    if (!existing || existing.value !== expected) return false;
    this.#records.delete(key.encoded);
    this.#entries--;
    return true;
  }

  async delete(key: RecordKey): Promise<boolean> {
    return (await this.take(key)) !== null;
  }

  async increment(key: CounterKey, delta: number, options?: CounterOptions): Promise<CounterOutcome> {
    this.#open();
    const { ttlMs, limit } = checkCounter(delta, options);
    const existing = this.#live(this.#counters, key.encoded);
    const current = existing?.value ?? 0;
    const next = current + delta;
    if (limit !== undefined && next > limit) return { applied: false, value: current };
    if (existing) {
      existing.value = next;
    } else {
      this.#reserve();
      this.#counters.set(key.encoded, { value: next, expiresAt: this.#expiry(ttlMs) });
    }
    return { applied: true, value: next };
  }

  async indexAdd(key: IndexKey, member: string, options?: TtlOptions): Promise<void> {
    this.#open();
    checkMember(member);
    const expiresAt = this.#expiry(checkTtl(options));
    let members = this.#indexes.get(key.encoded);
    const existing = members?.get(member);
    if (existing !== undefined && existing > this.#now()) {
      members?.set(member, expiresAt);
      return;
    }
    if (existing !== undefined) {
      members?.delete(member);
      this.#entries--;
    }
    this.#reserve();
    if (!members) {
      members = new Map();
      this.#indexes.set(key.encoded, members);
    }
    members.set(member, expiresAt);
  }

  async indexRemove(key: IndexKey, member: string): Promise<boolean> {
    this.#open();
    const members = this.#indexes.get(key.encoded);
    const expiresAt = members?.get(member);
    if (!members || expiresAt === undefined) return false;
    members.delete(member);
    this.#entries--;
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

  async ping(): Promise<void> {
    this.#open();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#sweepTimer);
    this.#records.clear();
    this.#counters.clear();
    this.#indexes.clear();
    this.#entries = 0;
  }

  #open(): void {
    if (this.#closed) throw storeClosed(this.backend);
  }

  #expiry(ttlMs: number | undefined): number {
    return ttlMs === undefined ? Number.POSITIVE_INFINITY : this.#now() + ttlMs;
  }

  /** The live entry, dropping it first if it has expired. */
  #live<T>(map: Map<string, Entry<T>>, encoded: string): Entry<T> | undefined {
    const entry = map.get(encoded);
    if (!entry) return undefined;
    if (entry.expiresAt > this.#now()) return entry;
    map.delete(encoded);
    this.#entries--;
    return undefined;
  }

  /** Counts one new entry, or refuses it when full (after reclaiming what has expired). */
  #reserve(): void {
    if (this.#entries >= this.#maxEntries) this.#sweep();
    if (this.#entries >= this.#maxEntries) {
      throw new GateError("ERR_STORE_FULL", "store full", {
        detail: `memory store holds its maximum of ${this.#maxEntries} entries`,
      });
    }
    this.#entries++;
  }

  #sweep(): void {
    const now = this.#now();
    for (const map of [this.#records, this.#counters] as Map<string, Entry<unknown>>[]) {
      for (const [encoded, entry] of map) {
        if (entry.expiresAt <= now) {
          map.delete(encoded);
          this.#entries--;
        }
      }
    }
    for (const [encoded, members] of this.#indexes) {
      for (const [member, expiresAt] of members) {
        if (expiresAt <= now) {
          members.delete(member);
          this.#entries--;
        }
      }
      if (members.size === 0) this.#indexes.delete(encoded);
    }
  }
}
