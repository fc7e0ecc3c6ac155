import { createHash } from "node:crypto";
import pg from "pg";
import { storeUnavailable } from "../store/arguments.ts";
import { busClosed, createNoticeDispatch, encodeNotice, type RevocationBus } from "./revocation-bus.ts";

/**
 * The revocation bus on PostgreSQL LISTEN/NOTIFY (docs/storage-schema.md, "Revocation channel").
 *
 * A dedicated client LISTENs (a pooled connection would lose its LISTEN when handed back); notices
 * go out with `pg_notify` on a one-connection pool of the bus's own, apart from the store's. The
 * driver does not reconnect by itself: when the listening client fails or ends, a new one is opened
 * with capped backoff, LISTENs, and only then `resync` is signalled, so nothing sent after the
 * re-check began is missed. A heartbeat query finds a connection that stopped answering.
 */

export interface PostgresRevocationBusOptions {
  /** postgres:// URL with at most `sslmode` as a parameter (may carry a password: never log it). */
  readonly url: string;
  /** The store's schema; the channel is derived from it. */
  readonly schema: string;
  /** Bound on connecting, on each query and on a heartbeat's answer. Default 1000 ms. */
  readonly timeoutMs?: number;
  /** How often the listening client checks that its connection answers. Default 5000 ms. */
  readonly heartbeatMs?: number;
}

const DEFAULT_TIMEOUT_MS = 1_000;
const DEFAULT_HEARTBEAT_MS = 5_000;
const RECONNECT_BASE_MS = 100;
const RECONNECT_CAP_MS = 2_000;

/**
 * The channel of a schema's replicas. A schema name may use all 63 characters an identifier has, so
 * the channel carries a digest of it rather than the name: fixed length, always a valid identifier,
 * and two schemas never share one.
 */
export function postgresRevocationChannel(schema: string): string {
  return `tenantgate_revocation_${createHash("sha256").update(schema, "utf8").digest("hex").slice(0, 24)}`;
}

/** Only the kind of a driver failure travels on: its text may name the URL or a row. */
function failureOf(error: unknown): Error {
  const code = (error as { code?: unknown } | null)?.code;
  return new Error(`postgres revocation bus: ${typeof code === "string" ? code : "no answer"}`);
}

export async function openPostgresRevocationBus(
  options: PostgresRevocationBusOptions,
): Promise<RevocationBus> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
  const channel = postgresRevocationChannel(options.schema);
  const dispatch = createNoticeDispatch();
  const clientConfig = {
    connectionString: options.url,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
    keepAlive: true,
    application_name: "tenantgate-revocation",
  };
  const publisher = new pg.Pool({ ...clientConfig, max: 1, allowExitOnIdle: true });
  publisher.on("error", () => {});
  let closed = false;
  let listener: pg.Client | null = null;
  let reconnectTimer: NodeJS.Timeout | undefined;
  let attempts = 0;

  async function listen(): Promise<pg.Client> {
    const client = new pg.Client(clientConfig);
    client.on("error", () => lost(client));
    client.on("end", () => lost(client));
    client.on("notification", (message) => {
      if (message.channel === channel) dispatch.receive(message.payload);
    });
    try {
      await client.connect();
      // The channel is a fixed-shape identifier (see postgresRevocationChannel), quoted all the same.
      await client.query(`LISTEN "${channel}"`);
    } catch (error) {
      client.removeAllListeners("end");
      client.on("error", () => {});
      await client.end().catch(() => {});
      throw error;
    }
    return client;
  }

  /** The listening client failed or ended: open another, then have subscribers re-check. */
  function lost(client: pg.Client): void {
    if (client !== listener) return;
    listener = null;
    client.end().catch(() => {});
    scheduleReconnect();
  }

  function scheduleReconnect(): void {
    if (closed || reconnectTimer !== undefined) return;
    attempts += 1;
    const wait =
      Math.min(RECONNECT_BASE_MS * 2 ** Math.min(attempts - 1, 10), RECONNECT_CAP_MS) +
      Math.floor(Math.random() * RECONNECT_BASE_MS);
    reconnectTimer = setTimeout(() => {
      reconnectTimer = undefined;
      listen().then(
        (client) => {
          if (closed) {
            client.end().catch(() => {});
            return;
          }
          listener = client;
          attempts = 0;
          dispatch.resync();
        },
        () => scheduleReconnect(),
      );
    }, wait);
    reconnectTimer.unref();
  }

  try {
    listener = await listen();
  } catch (error) {
    closed = true;
    await publisher.end().catch(() => {});
    throw storeUnavailable("postgres", failureOf(error));
  }

  const heartbeat = setInterval(() => {
    const client = listener;
    if (client === null) return;
    client.query("SELECT 1").catch(() => lost(client));
  }, heartbeatMs);
  heartbeat.unref();

  return {
    shared: true,
    async publish(notice) {
      const text = encodeNotice(notice);
      if (closed) throw busClosed();
      try {
        await publisher.query("SELECT pg_notify($1, $2)", [channel, text]);
      } catch (error) {
        throw storeUnavailable("postgres", failureOf(error));
      }
    },
    subscribe: (handler) => dispatch.subscribe(handler),
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(heartbeat);
      clearTimeout(reconnectTimer);
      const client = listener;
      listener = null;
      await Promise.all([client?.end().catch(() => {}), publisher.end().catch(() => {})]);
    },
  };
}
