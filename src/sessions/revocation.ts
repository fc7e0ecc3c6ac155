import type { SecurityEvents } from "../audit/security-events.ts";
import { ownerScope, type Principal } from "../identity/principal.ts";
import type { TaskRegistry } from "../tasks/task-registry.ts";
import {
  principalDigest,
  type RevocationBus,
  type RevocationNotice,
  type RevocationSignal,
} from "./revocation-bus.ts";
import type { SessionRegistry } from "./session-registry.ts";

/**
 * Operator revocation (THREATS S4, S13): what the admin API calls. Each action first makes the
 * revocation a store fact (records removed, or a kill generation claimed), so every replica refuses
 * the revoked ids on their next request whether or not a message reaches it; then ends the open
 * streams on this replica at once and sends a notice so the other replicas end theirs.
 *
 * The notice goes out even when the store had nothing left to remove: a retry after a failed publish
 * must still reach the streams the first attempt could not. It goes out too when the store part
 * fails, since that may have happened after some records were already removed. A publish that fails rejects (with
 * ERR_STORE_UNAVAILABLE) after the store part is done, so the caller knows streams elsewhere may run
 * on until their session's expiry or their token's exp, and can retry.
 */
export interface Revocation {
  /** Revokes one session by the digest lists and audit events show; true if a live one was removed. */
  revokeSession(sessionDigest: string): Promise<boolean>;
  /** Revokes everything the principal owns: its sessions and its tasks. The numbers removed. */
  revokePrincipal(principal: Principal): Promise<{ sessions: number; tasks: number }>;
  /** The kill switch: every existing session is refused from now on, and every open stream ends. */
  killSwitch(): Promise<void>;
}

export interface RevocationOptions {
  readonly sessions: SessionRegistry;
  readonly tasks: TaskRegistry;
  readonly bus: RevocationBus;
  readonly events: SecurityEvents;
  /**
   * Applies a notice to this replica's own open streams and stdio processes, without waiting for the
   * bus (so they end here even when the publish fails).
   */
  readonly applyLocally: (signal: RevocationSignal) => void;
}

export function createRevocation(options: RevocationOptions): Revocation {
  const { sessions, tasks, bus, events, applyLocally } = options;

  /**
   * The store part failed, possibly after it had already removed records (or claimed a kill
   * generation): the revocation may be half a store fact, so the streams it names end anyway, here
   * and (if the bus can take it) elsewhere. Ending streams is never unsafe; leaving them open until
   * the operator retries is. The store's failure is what the caller sees.
   */
  async function endStreamsDespite(notice: RevocationNotice, error: unknown): Promise<never> {
    applyLocally(notice);
    await bus.publish(notice).catch(() => undefined);
    throw error;
  }

  return {
    async revokeSession(sessionDigest) {
      const notice = { kind: "session", sessionDigest } as const;
      let removed: boolean;
      try {
        // Rejects with ERR_ARGUMENT_INVALID for anything but a digest, before anything is done.
        removed = await sessions.revokeByDigest(sessionDigest);
      } catch (error) {
        return endStreamsDespite(notice, error);
      }
      if (removed) events.emit({ type: "session.revoked", reason: "admin", sessionDigest });
      applyLocally(notice);
      await bus.publish(notice);
      return removed;
    },

    async revokePrincipal(principal) {
      const notice = { kind: "principal", principalDigest: principalDigest(ownerScope(principal)) } as const;
      let counts: [number, number];
      try {
        counts = await Promise.all([sessions.revokeAll(principal), tasks.revokeAll(principal)]);
      } catch (error) {
        return endStreamsDespite(notice, error);
      }
      events.emit({ type: "session.revoked", reason: "principal", principal: ownerScope(principal) });
      applyLocally(notice);
      await bus.publish(notice);
      return { sessions: counts[0], tasks: counts[1] };
    },

    async killSwitch() {
      let generation: number;
      try {
        generation = await sessions.killSwitch();
      } catch (error) {
        // Whether a generation was claimed, and which, is unknown: every stream ends, those of
        // sessions created since included (their clients reopen them; their sessions still resolve).
        return endStreamsDespite({ kind: "all", generation: Number.MAX_SAFE_INTEGER }, error);
      }
      events.emit({ type: "session.revoked", reason: "kill-switch" });
      const notice = { kind: "all", generation } as const;
      applyLocally(notice);
      await bus.publish(notice);
    },
  };
}
