import { createHash, randomBytes } from "node:crypto";
import { invalidArgument } from "../errors.ts";

/**
 * Ids the project mints (sessions, tasks, uploads, codes): CSPRNG output, base64url, so they are
 * visible ASCII, URL-safe and never need escaping in a header. 24 bytes = 192 bits, comfortably over
 * the 128-bit floor in DESIGN invariant 4.
 */
export const ID_BYTES = 24;
const MIN_ID_BYTES = 16;

export function mintId(bytes: number = ID_BYTES): string {
  if (!Number.isInteger(bytes) || bytes < MIN_ID_BYTES || bytes > 64) {
    throw invalidArgument("bytes", `must be an integer from ${MIN_ID_BYTES} to 64`);
  }
  return randomBytes(bytes).toString("base64url");
}

/** A minted id has this shape; anything else is rejected before any store lookup. */
const MINTED_ID = /^[A-Za-z0-9_-]{22,86}$/;

export function looksLikeMintedId(value: string): boolean {
  return MINTED_ID.test(value);
}

/**
 * The digest under which a token or id is stored (DESIGN invariant 5: a storage dump reveals no
 * usable token). Unkeyed SHA-256 with a purpose prefix, so that lookups survive master-key rotation,
 * replicas agree without sharing anything, and operators can compute an API key's digest offline.
 * Minted ids carry >= 128 bits, so the digest cannot be inverted; see docs/decisions.md.
 */
export function digest(purpose: string, value: string): string {
  if (!/^[a-z][a-z0-9-]{0,39}$/.test(purpose)) {
    throw invalidArgument("purpose", "must be a short lowercase name");
  }
  // UTF-8 encoding replaces lone surrogates with U+FFFD, so two distinct strings would share a digest.
  if (!value.isWellFormed()) throw invalidArgument("value", "must be well-formed Unicode");
  return createHash("sha256").update(`tenantgate:${purpose}\0`).update(value, "utf8").digest("base64url");
}
