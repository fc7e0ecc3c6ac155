import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { GateError, invalidArgument } from "../errors.ts";
import type { Keyring } from "./keyring.ts";

/**
 * Authenticated encryption of stored secrets and handles (DESIGN invariant 5).
 *
 * AES-256-GCM under a purpose subkey, a fresh random 96-bit IV per message, and associated data that
 * binds the key id, the purpose and the owner. Moving a ciphertext to another owner's row, reusing it
 * for another purpose, or relabelling its key id makes it fail to open, with the same error as a
 * corrupted or foreign value: the caller learns nothing about which check failed.
 *
 * Wire form: `v1.<keyId>.<iv>.<ciphertext||tag>` (base64url parts). Random IVs under one key are safe
 * far beyond any volume a gateway seals (NIST SP 800-38D limits 2^32 messages per key).
 */

export interface SealContext {
  /** What the value is for, e.g. "vault" or "upstream-session". */
  readonly purpose: string;
  /** Who it belongs to, e.g. [tenant, issuer, subject, name]. Order matters. */
  readonly owner: readonly string[];
}

const VERSION = "v1";
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** Larger inputs are refused before any crypto runs. */
export const MAX_SEALED_LENGTH = 1 << 20;
/** The largest plaintext whose sealed form still fits MAX_SEALED_LENGTH (base64url is 4/3). */
export const MAX_PLAINTEXT_BYTES = 768 * 1024 - 1024;
const AAD_LABEL = "tenantgate/seal/v1";

/**
 * The owner must name someone: an empty owner would bind nothing. Callers include everything the
 * value must not be moved across (tenant, principal, upstream, record name).
 */
function checkContext(context: SealContext): void {
  if (typeof context?.purpose !== "string" || !Array.isArray(context.owner) || context.owner.length === 0) {
    throw invalidArgument("seal context", "must have a purpose and at least one owner segment");
  }
  for (const segment of context.owner) {
    if (typeof segment !== "string" || segment.length === 0) {
      throw invalidArgument("seal context owner", "must be non-empty strings");
    }
  }
}

/** Length-prefixed fields, so no two different contexts produce the same bytes. */
function associatedData(keyId: string, context: SealContext): Buffer {
  const fields = [AAD_LABEL, keyId, context.purpose, String(context.owner.length), ...context.owner];
  const parts: Buffer[] = [];
  for (const field of fields) {
    if (!field.isWellFormed()) throw invalidArgument("seal context", "must be well-formed Unicode");
    const bytes = Buffer.from(field, "utf8");
    const length = Buffer.alloc(4);
    length.writeUInt32BE(bytes.byteLength);
    parts.push(length, bytes);
  }
  return Buffer.concat(parts);
}

export function seal(keyring: Keyring, plaintext: string | Uint8Array, context: SealContext): string {
  checkContext(context);
  const body = typeof plaintext === "string" ? Buffer.from(plaintext, "utf8") : plaintext;
  // Refused here rather than sealed into something `open` would refuse: that would lose the data.
  if (body.byteLength > MAX_PLAINTEXT_BYTES) throw invalidArgument("plaintext", "is too large to seal");
  const keyId = keyring.activeKeyId;
  const key = keyring.sealingKey(context.purpose, keyId);
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, iv, { authTagLength: TAG_BYTES });
  cipher.setAAD(associatedData(keyId, context));
  const ciphertext = Buffer.concat([cipher.update(body), cipher.final(), cipher.getAuthTag()]);
  return `${VERSION}.${keyId}.${iv.toString("base64url")}.${ciphertext.toString("base64url")}`;
}

function openFailed(): GateError {
  return new GateError("ERR_SEALED_VALUE_INVALID", "decryption operation failed");
}

function decodeCanonical(part: string): Buffer | null {
  const bytes = Buffer.from(part, "base64url");
  return bytes.toString("base64url") === part ? bytes : null;
}

/** Opens a sealed value. Every failure is the same `ERR_SEALED_VALUE_INVALID`. */
export function open(keyring: Keyring, sealed: string, context: SealContext): Buffer {
  // A malformed context is the caller's bug, not the client's: an argument error, outside the
  // indistinguishable-failure path.
  checkContext(context);
  if (typeof sealed !== "string" || sealed.length > MAX_SEALED_LENGTH) throw openFailed();
  const parts = sealed.split(".");
  if (parts.length !== 4) throw openFailed();
  const [version, keyId, ivPart, bodyPart] = parts as [string, string, string, string];
  if (version !== VERSION || !keyring.hasKey(keyId)) throw openFailed();
  const iv = decodeCanonical(ivPart);
  const body = decodeCanonical(bodyPart);
  if (!iv || !body || iv.byteLength !== IV_BYTES || body.byteLength < TAG_BYTES) throw openFailed();
  try {
    const key = keyring.sealingKey(context.purpose, keyId);
    const decipher = createDecipheriv("aes-256-gcm", key, iv, { authTagLength: TAG_BYTES });
    decipher.setAAD(associatedData(keyId, context));
    decipher.setAuthTag(body.subarray(body.byteLength - TAG_BYTES));
    return Buffer.concat([decipher.update(body.subarray(0, body.byteLength - TAG_BYTES)), decipher.final()]);
  } catch {
    throw openFailed();
  }
}

export function openToString(keyring: Keyring, sealed: string, context: SealContext): string {
  return open(keyring, sealed, context).toString("utf8");
}

/** The key id a sealed value names, for lazy re-sealing after rotation; null if malformed. */
export function sealedKeyId(sealed: string): string | null {
  if (typeof sealed !== "string" || sealed.length > MAX_SEALED_LENGTH) return null;
  const parts = sealed.split(".");
  const keyId = parts[1] ?? "";
  return parts.length === 4 && parts[0] === VERSION && /^[A-Za-z0-9_-]{1,32}$/.test(keyId) ? keyId : null;
}
