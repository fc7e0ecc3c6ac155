import type { Keyring } from "../crypto/keyring.ts";
import { openToString, type SealContext, seal } from "../crypto/seal.ts";
import { GateError } from "../errors.ts";
import type { Principal } from "../identity/principal.ts";

/**
 * Multi-round-trip `requestState` (MCP 2026-07-28, basic/patterns/mrtr): the upstream's opaque value
 * goes to the client sealed to the principal, the upstream and the originating request (method and
 * target name), with an expiry; on the retry the gateway opens it and forwards the upstream's value.
 * State minted for A and replayed by B, at another upstream, on another request or after it expired
 * does not open (THREATS M4); the upstream only ever sees values it issued, for the principal it
 * issued them to.
 */

const PURPOSE = "request-state";
const RECORD_VERSION = 1;
/** How long a client has to answer an input request and retry. */
export const REQUEST_STATE_TTL_MS = 15 * 60_000;

export interface RequestStateBinding {
  readonly principal: Principal;
  readonly upstream: string;
  readonly method: string;
  /** `params.name` / `params.uri` of the request, or a fixed word when it has none (never empty). */
  readonly target: string;
}

function contextOf(binding: RequestStateBinding): SealContext {
  const { principal } = binding;
  return {
    purpose: PURPOSE,
    owner: [
      principal.tenant,
      principal.issuer,
      principal.subject,
      binding.upstream,
      binding.method,
      binding.target,
    ],
  };
}

export function sealRequestState(
  keyring: Keyring,
  binding: RequestStateBinding,
  value: string,
  now: number,
): string {
  return seal(
    keyring,
    JSON.stringify({ v: RECORD_VERSION, state: value, exp: now + REQUEST_STATE_TTL_MS }),
    contextOf(binding),
  );
}

/** The upstream's value, or ERR_SEALED_VALUE_INVALID for anything not sealed for this binding and alive. */
export function openRequestState(
  keyring: Keyring,
  binding: RequestStateBinding,
  sealed: unknown,
  now: number,
): string {
  if (typeof sealed !== "string") throw invalid("not-a-string");
  let record: unknown;
  try {
    record = JSON.parse(openToString(keyring, sealed, contextOf(binding)));
  } catch (cause) {
    // Another principal's, upstream's or request's state, a tampered one, or one under a retired key.
    throw new GateError("ERR_SEALED_VALUE_INVALID", "request state refused", {
      detail: "does-not-open",
      cause,
    });
  }
  const r = record as { v?: unknown; state?: unknown; exp?: unknown } | null;
  if (r?.v !== RECORD_VERSION || typeof r.state !== "string" || typeof r.exp !== "number")
    throw invalid("malformed");
  if (r.exp <= now) throw invalid("expired");
  return r.state;
}

function invalid(detail: string): GateError {
  return new GateError("ERR_SEALED_VALUE_INVALID", "request state refused", { detail });
}
