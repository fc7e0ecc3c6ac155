import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { GateError, type GateErrorCode, gateErrorCodes } from "../../src/errors.ts";
import type { Store, StoreBackend } from "../../src/store/contract.ts";

const workerPath = fileURLToPath(new URL("./remote-store-worker.ts", import.meta.url));

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

/**
 * A `Store` whose calls run in a child process (see remote-store-worker.ts). Calls from the parent
 * are pipelined, so many can be in flight in the child at once.
 */
export async function openRemoteStore(url: string, backend: StoreBackend): Promise<Store> {
  const child: ChildProcess = spawn(process.execPath, [workerPath, url], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const pending = new Map<number, Pending>();
  let nextId = 1;
  const lines = createInterface({ input: child.stdout! });
  const ready = new Promise<void>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`store worker exited with ${code}`)));
    lines.on("line", (line) => {
      const message = JSON.parse(line) as { ready?: true; id?: number; result?: unknown; error?: string };
      if (message.ready) return resolve();
      const waiter = pending.get(message.id ?? -1);
      if (!waiter) return;
      pending.delete(message.id ?? -1);
      if (message.error === undefined) waiter.resolve(message.result);
      else if ((gateErrorCodes as readonly string[]).includes(message.error)) {
        waiter.reject(new GateError(message.error as GateErrorCode, "remote store error"));
      } else waiter.reject(new Error(message.error));
    });
  });
  await ready;

  const call = (
    method: string,
    key: { namespace: string; segments: readonly string[] } | null,
    args: unknown[],
  ) =>
    new Promise<unknown>((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject });
      const request = {
        id,
        method,
        args,
        ...(key ? { key: { namespace: key.namespace, segments: key.segments } } : {}),
      };
      child.stdin!.write(`${JSON.stringify(request)}\n`);
    });

  const keyed =
    (method: string) =>
    (key: { namespace: string; segments: readonly string[] }, ...args: unknown[]) =>
      call(
        method,
        key,
        args.filter((arg) => arg !== undefined),
      );

  return {
    backend,
    get: keyed("get"),
    getMany: (keys: ReadonlyArray<{ namespace: string; segments: readonly string[] }>) =>
      call("getMany", null, [keys.map((key) => ({ namespace: key.namespace, segments: key.segments }))]),
    put: keyed("put"),
    claim: keyed("claim"),
    take: keyed("take"),
    takeIfEquals: keyed("takeIfEquals"),
    replaceIfEquals: keyed("replaceIfEquals"),
    delete: keyed("delete"),
    increment: keyed("increment"),
    indexAdd: keyed("indexAdd"),
    indexRemove: keyed("indexRemove"),
    indexList: keyed("indexList"),
    takeTokens: keyed("takeTokens"),
    leaseAcquire: keyed("leaseAcquire"),
    leaseRenew: keyed("leaseRenew"),
    leaseRelease: keyed("leaseRelease"),
    leaseCount: keyed("leaseCount"),
    ping: () => call("ping", null, []),
    close: async () => {
      child.stdin!.end();
      await new Promise((resolve) => child.once("exit", resolve));
    },
  } as Store;
}
