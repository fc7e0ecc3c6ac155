import type { Store } from "./contract.ts";

export interface SqliteStoreOptions {
  /** The database file (created if missing). */
  readonly path: string;
  /** How long a call waits for another process's lock before ERR_STORE_UNAVAILABLE. */
  readonly busyTimeoutMs?: number;
}

export async function openSqliteStore(_options: SqliteStoreOptions): Promise<Store> {
  throw new Error("sqlite store: not built yet");
}
