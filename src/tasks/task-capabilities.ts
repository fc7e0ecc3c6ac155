import { digest, looksLikeMintedId, mintId } from "../crypto/ids.ts";
import type { Keyring } from "../crypto/keyring.ts";
import { openToString, type SealContext, seal } from "../crypto/seal.ts";
import { GateError } from "../errors.ts";
import { ANONYMOUS_TENANT } from "../identity/anonymous.ts";
import { ANONYMOUS_ISSUER, makePrincipal, type Principal } from "../identity/principal.ts";
import type { Store } from "../store/contract.ts";
import { ownershipKey } from "../store/keys.ts";

/**
 * Task ids for anonymous modern clients (MCP 2026-07-28 tasks: without an authorization context a
 * task id is a capability, and must be unguessable). An anonymous request is a new throwaway principal
 * every time, so ownership cannot follow the caller; instead the client is handed a gateway-minted id
 * (192 CSPRNG bits) that maps to the upstream's, and only a minted id reaches the task. The upstream's
 * own id (which may be a counter) is never shown to the client, and its owner record belongs to the
 * capability's principal, so no authenticated caller can name it either.
 *
 * The mapping is stored under the capability's digest, sealed to it and its upstream: a dump shows
 * neither the capability nor the upstream's id (THREATS C3).
 */
export interface TaskCapabilities {
  /** A new capability for `upstreamTaskId` at `upstream`, and the principal that owns the task. */
  mint(
    upstream: string,
    upstreamTaskId: string,
    ttlMs: number,
  ): Promise<{ capability: string; owner: Principal }>;
  /** The upstream's task id behind `capability` at `upstream`, or null (unknown, expired, elsewhere). */
  resolve(upstream: string, capability: string): Promise<string | null>;
}

const KIND = "task-capability";
const PURPOSE = "task-capability";

/** The principal that owns the upstream task behind a capability. */
export function capabilityOwner(capability: string): Principal {
  return makePrincipal({
    kind: "anonymous",
    issuer: ANONYMOUS_ISSUER,
    subject: digest("task-capability-owner", capability),
    tenant: ANONYMOUS_TENANT,
    scopes: [],
    expiresAt: null,
  });
}

export function createTaskCapabilities(options: { store: Store; keyring: Keyring }): TaskCapabilities {
  const { store, keyring } = options;
  const context = (upstream: string, capability: string): SealContext => ({
    purpose: PURPOSE,
    owner: [upstream, digest(KIND, capability)],
  });
  return {
    async mint(upstream, upstreamTaskId, ttlMs) {
      for (let attempt = 0; attempt < 3; attempt++) {
        const capability = mintId();
        const sealed = seal(keyring, upstreamTaskId, context(upstream, capability));
        const outcome = await store.claim(ownershipKey(KIND, capability), sealed, { ttlMs });
        if (outcome.won) return { capability, owner: capabilityOwner(capability) };
      }
      throw new GateError("ERR_INTERNAL", "could not claim a fresh task capability");
    },
    async resolve(upstream, capability) {
      // Anything but a minted id is looked up under a key no capability has: the same one read.
      const key = ownershipKey(KIND, looksLikeMintedId(capability) ? capability : "\u0000");
      const sealed = await store.get(key);
      if (sealed === null || !looksLikeMintedId(capability)) return null;
      try {
        return openToString(keyring, sealed, context(upstream, capability));
      } catch {
        return null; // another upstream's capability, or tampered: unknown
      }
    },
  };
}
