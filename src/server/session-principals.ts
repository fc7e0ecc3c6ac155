import { invalidArgument } from "../errors.ts";
import { anonymousPrincipal } from "../identity/anonymous.ts";
import type { Principal } from "../identity/principal.ts";
import { checkPrincipal } from "./owner-fields.ts";

/**
 * Principals for a server that runs without authentication (DESIGN invariant 2: anonymous mode gives
 * every new session its own throwaway principal). Owned tasks, handles and tokens all need a
 * principal; the everyrow server raised "no authenticated user" on every call in its no-auth mode.
 * Here a session without a verified principal gets a fresh anonymous one (192 random bits), kept for
 * as long as the session object lives: two sessions never share one, so neither reaches the other's
 * tasks, and nothing the client sends chooses or names it.
 */
export interface SessionPrincipals {
  /**
   * The verified principal when there is one; otherwise the session's own throwaway principal,
   * created on first use. `session` is any object that lives exactly as long as the session (the
   * transport or session record the server keeps per session id).
   */
  principalFor(session: object, verified?: Principal | null): Principal;
  /** Forgets the session's throwaway principal: its tasks stay owned, now by no one who can ask. */
  end(session: object): void;
}

export function createSessionPrincipals(): SessionPrincipals {
  // Weakly held: a session object that is dropped takes its principal with it, so no table grows.
  const anonymous = new WeakMap<object, Principal>();
  return {
    principalFor(session, verified) {
      if (verified !== undefined && verified !== null) {
        checkPrincipal(verified);
        return verified;
      }
      if ((typeof session !== "object" && typeof session !== "function") || session === null) {
        // A string session id would be chosen by the client (or shared by everyone without one).
        throw invalidArgument("session", "must be the object that represents the session");
      }
      let principal = anonymous.get(session);
      if (principal === undefined) {
        principal = anonymousPrincipal();
        anonymous.set(session, principal);
      }
      return principal;
    },
    end(session) {
      if (typeof session === "object" && session !== null) anonymous.delete(session);
    },
  };
}
