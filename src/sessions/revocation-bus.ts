import { digest } from "../crypto/ids.ts";
import { GateError, invalidArgument } from "../errors.ts";
import type { OwnerScope } from "../store/keys.ts";

/**
 * The revocation bus: how one replica tells every other that open streams must end (THREATS S13).
 *
 * A notice names what was revoked by digest only, never by a raw id: the channel (Redis pub/sub,
 * PostgreSQL NOTIFY) is observable by anyone with access to the store. Notices are facts about the
 * store, already written there before they are sent; the bus only hurries their effect on streams
 * that are already open. A notice can therefore only ever end streams or drop caches, never resume,
 * extend or create anything, so a forged one (anyone who can write to the store can publish) does no
 * more harm than ending streams, which that writer could achieve by deleting records anyway.
 *
 * Delivery is at most once. When a subscriber connection drops, notices sent meanwhile are lost: the
 * bus then signals `resync`, and the subscriber re-checks everything it holds against the store
 * (the fail-closed path). `resync` is local only; it never comes from the wire.
 */

export type RevocationNotice =
  /** One session was ended or revoked: its open streams end. */
  | { readonly kind: "session"; readonly sessionDigest: string }
  /** Everything a principal owns was revoked: its open streams end, legacy and modern. */
  | { readonly kind: "principal"; readonly principalDigest: string }
  /**
   * The kill switch: every stream ends, apart from those of sessions created at or after
   * `generation` (the store-assigned kill generation), which a late notice must not cut.
   */
  | { readonly kind: "all"; readonly generation: number };

/** What a subscriber hears: a notice, or `resync` when notices may have been lost. */
export type RevocationSignal = RevocationNotice | { readonly kind: "resync" };

export type RevocationHandler = (signal: RevocationSignal) => void;

export interface RevocationBus {
  /** Whether notices reach other processes (Redis, PostgreSQL) or only this one (memory, SQLite). */
  readonly shared: boolean;
  /**
   * Sends a notice to every subscriber, on every replica, this one included. Rejects with
   * ERR_STORE_UNAVAILABLE when the channel cannot take it (the caller decides whether to retry).
   */
  publish(notice: RevocationNotice): Promise<void>;
  /** Adds a handler; returns the function that removes it. Handlers run synchronously, in order. */
  subscribe(handler: RevocationHandler): () => void;
  /** Releases connections and timers. Publishing afterwards rejects; closing twice is harmless. */
  close(): Promise<void>;
}

/** Bound on a notice's wire form; a real one is about a hundred bytes. */
export const MAX_NOTICE_LENGTH = 512;
const WIRE_VERSION = 1;
/** A SHA-256 digest in base64url without padding (session and principal digests alike). */
const DIGEST = /^[A-Za-z0-9_-]{43}$/;

/**
 * The digest a principal is named by on the bus: unkeyed, like id digests (docs/decisions.md), so
 * replicas agree whatever master key each has active mid-rotation. It reveals nothing the store does
 * not already hold in clear (ownership records name their owner).
 */
export function principalDigest(owner: OwnerScope): string {
  // Length-prefixed, so no (tenant, issuer, subject) can spell another's concatenation.
  const named = [owner.tenant, owner.issuer, owner.subject].map((part) => `${part.length}:${part}`).join("");
  return digest("principal", named);
}

function isGeneration(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) > 0;
}

/** The wire form of a notice; refuses one that `decodeNotice` would drop. */
export function encodeNotice(notice: RevocationNotice): string {
  switch (notice?.kind) {
    case "session":
      if (!DIGEST.test(notice.sessionDigest)) throw invalidArgument("sessionDigest", "must be a digest");
      return JSON.stringify({ v: WIRE_VERSION, kind: "session", sessionDigest: notice.sessionDigest });
    case "principal":
      if (!DIGEST.test(notice.principalDigest)) throw invalidArgument("principalDigest", "must be a digest");
      return JSON.stringify({ v: WIRE_VERSION, kind: "principal", principalDigest: notice.principalDigest });
    case "all":
      if (!isGeneration(notice.generation)) throw invalidArgument("generation", "must be a positive integer");
      return JSON.stringify({ v: WIRE_VERSION, kind: "all", generation: notice.generation });
    default:
      throw invalidArgument("notice", "must be a session, principal or all notice");
  }
}

/**
 * A notice read from the wire, or null for anything that is not exactly one: wrong type, too long,
 * not JSON, another version, an unknown kind, a missing or extra field, a digest of the wrong shape.
 */
export function decodeNotice(text: unknown): RevocationNotice | null {
  if (typeof text !== "string" || text.length > MAX_NOTICE_LENGTH) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  const fields = value as Record<string, unknown>;
  const keys = Object.keys(fields).sort().join(",");
  if (fields["v"] !== WIRE_VERSION) return null;
  switch (fields["kind"]) {
    case "session": {
      const sessionDigest = fields["sessionDigest"];
      if (keys !== "kind,sessionDigest,v" || typeof sessionDigest !== "string" || !DIGEST.test(sessionDigest))
        return null;
      return Object.freeze({ kind: "session", sessionDigest });
    }
    case "principal": {
      const digestValue = fields["principalDigest"];
      if (keys !== "kind,principalDigest,v" || typeof digestValue !== "string" || !DIGEST.test(digestValue))
        return null;
      return Object.freeze({ kind: "principal", principalDigest: digestValue });
    }
    case "all": {
      const generation = fields["generation"];
      if (keys !== "generation,kind,v" || !isGeneration(generation)) return null;
      return Object.freeze({ kind: "all", generation });
    }
    default:
      return null;
  }
}

/**
 * The part every backend shares: handlers, and the strict reading of what arrives. Backends call
 * `receive` with each raw message and `resync` after a reconnect.
 */
export interface NoticeDispatch {
  subscribe(handler: RevocationHandler): () => void;
  /** Decodes a raw message and hands it to every handler; a malformed one is dropped (and counted). */
  receive(text: unknown): void;
  /** Tells every handler that notices may have been lost. */
  resync(): void;
  /** Messages dropped as malformed so far. */
  readonly dropped: number;
}

export function createNoticeDispatch(): NoticeDispatch {
  const handlers = new Set<RevocationHandler>();
  let dropped = 0;
  const deliver = (signal: RevocationSignal) => {
    for (const handler of [...handlers]) {
      try {
        handler(signal);
      } catch {
        // A failing handler must not keep the notice from the others.
      }
    }
  };
  return {
    subscribe(handler) {
      if (typeof handler !== "function") throw invalidArgument("handler", "must be a function");
      // Each subscription is its own entry, so one function subscribed twice is removed once per call.
      const entry: RevocationHandler = (signal) => handler(signal);
      handlers.add(entry);
      return () => void handlers.delete(entry);
    },
    receive(text) {
      const notice = decodeNotice(text);
      if (notice === null) {
        dropped += 1;
        return;
      }
      deliver(notice);
    },
    resync() {
      deliver(Object.freeze({ kind: "resync" }));
    },
    get dropped() {
      return dropped;
    },
  };
}

/** A publish on a closed bus fails like a call on a closed store: the notice did not go out. */
export function busClosed(): GateError {
  return new GateError("ERR_STORE_UNAVAILABLE", "store unavailable", { detail: "revocation bus is closed" });
}

// --- in-process ----------------------------------------------------------------------------------

/** Buses of one process that share a store: what a notice sent on one reaches. */
export interface InProcessHub {
  /** Sends a raw message to every bus on the hub (tests send malformed ones through it). */
  send(text: string): void;
}

interface HubState extends InProcessHub {
  readonly members: Set<NoticeDispatch>;
}

const hubsByStore = new WeakMap<object, HubState>();
const hubsByName = new Map<string, HubState>();

function newHub(): HubState {
  const members = new Set<NoticeDispatch>();
  return {
    members,
    send(text) {
      // Asynchronous, as a networked bus is: a publisher never runs handlers inside its own call.
      queueMicrotask(() => {
        for (const member of [...members]) member.receive(text);
      });
    },
  };
}

/**
 * The hub of the buses opened for one store: by the store object (a memory store exists only as
 * that object) or by a name (a SQLite file's absolute path).
 */
export function inProcessHub(key: object | string): InProcessHub {
  return hubFor(key);
}

function hubFor(key: object | string): HubState {
  if (typeof key === "string") {
    let hub = hubsByName.get(key);
    if (!hub) {
      hub = newHub();
      hubsByName.set(key, hub);
    }
    return hub;
  }
  let hub = hubsByStore.get(key);
  if (!hub) {
    hub = newHub();
    hubsByStore.set(key, hub);
  }
  return hub;
}

/**
 * A bus that reaches only this process: for memory and SQLite stores, which serve one replica (a
 * memory store is one process's; a SQLite file is not for several gateway processes at once, see
 * docs/operator-guide.md). Every bus opened on the same hub key hears the others.
 */
export function openInProcessRevocationBus(key: object | string): RevocationBus {
  const hub = hubFor(key);
  const dispatch = createNoticeDispatch();
  hub.members.add(dispatch);
  let closed = false;
  return {
    shared: false,
    async publish(notice) {
      const text = encodeNotice(notice);
      if (closed) throw busClosed();
      hub.send(text);
    },
    subscribe: (handler) => dispatch.subscribe(handler),
    async close() {
      if (closed) return;
      closed = true;
      hub.members.delete(dispatch);
      if (typeof key === "string" && hub.members.size === 0) hubsByName.delete(key);
    },
  };
}
