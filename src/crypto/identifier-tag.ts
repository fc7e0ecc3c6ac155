import { createHmac, createSecretKey, randomBytes } from "node:crypto";
import { invalidArgument } from "../errors.ts";

/**
 * Keyed tags for identifiers in logs and audit lines (DESIGN invariant 8): a session id, token,
 * cookie, email or IP is never written raw, only HMAC-SHA256(key, value) cut to 12 hex characters.
 * Enough to correlate lines; without the key, not enough to confirm a guess.
 *
 * The default key is random per process, so tags from two replicas do not match. An operator who
 * wants correlation across replicas configures a stable key (derived from the keyring).
 */
export const TAG_HEX_LENGTH = 12;

export interface IdentifierTagger {
  tag(value: string): string;
}

export function createIdentifierTagger(key: Uint8Array = randomBytes(32)): IdentifierTagger {
  if (key.byteLength < 32) throw invalidArgument("key", "must be at least 32 bytes");
  // A KeyObject, not bytes: HMAC with one skips re-importing the key on every call (several times
  // faster on the audit and log path, where every event tags several identifiers).
  const tagKey = createSecretKey(Buffer.from(key));
  return {
    tag(value: string): string {
      // UTF-16LE keeps lone surrogates distinct (UTF-8 would turn them all into U+FFFD), and a tag
      // must never throw on the logging path, whatever the client sent.
      return createHmac("sha256", tagKey).update(value, "utf16le").digest("hex").slice(0, TAG_HEX_LENGTH);
    },
  };
}
