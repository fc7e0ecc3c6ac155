import { isLoopbackHost } from "../config/loopback.ts";
import { GateError, invalidArgument } from "../errors.ts";

/** What the exposure guard needs to know about the authentication the gateway will enforce. */
export interface ExposureAuth {
  readonly anonymous: boolean;
  readonly hasIssuers: boolean;
  readonly hasApiKeys: boolean;
}

export interface ExposureInput {
  /**
   * The address the listening socket is actually bound to: `server.address().address` after
   * `listen` has completed (`0.0.0.0`, `::`, `127.0.0.1`, `::1`, ...). Never the configured host.
   */
  readonly boundAddress: string;
  readonly auth: ExposureAuth;
  /** `listen.allowUnauthenticatedExposure`: the operator's attestation that anonymous exposure is wanted. */
  readonly allowUnauthenticatedExposure: boolean;
}

export interface ExposureVerdict {
  /** A warning to print prominently at start-up, or null when the deployment is not exposed. */
  readonly warning: string | null;
}

/**
 * Decides whether the gateway may keep serving on the socket it has just bound (DESIGN invariant 2,
 * THREATS L3). Call it after `listen` succeeds and before the first request is accepted; on a throw,
 * close the server and exit.
 *
 * Why the bound address: the configured host is a name the OS resolves (`localhost` may become an
 * address the operator did not expect, a hostname may resolve to a public interface, port 0 and
 * wildcard binds are decided by the OS). Only `server.address()` says what the socket accepts.
 *
 * Loopback is `isLoopbackHost`'s strict reading, the same one the config layer uses. In particular
 * the IPv4-mapped form `::ffff:127.0.0.1` (what Node reports when told to listen on that literal) is
 * NOT loopback here: a wrong "yes" exposes an anonymous gateway, a wrong "no" only asks the operator
 * to bind `127.0.0.1` or `::1`. The dual-stack wildcard `::` is not loopback either: it accepts IPv4
 * and IPv6 on every interface.
 */
export function checkExposure(input: ExposureInput): ExposureVerdict {
  if (typeof input?.boundAddress !== "string" || input.boundAddress.length === 0) {
    throw invalidArgument("boundAddress", "must be the address the server is bound to");
  }
  const { auth } = input;
  if (typeof auth !== "object" || auth === null) throw invalidArgument("auth", "must be an object");

  // The config loader already refuses this; refusing it again here means a configuration built by
  // hand (tests, embedders) cannot start a gateway that authenticates nobody and lets everyone in.
  if (!auth.anonymous && !auth.hasIssuers && !auth.hasApiKeys) {
    throw new GateError(
      "ERR_UNSAFE_EXPOSURE",
      "no authentication is configured: add auth.issuers or auth.apiKeys, or set auth.anonymous",
    );
  }

  if (!auth.anonymous || isLoopbackHost(input.boundAddress)) return { warning: null };

  // The bound address is the OS's report, not client input, so naming it in the message is safe and
  // is what the operator needs to see.
  if (input.allowUnauthenticatedExposure !== true) {
    throw new GateError(
      "ERR_UNSAFE_EXPOSURE",
      `auth.anonymous is on and the gateway is bound to ${input.boundAddress}, which is not loopback: ` +
        "bind listen.host to 127.0.0.1 or ::1, turn auth.anonymous off, or set " +
        "listen.allowUnauthenticatedExposure to true to accept anonymous access from the network",
    );
  }
  return {
    warning:
      `WARNING: UNAUTHENTICATED EXPOSURE. auth.anonymous is on and the gateway is bound to ` +
      `${input.boundAddress}, which is not loopback; listen.allowUnauthenticatedExposure is true, so ` +
      "anyone who can reach this address can use every upstream that requires no scopes.",
  };
}
