import type { Store } from "./contract.ts";

export interface RedisStoreOptions {
  /** redis:// or rediss:// URL without query parameters (may carry a password: never log it). */
  readonly url: string;
  /** Prefix of every key this store writes. */
  readonly prefix: string;
  /** Bound on connecting and on each command before ERR_STORE_UNAVAILABLE. */
  readonly timeoutMs?: number;
}

export async function openRedisStore(_options: RedisStoreOptions): Promise<Store> {
  throw new Error("redis store: not built yet");
}
