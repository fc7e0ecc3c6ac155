import type { Store } from "./contract.ts";

export interface PostgresStoreOptions {
  /** postgres:// URL without query parameters (may carry a password: never log it). */
  readonly url: string;
  /** Schema holding this store's tables (created if missing). */
  readonly schema: string;
  /** Bound on connecting and on each query before ERR_STORE_UNAVAILABLE. */
  readonly timeoutMs?: number;
  /** Connections in the pool (keep small: the server allows 100 in all). */
  readonly poolSize?: number;
}

export async function openPostgresStore(_options: PostgresStoreOptions): Promise<Store> {
  throw new Error("postgres store: not built yet");
}
