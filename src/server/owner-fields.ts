import { invalidArgument } from "../errors.ts";
import { type Principal, samePrincipal } from "../identity/principal.ts";
import { MAX_TTL_MS } from "../store/arguments.ts";

/**
 * The owner as the library's records carry it: (tenant, issuer, subject), the fields `samePrincipal`
 * compares. Shared by owned tasks and task tokens so both decide ownership the same way.
 */
export interface OwnerFields {
  readonly tenant: string;
  readonly issuer: string;
  readonly subject: string;
}

export function ownerFieldsOf(principal: Principal): OwnerFields {
  return { tenant: principal.tenant, issuer: principal.issuer, subject: principal.subject };
}

/**
 * Whether a parsed record names `principal` as its owner. Anything that is not three non-empty
 * strings (a record written by other code, truncated or garbled) owns nothing: the caller refuses
 * (THREATS T3, fail closed).
 */
export function ownedBy(record: Record<string, unknown>, principal: Principal): boolean {
  const { tenant, issuer, subject } = record;
  if (typeof tenant !== "string" || typeof issuer !== "string" || typeof subject !== "string") return false;
  if (tenant.length === 0 || issuer.length === 0 || subject.length === 0) return false;
  return samePrincipal(principal, { ...principal, tenant, issuer, subject });
}

/** Parses a stored JSON object; anything else (absent, not JSON, not an object) is null. */
export function parseObject(text: string | null): Record<string, unknown> | null {
  if (text === null) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : null;
}

/** A caller's principal must be a principal: a missing one is a programming error, never "anyone". */
export function checkPrincipal(principal: Principal): void {
  if (
    typeof principal !== "object" ||
    principal === null ||
    typeof principal.issuer !== "string" ||
    typeof principal.subject !== "string" ||
    typeof principal.tenant !== "string" ||
    principal.issuer.length === 0 ||
    principal.subject.length === 0 ||
    principal.tenant.length === 0
  ) {
    throw invalidArgument(
      "principal",
      "must be a verified principal (see sessionPrincipals for no-auth servers)",
    );
  }
}

/** A lifetime option: a positive integer of ms, within what a store keeps. */
export function checkLifetime(name: string, value: number, max: number = MAX_TTL_MS): number {
  if (!Number.isSafeInteger(value) || value < 1 || value > max) {
    throw invalidArgument(name, `must be an integer from 1 to ${max}`);
  }
  return value;
}
