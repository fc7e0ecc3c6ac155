import { mintId } from "../crypto/ids.ts";
import { ANONYMOUS_ISSUER, makePrincipal, type Principal } from "./principal.ts";

/** The tenant of every anonymous principal. */
export const ANONYMOUS_TENANT = "anonymous";

/**
 * A throwaway principal for a new session in anonymous mode (DESIGN invariant 2). Each call mints a
 * new subject (192 CSPRNG bits), so two anonymous sessions are two principals: one can never reach
 * the other's session, tasks or data, exactly as if both had authenticated. The gateway calls this
 * once per new session and keeps the principal with the session; it is never derived from anything
 * the client sent.
 */
export function anonymousPrincipal(): Principal {
  return makePrincipal({
    kind: "anonymous",
    issuer: ANONYMOUS_ISSUER,
    subject: mintId(),
    tenant: ANONYMOUS_TENANT,
    scopes: [],
    expiresAt: null,
  });
}
