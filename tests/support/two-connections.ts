/**
 * One store reached two ways, for races that must cross connections: the test's own connection and a
 * second one in another process (tests/support/remote-store.ts), except for the memory store, which
 * lives in one process and is shared as the one object. Closing closes both and removes what the
 * test wrote.
 */
import type { Store, StoreBackend } from "../../src/store/contract.ts";
import { openStore } from "../../src/store/open-store.ts";
import { openRemoteStore } from "./remote-store.ts";
import type { StoreCase } from "./store-cases.ts";

export interface TwoConnections {
  readonly first: Store;
  readonly second: Store;
  close(): Promise<void>;
}

export async function openTwoConnections(backend: StoreCase): Promise<TwoConnections> {
  const opened = await backend.open();
  const first = await openStore(opened.url);
  const second =
    backend.name === "memory" ? first : await openRemoteStore(opened.url, backend.name as StoreBackend);
  return {
    first,
    second,
    async close() {
      await first.close();
      if (second !== first) await second.close();
      await opened.cleanup();
    },
  };
}
