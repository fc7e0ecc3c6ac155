import type { Readable } from "node:stream";
import { Pool } from "undici";
import { GateError } from "../errors.ts";
import type { Principal } from "../identity/principal.ts";
import type { RevocationSignal } from "../sessions/revocation-bus.ts";
import type { OwnerScope } from "../store/keys.ts";

export interface UpstreamResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** A Node stream: piped into the client's response as it arrives, never buffered whole. */
  readonly body: Readable;
}

export interface UpstreamRequest {
  readonly method: "GET" | "POST" | "DELETE";
  readonly headers: Readonly<Record<string, string>>;
  readonly body?: Buffer;
  /** Aborts the call (GET streams whose client left); POSTs are never given one (see below). */
  readonly signal?: AbortSignal;
  /** The verified caller; in-process upstreams (stdio) act for it; never sent anywhere. */
  readonly principal?: Principal;
}

/** The gateway session an upstream session belongs to, as a revocation names it. */
export interface UpstreamSessionBinding {
  readonly sessionDigest: string;
  /** The session's kill generation: a kill switch of a later generation ends it. */
  readonly killGeneration: number;
  /** Whether the gateway session still resolves (asked after notices may have been lost). */
  readonly stillValid: () => Promise<boolean>;
  /** When the session's absolute lifetime ends (epoch ms): what the upstream holds for it ends then. */
  readonly expiresAt: number;
}

export interface UpstreamClient {
  readonly url: string;
  request(request: UpstreamRequest): Promise<UpstreamResponse>;
  close(): Promise<void>;
  /**
   * In-process upstreams (stdio) only: the gateway recorded a session whose upstream session id is
   * `upstreamSessionId`, so a revocation naming that session can end what the upstream holds for it.
   */
  bindSession?(upstreamSessionId: string, binding: UpstreamSessionBinding): void;
  /**
   * In-process upstreams (stdio) only: a revocation this replica heard (or made). What it names ends
   * at once, not at an idle timeout: a stdio process holds its principal's credentials and a cap slot.
   */
  applyRevocation?(signal: RevocationSignal): void;
  /**
   * In-process upstreams (stdio) only: `owner`'s vault entry `entry` (null: all of them) was written or
   * removed on this replica. What holds the old value in its environment ends now, not at its idle
   * timeout: a removed or replaced credential must stop being used.
   */
  credentialsChanged?(owner: OwnerScope, entry: string | null): void;
}

export interface UpstreamClientOptions {
  /** Most connections kept to this upstream. */
  readonly connections?: number;
  /** How long the upstream may take to send response headers. */
  readonly headersTimeoutMs?: number;
}

/**
 * One upstream reached over HTTP with undici's `request` (Node streams: the web-stream path was
 * several times slower and failed on client disconnect, docs/decisions.md).
 *
 * The body timeout is off: an SSE response (a POST's or the GET stream) may stay quiet for as long
 * as a tool runs or a session lives, and its end is decided by the upstream, the session's lifetime
 * or the client, not by a gap between chunks. Connection failures and timeouts become
 * ERR_UPSTREAM_UNAVAILABLE, with the transport error kept as `cause` for the operator.
 */
export function createUpstreamClient(url: string, options: UpstreamClientOptions = {}): UpstreamClient {
  const target = new URL(url);
  const path = `${target.pathname}${target.search}`;
  const pool = new Pool(target.origin, {
    connections: options.connections ?? 256,
    headersTimeout: options.headersTimeoutMs ?? 300_000,
    bodyTimeout: 0,
    // A response larger than this is not an MCP message the gateway should be relaying at once;
    // streams are unaffected (they are not length-delimited).
    keepAliveTimeout: 4_000,
  });

  return {
    url,
    async request(request) {
      try {
        const response = await pool.request({
          path,
          method: request.method,
          headers: request.headers,
          body: request.body ?? null,
          ...(request.signal ? { signal: request.signal } : {}),
        });
        return { status: response.statusCode, headers: response.headers, body: response.body };
      } catch (cause) {
        throw new GateError("ERR_UPSTREAM_UNAVAILABLE", "upstream request failed", {
          detail: transportFailure(cause),
          cause,
        });
      }
    },
    async close() {
      // Called once the gateway's grace period is over and its clients are gone: what is still in
      // flight is an upstream answer read only to let the upstream finish (a client that left), and
      // an upstream that never ends one must not hold shutdown (and the audit file's close) forever.
      let timer: NodeJS.Timeout | undefined;
      const bounded = new Promise<"late">((resolve) => {
        timer = setTimeout(() => resolve("late"), CLOSE_BOUND_MS);
      });
      const outcome = await Promise.race([pool.close().then(() => "closed" as const), bounded]).catch(
        () => "late" as const,
      );
      clearTimeout(timer);
      if (outcome === "late") await pool.destroy().catch(() => undefined);
    },
  };
}

/** How long `close` waits for requests still in flight before dropping them. */
const CLOSE_BOUND_MS = 1_000;

/** A short operator-facing reason (an undici error code), never a URL or header value. */
function transportFailure(cause: unknown): string {
  const code = (cause as { code?: unknown })?.code;
  return typeof code === "string" && /^[A-Z_]{1,64}$/.test(code) ? code : "request-failed";
}
