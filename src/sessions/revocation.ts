import type { SecurityEvents } from "../audit/security-events.ts";
import { ownerScope, type Principal } from "../identity/principal.ts";
import type { TaskRegistry } from "../tasks/task-registry.ts";
import { principalDigest, type RevocationBus, type RevocationSignal } from "./revocation-bus.ts";
import type { SessionRegistry } from "./session-registry.ts";

/**
 * Operator revocation (THREATS S4, S13): what the admin API calls. Each action first makes the
 * revocation a store fact (records removed, or a kill generation claimed), so every replica refuses
 * the revoked ids on their next request whether or not a message reaches it; then ends the open
 * streams on this replica at once and sends a notice so the other replicas end theirs.
 *
 * The notice goes out even when the store had nothing left to remove: a retry after a failed publish
 * must still reach the streams the first attempt could not. A publish that fails rejects (with
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
  /** Applies a notice to this replica's own open streams, without waiting for the bus. */
  readonly applyLocally: (signal: RevocationSignal) => void;
}

export function createRevocation(options: RevocationOptions): Revocation {
  const { sessions, tasks, bus, events, applyLocally } = options;
  return {
    async revokeSession(sessionDigest) {
      // Rejects with ERR_ARGUMENT_INVALID for anything but a digest, before anything is done.
      const removed = await sessions.revokeByDigest(sessionDigest);
      if (removed) events.emit({ type: "session.revoked", reason: "admin", sessionDigest });
      const notice = { kind: "session", sessionDigest } as const;
      applyLocally(notice);
      await bus.publish(notice);
      return removed;
    },

    async revokePrincipal(principal) {
      const [sessionCount, taskCount] = await Promise.all([
        sessions.revokeAll(principal),
        tasks.revokeAll(principal),
      ]);
      events.emit({ type: "session.revoked", reason: "principal", principal: ownerScope(principal) });
      const notice = { kind: "principal", principalDigest: principalDigest(ownerScope(principal)) } as const;
      applyLocally(notice);
      await bus.publish(notice);
      return { sessions: sessionCount, tasks: taskCount };
    },

    async killSwitch() {
      const generation = await sessions.killSwitch();
      events.emit({ type: "session.revoked", reason: "kill-switch" });
      const notice = { kind: "all", generation } as const;
      applyLocally(notice);
      await bus.publish(notice);
    },
  };
}
