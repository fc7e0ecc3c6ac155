/**
 * Hosts a store in its own process and serves it over stdin/stdout as JSON lines, so the conformance
 * suite can race real processes (SQLite's calls are synchronous; only separate processes make its
 * transactions contend). Usage: node remote-store-worker.ts STORE_URL
 */
import { createInterface } from "node:readline";
import { isGateError } from "../../src/errors.ts";
import { type KeyNamespace, restoreKey } from "../../src/store/keys.ts";
import { openStore } from "../../src/store/open-store.ts";

interface Request {
  id: number;
  method: string;
  key?: { namespace: KeyNamespace; segments: string[] };
  args: unknown[];
}

const url = process.argv[2];
if (!url) throw new Error("usage: remote-store-worker.ts STORE_URL");
const store = await openStore(url);
const dispatch = store as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;

function reply(message: object): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

reply({ ready: true });
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const request = JSON.parse(line) as Request;
  const call = async () => {
    const method = dispatch[request.method];
    if (typeof method !== "function") throw new Error(`no method ${request.method}`);
    // getMany carries its keys as its one argument; every other method names one key.
    const args =
      request.method === "getMany"
        ? [
            (request.args[0] as Array<Required<Request>["key"]>).map((k) =>
              restoreKey(k.namespace, k.segments),
            ),
          ]
        : request.key
          ? [restoreKey(request.key.namespace, request.key.segments), ...request.args]
          : request.args;
    return method.apply(store, args);
  };
  call().then(
    (result) => reply({ id: request.id, result: result ?? null }),
    (error: unknown) => reply({ id: request.id, error: isGateError(error) ? error.code : String(error) }),
  );
});
lines.on("close", () => {
  store.close().finally(() => process.exit(0));
});
