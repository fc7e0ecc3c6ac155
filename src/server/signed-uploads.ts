import { createHmac, createSecretKey, type KeyObject, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { looksLikeMintedId, mintId } from "../crypto/ids.ts";
import type { Keyring } from "../crypto/keyring.ts";
import { open, seal } from "../crypto/seal.ts";
import { GateError, type GateErrorCode, invalidArgument, isGateError, toWire } from "../errors.ts";
import { readRequestBody } from "../gateway/json-rpc-body.ts";
import { ownerScope, type Principal } from "../identity/principal.ts";
import { MAX_TTL_MS } from "../store/arguments.ts";
import type { Store } from "../store/contract.ts";
import { ownedKey, ownershipKey, type RecordKey } from "../store/keys.ts";

/**
 * Signed single-use upload URLs (THREATS T5).
 *
 * An upload URL is handed to a browser or a tool, so its authority travels in the query string by
 * design: an HMAC (keyring purpose key `upload-url`) over a length-prefixed encoding of every bound
 * field. The principal it was issued to is part of the MAC but not of the URL: the handler recomputes
 * the MAC with the principal the server authenticated, so a URL says nothing about whom it is for, and
 * a URL presented by anyone else fails exactly as a forged one does.
 *
 * Possession is not enough (everyrow's upload URLs were bearer capabilities): `issue` also writes an
 * ownership record (`own/upload/<d>`, value = the owner) before the URL exists, and the handler
 * consumes it with `takeIfEquals` on that exact owner before it reads a byte of the body. Of any
 * number of concurrent uploads to one URL exactly one consumes it; a record presented by another
 * principal is not consumed (compare-and-delete), so nobody can burn someone else's URL. Everything
 * that can fail after the consume (media type, size, an aborted body, the sink) leaves it consumed:
 * a URL gets one attempt, whatever its outcome, and there is no window in which a check has passed
 * but the URL is still live.
 */

/** How many bytes the built-in store sink keeps per upload: sealed, it must fit a store value (1 MiB). */
export const MAX_STORED_UPLOAD_BYTES = 512 * 1024;
/** Bodies are read whole into memory before the sink sees them (it never sees a partial upload). */
export const MAX_UPLOAD_BYTES = 64 * 1024 * 1024;
/** A URL may live at most a week; an upload URL that outlives the task it was for is a liability. */
export const MAX_UPLOAD_URL_TTL_MS = 7 * 24 * 60 * 60 * 1000;

export interface ReceivedUpload {
  readonly uploadId: string;
  /** The principal the URL was issued to, who is also the one who uploaded. */
  readonly owner: Principal;
  readonly name: string | null;
  /** The media type the upload declared, lowercase, without parameters: one the URL allowed. */
  readonly contentType: string;
  readonly bytes: Buffer;
}

/** An upload kept by the built-in sink, as `read` returns it to its owner. */
export interface StoredUpload {
  readonly uploadId: string;
  readonly name: string | null;
  readonly contentType: string;
  readonly bytes: Buffer;
  /** Epoch ms. */
  readonly receivedAt: number;
}

export interface UploadSignerOptions {
  readonly keyring: Keyring;
  readonly store: Store;
  /** How long an issued URL stays valid, in ms (1 ms to 7 days). */
  readonly ttlMs: number;
  /** The most bytes an upload may carry; `issue` may lower it per URL. */
  readonly maxBytes: number;
  /** Media types (`type/subtype`, lowercase) an upload may declare; `issue` may narrow to one. */
  readonly contentTypes: readonly string[];
  /** Where the handler is mounted: the path of every issued URL. Default `/uploads`. */
  readonly path?: string;
  /**
   * Receives each accepted upload, whole, after every check passed. Default: the built-in sink, which
   * keeps it sealed under the owner's scope for `retainMs` (see `read`; at most 512 KiB an upload).
   * A sink that throws answers the uploader 500 (503 for a store error); the URL stays spent.
   */
  readonly sink?: (upload: ReceivedUpload) => Promise<void>;
  /** How long the built-in sink keeps an upload, in ms. Default one day. */
  readonly retainMs?: number;
  /** The clock (epoch ms). For tests; default `Date.now`. */
  readonly now?: () => number;
}

export interface IssueUploadOptions {
  /** A file name to bind to the URL (1-255 characters, no control characters). */
  readonly name?: string;
  /** A lower limit than the signer's for this URL. */
  readonly maxBytes?: number;
  /** The one media type this URL accepts (one of the signer's). Default: any of them. */
  readonly contentType?: string;
}

export interface IssuedUpload {
  readonly uploadId: string;
  /** Path and query string; the query carries the signature. Hand it only to the principal. */
  readonly url: string;
  /** Epoch ms after which the URL is refused. */
  readonly expiresAt: number;
  readonly maxBytes: number;
  readonly contentTypes: readonly string[];
}

/**
 * Why an upload was refused, for the server's own audit trail. The client never sees it: every
 * refusal of the URL itself is the same 403.
 * - `url-invalid`: malformed, forged, tampered with, signed under an unknown key, or issued to another
 *   principal (the MAC covers the principal, so these cannot be told apart);
 * - `expired`: an authentic URL past its expiry;
 * - `spent`: an authentic URL already used (or whose owner record is gone);
 * - `media-type`, `too-large`, `body-invalid` (aborted or malformed body), `sink-failed`,
 *   `store-unavailable`, `method`, `internal`.
 */
export type UploadRefusalReason =
  | "method"
  | "url-invalid"
  | "expired"
  | "spent"
  | "media-type"
  | "too-large"
  | "body-invalid"
  | "sink-failed"
  | "store-unavailable"
  | "internal";

export type UploadOutcome =
  | {
      readonly accepted: true;
      readonly uploadId: string;
      readonly size: number;
      readonly contentType: string;
      readonly name: string | null;
    }
  | {
      readonly accepted: false;
      readonly status: number;
      readonly code: GateErrorCode;
      readonly reason: UploadRefusalReason;
    };

export interface UploadSigner {
  /** A new single-use URL for `principal`. Its owner record is written before this resolves. */
  issue(principal: Principal, options?: IssueUploadOptions): Promise<IssuedUpload>;
  /**
   * Serves one upload (PUT or POST) at an issued URL, from `principal`, whom the server has already
   * authenticated. Writes the answer (201 on success) and resolves with the outcome; never rejects.
   */
  handle(request: IncomingMessage, response: ServerResponse, principal: Principal): Promise<UploadOutcome>;
  /** An upload the built-in sink kept, to its owner only; null for anyone else, or when gone. */
  read(principal: Principal, uploadId: string): Promise<StoredUpload | null>;
}

const KIND = "upload";
const MAC_PURPOSE = "upload-url";
const SEAL_PURPOSE = "upload";
const MAC_LABEL = "tenantgate/upload-url/v1";
const DEFAULT_RETAIN_MS = 24 * 60 * 60 * 1000;
const MAX_CONTENT_TYPES = 32;
const MAX_NAME_LENGTH = 255;
// RFC 9110 section 8.3.1: type "/" subtype, both tokens; stored lowercase (media types are
// case-insensitive, and one spelling keeps the signed list and the comparison exact).
const MEDIA_TYPE = /^[a-z0-9!#$%&'*+.^_`|~-]{1,63}\/[a-z0-9!#$%&'*+.^_`|~-]{1,63}$/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: the point is to find them.
const CONTROL_CHARACTER = /[\u0000-\u001f\u007f-\u009f]/;
const DECIMAL = /^(0|[1-9][0-9]{0,15})$/;
const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/;
const SIGNATURE = /^[A-Za-z0-9_-]{43}$/;
const MAX_TARGET_LENGTH = 16 * 1024;
const QUERY_FIELDS = new Set(["id", "exp", "max", "types", "name", "kid", "sig"]);

/** What a verified URL grants. */
interface UploadGrant {
  readonly uploadId: string;
  readonly expiresAt: number;
  readonly maxBytes: number;
  readonly contentTypes: readonly string[];
  readonly name: string | null;
}

export function createUploadSigner(options: UploadSignerOptions): UploadSigner {
  const { keyring, store } = options;
  const ttlMs = options.ttlMs;
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 1 || ttlMs > MAX_UPLOAD_URL_TTL_MS) {
    throw invalidArgument("ttlMs", `must be an integer from 1 to ${MAX_UPLOAD_URL_TTL_MS}`);
  }
  const sink = options.sink;
  if (sink !== undefined && typeof sink !== "function") throw invalidArgument("sink", "must be a function");
  const ceiling = sink === undefined ? MAX_STORED_UPLOAD_BYTES : MAX_UPLOAD_BYTES;
  const maxBytes = options.maxBytes;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1 || maxBytes > ceiling) {
    throw invalidArgument(
      "maxBytes",
      `must be an integer from 1 to ${ceiling}${sink === undefined ? " with the built-in sink" : ""}`,
    );
  }
  const contentTypes = checkContentTypes(options.contentTypes);
  const path = options.path ?? "/uploads";
  if (typeof path !== "string" || !/^\/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,255}$/.test(path)) {
    throw invalidArgument("path", "must be an absolute URL path without a query or fragment");
  }
  const retainMs = options.retainMs ?? DEFAULT_RETAIN_MS;
  if (!Number.isSafeInteger(retainMs) || retainMs < 1 || retainMs > MAX_TTL_MS) {
    throw invalidArgument("retainMs", `must be an integer from 1 to ${MAX_TTL_MS}`);
  }
  const now = options.now ?? Date.now;

  const macKeys = new Map<string, KeyObject>();
  const macKey = (keyId: string): KeyObject => {
    let key = macKeys.get(keyId);
    if (key === undefined) {
      key = createSecretKey(keyring.purposeKey(MAC_PURPOSE, keyId));
      macKeys.set(keyId, key);
    }
    return key;
  };
  const mac = (keyId: string, principal: Principal, grant: UploadGrant): Buffer =>
    createHmac("sha256", macKey(keyId))
      .update(canonicalFields(keyId, path, principal, grant))
      .digest();

  /** The grant a URL carries, if its MAC holds for `principal`; null otherwise, whatever the flaw. */
  const verify = (
    target: string | undefined,
    principal: Principal,
  ): { grant: UploadGrant | null; expired: boolean } => {
    const refused = { grant: null, expired: false };
    const fields = queryFields(target);
    if (fields === null) return refused;
    const { id, exp, max, types, name, kid, sig } = fields;
    if (id === undefined || !looksLikeMintedId(id)) return refused;
    if (exp === undefined || !DECIMAL.test(exp) || max === undefined || !DECIMAL.test(max)) return refused;
    if (kid === undefined || !KEY_ID.test(kid) || !keyring.hasKey(kid)) return refused;
    if (sig === undefined || !SIGNATURE.test(sig) || types === undefined) return refused;
    if (name !== undefined && !isUploadName(name)) return refused;
    const typeList = types.split(",");
    if (!typeList.every((type) => MEDIA_TYPE.test(type))) return refused;
    const grant: UploadGrant = {
      uploadId: id,
      expiresAt: Number(exp),
      maxBytes: Number(max),
      contentTypes: typeList,
      name: name ?? null,
    };
    const expected = mac(kid, principal, grant);
    const given = Buffer.from(sig, "base64url");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return refused;
    // Checked after the MAC: only an authentic expiry can say "expired".
    if (now() >= grant.expiresAt) return { grant: null, expired: true };
    return { grant, expired: false };
  };

  const storedKey = (principal: Principal, uploadId: string): { key: RecordKey; idDigest: string } => {
    const idDigest = ownershipKey(KIND, uploadId).segments[1] ?? "";
    return { key: ownedKey(ownerScope(principal), KIND, idDigest), idDigest };
  };
  const sealContext = (principal: Principal, idDigest: string) => ({
    purpose: SEAL_PURPOSE,
    owner: [principal.tenant, principal.issuer, principal.subject, idDigest],
  });

  const storeSink = async (upload: ReceivedUpload): Promise<void> => {
    const { key, idDigest } = storedKey(upload.owner, upload.uploadId);
    const header = Buffer.from(
      JSON.stringify({ v: 1, name: upload.name, contentType: upload.contentType, receivedAt: now() }),
      "utf8",
    );
    const length = Buffer.alloc(4);
    length.writeUInt32BE(header.byteLength);
    const sealed = seal(
      keyring,
      Buffer.concat([length, header, upload.bytes]),
      sealContext(upload.owner, idDigest),
    );
    await store.put(key, sealed, { ttlMs: retainMs });
  };
  const deliver = sink ?? storeSink;

  return {
    async issue(principal, issueOptions = {}) {
      const urlMaxBytes = issueOptions.maxBytes ?? maxBytes;
      if (!Number.isSafeInteger(urlMaxBytes) || urlMaxBytes < 1 || urlMaxBytes > maxBytes) {
        throw invalidArgument("maxBytes", "must be an integer from 1 to the signer's maxBytes");
      }
      let urlTypes = contentTypes;
      if (issueOptions.contentType !== undefined) {
        if (!contentTypes.includes(issueOptions.contentType)) {
          throw invalidArgument("contentType", "must be one of the signer's contentTypes");
        }
        urlTypes = [issueOptions.contentType];
      }
      const name = issueOptions.name ?? null;
      if (name !== null && !isUploadName(name)) {
        throw invalidArgument(
          "name",
          `must be 1 to ${MAX_NAME_LENGTH} characters without control characters`,
        );
      }
      const owner = ownerRecord(principal);
      for (let attempt = 0; attempt < 3; attempt++) {
        const uploadId = mintId();
        const expiresAt = now() + ttlMs;
        // The owner record exists before anyone can learn the URL (DESIGN invariant 3).
        const outcome = await store.claim(ownershipKey(KIND, uploadId), owner, { ttlMs });
        if (!outcome.won) continue;
        const grant: UploadGrant = {
          uploadId,
          expiresAt,
          maxBytes: urlMaxBytes,
          contentTypes: urlTypes,
          name,
        };
        const keyId = keyring.activeKeyId;
        const query = new URLSearchParams({
          id: uploadId,
          exp: String(expiresAt),
          max: String(urlMaxBytes),
          types: urlTypes.join(","),
          ...(name === null ? {} : { name }),
          kid: keyId,
          sig: mac(keyId, principal, grant).toString("base64url"),
        });
        return Object.freeze({
          uploadId,
          url: `${path}?${query.toString()}`,
          expiresAt,
          maxBytes: urlMaxBytes,
          contentTypes: Object.freeze([...urlTypes]),
        });
      }
      throw new GateError("ERR_INTERNAL", "unexpected failure", {
        detail: "could not claim a fresh upload id",
      });
    },

    async handle(request, response, principal) {
      const refuse = (code: GateErrorCode, reason: UploadRefusalReason): UploadOutcome => {
        const wire = toWire(code);
        answer(response, wire.status, { error: { code: wire.code, message: wire.message } });
        return { accepted: false, status: wire.status, code: wire.code, reason };
      };
      try {
        if (request.method !== "PUT" && request.method !== "POST") {
          response.setHeader("allow", "PUT, POST");
          return refuse("ERR_METHOD_NOT_ALLOWED", "method");
        }
        const { grant, expired } = verify(request.url, principal);
        if (grant === null) return refuse("ERR_UPLOAD_REFUSED", expired ? "expired" : "url-invalid");

        // The consume comes before anything reads the body: one attempt per URL, decided atomically.
        // Comparing with the caller's own owner record means a foreign record is never deleted.
        let consumed: boolean;
        try {
          consumed = await store.takeIfEquals(ownershipKey(KIND, grant.uploadId), ownerRecord(principal));
        } catch (error) {
          return storeFailure(error, refuse);
        }
        if (!consumed) return refuse("ERR_UPLOAD_REFUSED", "spent");

        const contentType = mediaTypeOf(request.headers["content-type"]);
        if (contentType === null || !grant.contentTypes.includes(contentType)) {
          return refuse("ERR_MEDIA_TYPE_UNSUPPORTED", "media-type");
        }
        let bytes: Buffer;
        try {
          bytes = await readRequestBody(request, grant.maxBytes);
        } catch (error) {
          if (isGateError(error, "ERR_BODY_TOO_LARGE")) return refuse("ERR_BODY_TOO_LARGE", "too-large");
          return refuse("ERR_REQUEST_INVALID", "body-invalid");
        }
        const received: ReceivedUpload = Object.freeze({
          uploadId: grant.uploadId,
          owner: principal,
          name: grant.name,
          contentType,
          bytes,
        });
        try {
          await deliver(received);
        } catch (error) {
          if (isStoreError(error)) return storeFailure(error, refuse);
          return refuse("ERR_INTERNAL", "sink-failed");
        }
        const outcome = {
          accepted: true as const,
          uploadId: grant.uploadId,
          size: bytes.byteLength,
          contentType,
          name: grant.name,
        };
        answer(response, 201, {
          uploadId: outcome.uploadId,
          size: outcome.size,
          contentType,
          name: outcome.name,
        });
        return outcome;
      } catch (error) {
        // Only a wiring mistake (no principal) gets here; the client still gets a generic answer.
        if (isStoreError(error)) return storeFailure(error, refuse);
        return refuse("ERR_INTERNAL", "internal");
      }
    },

    async read(principal, uploadId) {
      if (typeof uploadId !== "string" || !looksLikeMintedId(uploadId)) return null;
      const { key, idDigest } = storedKey(principal, uploadId);
      const sealed = await store.get(key);
      if (sealed === null) return null;
      let plain: Buffer;
      try {
        plain = open(keyring, sealed, sealContext(principal, idDigest));
      } catch {
        return null; // a row moved from elsewhere, or sealed under a key no longer loaded
      }
      if (plain.byteLength < 4) return null;
      const headerLength = plain.readUInt32BE(0);
      const header = JSON.parse(plain.subarray(4, 4 + headerLength).toString("utf8")) as {
        name: string | null;
        contentType: string;
        receivedAt: number;
      };
      return Object.freeze({
        uploadId,
        name: header.name,
        contentType: header.contentType,
        bytes: plain.subarray(4 + headerLength),
        receivedAt: header.receivedAt,
      });
    },
  };
}

/** The owner record's value: exactly what `takeIfEquals` compares, so it must be canonical. */
function ownerRecord(principal: Principal): string {
  return JSON.stringify({
    v: 1,
    tenant: principal.tenant,
    issuer: principal.issuer,
    subject: principal.subject,
  });
}

/**
 * The MAC's input: every field length-prefixed (4-byte big-endian byte count, then UTF-8), so no two
 * different grants or principals encode alike, whatever characters their fields hold.
 */
function canonicalFields(keyId: string, path: string, principal: Principal, grant: UploadGrant): Buffer {
  const fields = [
    MAC_LABEL,
    keyId,
    // Two signers sharing a keyring (say, avatars and datasets, with different sinks) must not
    // accept each other's URLs: the MAC names the endpoint that issued it.
    path,
    grant.uploadId,
    principal.tenant,
    principal.issuer,
    principal.subject,
    String(grant.expiresAt),
    String(grant.maxBytes),
    String(grant.contentTypes.length),
    ...grant.contentTypes,
    grant.name === null ? "no-name" : "name",
    grant.name ?? "",
  ];
  const parts: Buffer[] = [];
  for (const field of fields) {
    const bytes = Buffer.from(field, "utf8");
    const length = Buffer.alloc(4);
    length.writeUInt32BE(bytes.byteLength);
    parts.push(length, bytes);
  }
  return Buffer.concat(parts);
}

/**
 * The query's fields, each present at most once and none unknown; null otherwise. A repeated field is
 * refused rather than resolved: two parsers that pick different copies would check one value and use
 * another.
 */
function queryFields(target: string | undefined): Record<string, string | undefined> | null {
  // Longer than any URL `issue` can build (32 media types and a 255-character name fit in about 8 KiB).
  if (typeof target !== "string" || target.length > MAX_TARGET_LENGTH) return null;
  const mark = target.indexOf("?");
  if (mark < 0) return null;
  const query = target.slice(mark + 1);
  if (query.includes("#")) return null;
  const fields: Record<string, string | undefined> = {};
  for (const [name, value] of new URLSearchParams(query)) {
    if (!QUERY_FIELDS.has(name) || Object.hasOwn(fields, name)) return null;
    fields[name] = value;
  }
  return fields;
}

function isUploadName(name: unknown): name is string {
  return (
    typeof name === "string" &&
    name.length > 0 &&
    name.length <= MAX_NAME_LENGTH &&
    name.isWellFormed() &&
    !CONTROL_CHARACTER.test(name)
  );
}

function checkContentTypes(types: readonly string[]): readonly string[] {
  if (!Array.isArray(types) || types.length === 0 || types.length > MAX_CONTENT_TYPES) {
    throw invalidArgument("contentTypes", `must list 1 to ${MAX_CONTENT_TYPES} media types`);
  }
  for (const type of types) {
    if (typeof type !== "string" || !MEDIA_TYPE.test(type)) {
      throw invalidArgument("contentTypes", "must hold lowercase type/subtype media types");
    }
  }
  if (new Set(types).size !== types.length) throw invalidArgument("contentTypes", "must not repeat a type");
  return Object.freeze([...types]);
}

/** A Content-Type header's media type, lowercase and without parameters; null if absent or malformed. */
function mediaTypeOf(header: string | undefined): string | null {
  if (typeof header !== "string") return null;
  const essence = (header.split(";")[0] ?? "").trim().toLowerCase();
  return MEDIA_TYPE.test(essence) ? essence : null;
}

function isStoreError(error: unknown): error is GateError {
  return isGateError(error, "ERR_STORE_UNAVAILABLE") || isGateError(error, "ERR_STORE_FULL");
}

function storeFailure(
  error: unknown,
  refuse: (code: GateErrorCode, reason: UploadRefusalReason) => UploadOutcome,
): UploadOutcome {
  return refuse(
    isGateError(error, "ERR_STORE_FULL") ? "ERR_STORE_FULL" : "ERR_STORE_UNAVAILABLE",
    "store-unavailable",
  );
}

/**
 * Writes a JSON answer. One answered before the body was read to its end (a refused URL, 413, 415)
 * closes the connection: the rest of the upload is never read.
 */
function answer(response: ServerResponse, status: number, body: unknown): void {
  if (response.headersSent || response.destroyed) {
    response.destroy();
    return;
  }
  const text = JSON.stringify(body);
  response.writeHead(status, {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    ...(response.req?.complete === false ? { connection: "close" } : {}),
  });
  response.end(text);
}
