import { storeClosed } from "../../src/store/arguments.ts";
import type { Store } from "../../src/store/contract.ts";

/**
 * A handle on a store that can be closed on its own while the store lives on: how the conformance
 * suite opens "another connection" to an in-process backend.
 */
export function sharedHandle(store: Store): Store {
  let closed = false;
  const guard =
    <A extends unknown[], R>(method: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      if (closed) throw storeClosed(store.backend);
      return method.apply(store, args);
    };
  return {
    backend: store.backend,
    get: guard(store.get),
    getMany: guard(store.getMany),
    put: guard(store.put),
    claim: guard(store.claim),
    take: guard(store.take),
    takeIfEquals: guard(store.takeIfEquals),
    replaceIfEquals: guard(store.replaceIfEquals),
    delete: guard(store.delete),
    increment: guard(store.increment),
    indexAdd: guard(store.indexAdd),
    indexRemove: guard(store.indexRemove),
    indexList: guard(store.indexList),
    takeTokens: guard(store.takeTokens),
    leaseAcquire: guard(store.leaseAcquire),
    leaseRenew: guard(store.leaseRenew),
    leaseRelease: guard(store.leaseRelease),
    leaseCount: guard(store.leaseCount),
    ping: guard(store.ping),
    close: async () => {
      closed = true;
    },
  };
}
