import type { Store } from "../store/contract.ts";
import { type OpenStoreOptions, parseStoreLocation } from "../store/open-store.ts";
import { openInProcessRevocationBus, type RevocationBus } from "./revocation-bus.ts";

export interface OpenRevocationBusOptions extends OpenStoreOptions {
  /**
   * The store the bus goes with, when already open. A memory store exists only as its object, so
   * buses share one in-process hub per memory store object; without it, a `memory:` bus reaches no
   * one but itself.
   */
  readonly store?: Store;
}

/**
 * Opens the revocation bus of the store a `store` URL names (the URL is read by the same parser as
 * `openStore`): Redis pub/sub under the store's prefix, PostgreSQL LISTEN/NOTIFY on a channel
 * derived from its schema, and an in-process bus for memory and SQLite, which serve one replica.
 * Drivers are loaded only for the backend asked for.
 */
export async function openRevocationBus(
  url: string,
  options: OpenRevocationBusOptions = {},
): Promise<RevocationBus> {
  const location = parseStoreLocation(url, options);
  switch (location.backend) {
    case "memory":
      return openInProcessRevocationBus(options.store ?? {});
    case "sqlite":
      return openInProcessRevocationBus(`sqlite:${location.path}`);
    case "redis": {
      const { openRedisRevocationBus } = await import("./redis-revocation-bus.ts");
      const { url: redisUrl, prefix, timeoutMs } = location;
      return openRedisRevocationBus({
        url: redisUrl,
        prefix,
        ...(timeoutMs === undefined ? {} : { timeoutMs }),
      });
    }
    case "postgres": {
      const { openPostgresRevocationBus } = await import("./postgres-revocation-bus.ts");
      const { url: pgUrl, schema, timeoutMs } = location;
      return openPostgresRevocationBus({
        url: pgUrl,
        schema,
        ...(timeoutMs === undefined ? {} : { timeoutMs }),
      });
    }
  }
}
