import type { Store, StoreBackend } from "../../src/store/contract.ts";
import { openStore } from "../../src/store/open-store.ts";
import { openRemoteStore } from "./remote-store.ts";
import { sharedHandle } from "./shared-handle.ts";
import type { StoreCase } from "./store-cases.ts";

/**
 * Two handles on one store for races that must cross connections: the second runs in a child process
 * (its own connection, and for SQLite its own transactions) wherever the backend is shared between
 * processes. A memory store lives in one process only, so there the second is the same store.
 */
export async function openRacingStores(backend: StoreCase): Promise<{
  readonly stores: readonly [Store, Store];
  close(): Promise<void>;
}> {
  const opened = await backend.open();
  const first = await openStore(opened.url);
  const second =
    backend.name === "memory"
      ? sharedHandle(first)
      : await openRemoteStore(opened.url, backend.name as StoreBackend);
  return {
    stores: [first, second],
    async close() {
      await second.close();
      await first.close();
      await opened.cleanup();
    },
  };
}
