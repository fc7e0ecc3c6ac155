import { digest } from "../crypto/ids.ts";
import { GateError } from "../errors.ts";
import type { Principal } from "../identity/principal.ts";
import type { CapPool, CapRefusal, ConnectionCaps, Reservation } from "../limits/connection-caps.ts";
import type { RateDecision, RateLimiter } from "../limits/rate-limiter.ts";

/**
 * Admission at the edge (DESIGN invariant 7, "bounded, in the right order"): the connection caps'
 * global and per-IP stage before any other work, then, once the caller is known and owns what it
 * names, the per-principal and per-session stage and the principal's rate limit. One ticket per
 * request; its slots are returned exactly once, when the response closes, whatever path it took.
 *
 * Pools: a GET (a legacy session's stream) counts against `streams`; everything else against
 * `inflight`, including a POST answered with a stream, which is a request still being processed.
 */
export interface Admission {
  /**
   * The first stage. Refuses with ERR_CONNECTION_LIMIT (per IP, 429), ERR_OVERLOADED (global, 503)
   * or ERR_STORE_UNAVAILABLE (cluster scope, store not answering: fail closed). `closed` resolves
   * when the response ends; the slots go back then, or at once if the stage was refused.
   */
  enter(pool: CapPool, clientAddress: string | undefined, closed: Promise<void>): Promise<AdmissionTicket>;
}

export interface AdmissionTicket {
  /**
   * Starts the rate-limit take of a principal the request itself authenticated, so that it reaches
   * the store alongside the owner check (one round trip before forwarding, not two). The bucket is
   * the caller's own: taking before the owner check spends nothing of anyone else's, and a request
   * refused as not the owner's has spent the caller's own token, as a refused request should. The
   * per-session and per-principal caps still wait for the owner check (DESIGN invariant 7).
   * `admitOwner` uses this take when it is for the same principal, and takes anew otherwise.
   */
  takeRateEarly(principal: Principal): void;
  /**
   * The second stage, after the owner check: per-session and per-principal caps, then the rate
   * limit (429 ERR_RATE_LIMITED with `retryAfterSeconds` in the error's detail). `principal` null
   * for an anonymous caller of a modern request, who has no principal beyond the request: the per-IP
   * cap and an address-keyed bucket stand in.
   */
  admitOwner(owner: {
    readonly principal: Principal | null;
    readonly sessionDigest?: string | undefined;
    readonly clientAddress: string | undefined;
    /** DELETE ends a session: never refused for a full bucket or cap, or a client could not clean up. */
    readonly exempt?: boolean;
  }): Promise<void>;
}

export interface AdmissionOptions {
  readonly caps: ConnectionCaps | undefined;
  readonly rateLimiter: RateLimiter | undefined;
}

/** What `ERR_RATE_LIMITED` carries for the answer's Retry-After header. */
export const RETRY_AFTER_DETAIL_PREFIX = "retry-after:";

/** A day: longer than any bucket refills in, and short enough to be written as plain digits. */
const MAX_RETRY_AFTER_SECONDS = 86_400;

const NO_OP_TICKET: AdmissionTicket = { takeRateEarly: () => undefined, admitOwner: async () => undefined };

/** A rate take started before the owner check, for the principal it was started for. */
interface EarlyTake {
  readonly principalKey: string;
  /** null: no shared decision (the store did not answer); admitOwner then takes as usual. */
  readonly decision: Promise<RateDecision | null>;
}

export function createAdmission(options: AdmissionOptions): Admission {
  const { caps, rateLimiter } = options;

  function ticketFor(reservation: Reservation | undefined): AdmissionTicket {
    let early: EarlyTake | undefined;
    return {
      takeRateEarly(principal) {
        if (rateLimiter === undefined || early !== undefined) return;
        const principalKey = principalKeyOf(principal);
        // The shared bucket only: a take decided from the reduced local fallback would be spent by
        // requests that then fail closed (503, store down) and leave the owner 429 once it is back.
        const decision = rateLimiter.takeShared
          ? rateLimiter.takeShared(principalKey)
          : rateLimiter.take(principalKey);
        // Awaited by admitOwner, or dropped when the request ends before it (an unknown session):
        // a rejection then must not become an unhandled one.
        decision.catch(() => undefined);
        early = { principalKey, decision };
      },
      admitOwner: (owner) => admitOwner(reservation, owner, early),
    };
  }

  async function admitOwner(
    reservation: Reservation | undefined,
    owner: Parameters<AdmissionTicket["admitOwner"]>[0],
    early: EarlyTake | undefined,
  ): Promise<void> {
    if (owner.exempt) return;
    const principalKey = owner.principal === null ? undefined : principalKeyOf(owner.principal);
    if (reservation !== undefined && principalKey !== undefined) {
      const extended = await reservation.extend({
        principalKey,
        ...(owner.sessionDigest === undefined ? {} : { sessionKey: owner.sessionDigest }),
      });
      if (extended !== true) throw refusalError(extended);
    }
    if (rateLimiter !== undefined) {
      const bucketKey = principalKey ?? `address:${owner.clientAddress ?? "unknown"}`;
      const earlyVerdict =
        early !== undefined && early.principalKey === bucketKey ? await early.decision : null;
      const verdict = earlyVerdict ?? (await rateLimiter.take(bucketKey));
      if (!verdict.allowed) {
        throw new GateError("ERR_RATE_LIMITED", "rate limit reached", {
          detail: `${RETRY_AFTER_DETAIL_PREFIX}${retryAfterText(verdict.retryAfterSeconds)}`,
        });
      }
    }
  }

  return {
    async enter(pool, clientAddress, closed) {
      if (caps === undefined) return rateLimiter === undefined ? NO_OP_TICKET : ticketFor(undefined);
      const reserved = await caps.reserveEdge(pool, { ip: addressKeyOf(clientAddress) });
      if (reserved.refused) throw refusalError(reserved);
      // Every path ends with the response: accepted, refused later, upstream error, client gone,
      // shutdown. release() is idempotent, so an earlier release (a refusal) is harmless.
      closed.then(
        () => reserved.release(),
        () => reserved.release(),
      );
      return ticketFor(reserved);
    },
  };
}

/**
 * The detail becomes a response header: whatever a store answered (NaN from a garbled reply, a
 * fraction, an exponent), only 1 to MAX_RETRY_AFTER_SECONDS whole seconds, as digits, leave here.
 */
function retryAfterText(seconds: number): string {
  if (!Number.isFinite(seconds)) return String(MAX_RETRY_AFTER_SECONDS);
  return String(Math.min(MAX_RETRY_AFTER_SECONDS, Math.max(1, Math.ceil(seconds))));
}

/** The ledger keys are digests: no identifier is held in memory or the store as it was sent. */
function principalKeyOf(principal: Principal): string {
  return digest("cap-principal", JSON.stringify([principal.issuer, principal.tenant, principal.subject]));
}

function addressKeyOf(clientAddress: string | undefined): string {
  return digest("cap-address", clientAddress ?? "unknown");
}

function refusalError(refusal: CapRefusal): GateError {
  switch (refusal.reason) {
    case "cap-global":
      return new GateError("ERR_OVERLOADED", "connection cap reached", { detail: refusal.reason });
    case "cap-store-unavailable":
      return new GateError("ERR_STORE_UNAVAILABLE", "connection caps cannot be checked", {
        detail: refusal.reason,
      });
    case "released":
      // The client left while its reservation was pending: nobody will read this answer.
      return new GateError("ERR_CONNECTION_LIMIT", "reservation ended", { detail: "released" });
    default:
      return new GateError("ERR_CONNECTION_LIMIT", "connection cap reached", { detail: refusal.reason });
  }
}
