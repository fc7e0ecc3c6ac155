import { Redis, type RedisOptions } from "ioredis";
import { storeUnavailable } from "../store/arguments.ts";
import { busClosed, createNoticeDispatch, encodeNotice, type RevocationBus } from "./revocation-bus.ts";

/**
 * The revocation bus on Redis pub/sub (docs/storage-schema.md, "Revocation channel").
 *
 * Two connections of its own, apart from the store's: a subscriber (a connection in subscribe mode
 * can run nothing else) and a publisher with the store's fail-fast settings. The subscriber keeps
 * reconnecting; after every reconnect it subscribes again and only then signals `resync`, so a
 * notice published after the subscriber's re-check began is heard, and one published while it was
 * away is caught by the re-check. A heartbeat (PING, allowed in subscribe mode) finds a connection
 * that stopped answering without closing, and drops it so the same path runs.
 */

export interface RedisRevocationBusOptions {
  /** redis:// or rediss:// URL without query parameters (may carry a password: never log it). */
  readonly url: string;
  /** The store's key prefix; the channel is `<prefix>revocation`. */
  readonly prefix: string;
  /** Bound on connecting, on each command and on a heartbeat's answer. Default 1000 ms. */
  readonly timeoutMs?: number;
  /** How often the subscriber checks that its connection answers. Default 5000 ms. */
  readonly heartbeatMs?: number;
}

const DEFAULT_TIMEOUT_MS = 1_000;
const DEFAULT_HEARTBEAT_MS = 5_000;
const RECONNECT_BASE_MS = 100;
const RECONNECT_CAP_MS = 2_000;

/** The channel a store's replicas share: under the store's prefix, so two deployments never meet. */
export function redisRevocationChannel(prefix: string): string {
  return `${prefix}revocation`;
}

function connectionOptions(timeoutMs: number): RedisOptions {
  return {
    lazyConnect: true,
    enableOfflineQueue: false,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    // Subscribing again is done by hand after a reconnect, so the re-check runs only once it holds.
    autoResubscribe: false,
    retryStrategy: (attempt) =>
      Math.min(RECONNECT_BASE_MS * 2 ** Math.min(attempt - 1, 10), RECONNECT_CAP_MS) +
      Math.floor(Math.random() * RECONNECT_BASE_MS),
  };
}

async function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("redis did not answer in time")), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Only the kind of a driver failure travels on: its text may name the URL. */
function failureOf(error: unknown): Error {
  const code = (error as { code?: unknown } | null)?.code;
  return new Error(`redis revocation bus: ${typeof code === "string" ? code : "no answer"}`);
}

export async function openRedisRevocationBus(options: RedisRevocationBusOptions): Promise<RevocationBus> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
  const channel = redisRevocationChannel(options.prefix);
  const dispatch = createNoticeDispatch();
  const subscriber = new Redis(options.url, connectionOptions(timeoutMs));
  const publisher = new Redis(options.url, connectionOptions(timeoutMs));
  // Without listeners ioredis prints every connection error; failures surface as calls that reject.
  subscriber.on("error", () => {});
  publisher.on("error", () => {});
  let closed = false;
  let subscribedOnce = false;
  let heartbeat: NodeJS.Timeout | undefined;

  subscriber.on("message", (from: string, message: string) => {
    if (from === channel) dispatch.receive(message);
  });
  subscriber.on("ready", () => {
    // The first ready is the open below; every later one is a reconnect, after which notices may
    // have been missed.
    if (!subscribedOnce || closed) return;
    subscriber.subscribe(channel).then(
      () => dispatch.resync(),
      // Not subscribed: drop the connection so the next reconnect tries again.
      () => subscriber.disconnect(true),
    );
  });

  const release = () => {
    closed = true;
    clearInterval(heartbeat);
    subscriber.disconnect();
    publisher.disconnect();
  };
  try {
    await within(Promise.all([subscriber.connect(), publisher.connect()]), timeoutMs);
    await within(subscriber.subscribe(channel), timeoutMs);
  } catch (error) {
    release();
    throw storeUnavailable("redis", failureOf(error));
  }
  subscribedOnce = true;

  heartbeat = setInterval(() => {
    if (subscriber.status !== "ready") return;
    within(subscriber.ping(), timeoutMs).catch(() => {
      // A connection that stopped answering is dropped; the reconnect re-checks what was missed.
      if (!closed) subscriber.disconnect(true);
    });
  }, heartbeatMs);
  heartbeat.unref();

  return {
    shared: true,
    async publish(notice) {
      const text = encodeNotice(notice);
      if (closed) throw busClosed();
      try {
        await within(publisher.publish(channel, text), timeoutMs);
      } catch (error) {
        throw storeUnavailable("redis", failureOf(error));
      }
    },
    subscribe: (handler) => dispatch.subscribe(handler),
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(heartbeat);
      await Promise.all(
        [subscriber, publisher].map((client) =>
          within(client.quit(), timeoutMs).catch(() => client.disconnect()),
        ),
      );
    },
  };
}
