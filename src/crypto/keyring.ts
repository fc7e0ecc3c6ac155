import { hkdfSync, randomBytes } from "node:crypto";
import { constants, open as openFile } from "node:fs/promises";
import { resolve } from "node:path";
import { GateError, invalidArgument } from "../errors.ts";

/**
 * Master keys and the purpose keys derived from them.
 *
 * Nothing uses a master key directly: every use (sealing vault entries, sealing upstream session
 * mappings, the audit chain, log tags) gets its own HKDF-SHA256 subkey, so a key recovered from one
 * use says nothing about another. Several master keys may be loaded at once for rotation: new data
 * is sealed under the active one, old data still opens under the key id it names.
 */

export const MASTER_KEY_BYTES = 32;
const MAX_KEY_FILE_BYTES = 4096;
const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/;
const PURPOSE = /^[a-z][a-z0-9/:-]{0,63}$/;
const HKDF_SALT = Buffer.from("tenantgate/hkdf/v1");

export interface MasterKeyInput {
  readonly id: string;
  /** Exactly 32 bytes. */
  readonly key: Uint8Array;
}

export class Keyring {
  readonly activeKeyId: string;
  readonly #masterKeys: ReadonlyMap<string, Buffer>;
  readonly #derived = new Map<string, Buffer>();

  private constructor(masterKeys: ReadonlyMap<string, Buffer>, activeKeyId: string) {
    this.#masterKeys = masterKeys;
    this.activeKeyId = activeKeyId;
  }

  static fromKeys(keys: readonly MasterKeyInput[], activeKeyId: string): Keyring {
    if (keys.length === 0) throw invalidArgument("keys", "must hold at least one master key");
    const map = new Map<string, Buffer>();
    for (const { id, key } of keys) {
      if (!KEY_ID.test(id)) throw invalidArgument("key id", "must be 1-32 characters of [A-Za-z0-9_-]");
      if (map.has(id)) throw invalidArgument("key id", "must be unique");
      if (key.byteLength !== MASTER_KEY_BYTES) {
        throw new GateError("ERR_KEY_INVALID", `master key "${id}" must be ${MASTER_KEY_BYTES} bytes`);
      }
      // A private copy: the caller's buffer may be reused or zeroed.
      map.set(id, Buffer.from(key));
    }
    if (!map.has(activeKeyId)) throw invalidArgument("activeKeyId", "must name one of the loaded keys");
    return new Keyring(map, activeKeyId);
  }

  /** A keyring with one fresh random key: for tests and in-memory use only (nothing survives it). */
  static ephemeral(): Keyring {
    return Keyring.fromKeys([{ id: "ephemeral", key: randomBytes(MASTER_KEY_BYTES) }], "ephemeral");
  }

  get keyIds(): readonly string[] {
    return [...this.#masterKeys.keys()];
  }

  hasKey(keyId: string): boolean {
    return this.#masterKeys.has(keyId);
  }

  /**
   * The 32-byte subkey for `purpose` under master key `keyId` (default: the active key). Sealing
   * keys are not reachable from here (see `sealingKey`): the two derive from disjoint HKDF infos.
   */
  purposeKey(purpose: string, keyId: string = this.activeKeyId): Buffer {
    if (!PURPOSE.test(purpose)) throw invalidArgument("purpose", "must be a short lowercase name");
    return this.#derive(`tenantgate/purpose/${purpose}`, keyId);
  }

  /** The AES-256-GCM key for sealed values of `purpose`; used by `seal`/`open` only. */
  sealingKey(purpose: string, keyId: string = this.activeKeyId): Buffer {
    if (!PURPOSE.test(purpose)) throw invalidArgument("purpose", "must be a short lowercase name");
    return this.#derive(`tenantgate/seal/${purpose}`, keyId);
  }

  /** HKDF-SHA256, cached: it runs once per (key, info) per process. */
  #derive(info: string, keyId: string): Buffer {
    // Neither a key id nor an info string can contain NUL, so the cache key is unambiguous.
    const cacheKey = `${keyId}\0${info}`;
    // Callers get a copy: one that zeroes or writes into its key after use must not change what
    // every later caller derives (a zeroed assertion seed would be a key anyone can compute).
    const cached = this.#derived.get(cacheKey);
    if (cached) return Buffer.from(cached);
    const master = this.#masterKeys.get(keyId);
    if (!master) throw invalidArgument("keyId", "must name a loaded key");
    const derived = Buffer.from(hkdfSync("sha256", master, HKDF_SALT, info, 32));
    this.#derived.set(cacheKey, derived);
    return Buffer.from(derived);
  }
}

/** A new master key, base64url (what `tenantgate keys generate` prints). */
export function generateMasterKey(): string {
  return randomBytes(MASTER_KEY_BYTES).toString("base64url");
}

/**
 * Decodes a base64url master key. `source` names where it came from (a setting or a file path) for
 * the error message; the key text itself never appears in an error.
 */
export function parseMasterKey(text: string, source: string): Buffer {
  const trimmed = text.trim();
  const decoded = Buffer.from(trimmed, "base64url");
  // Re-encoding must give the same text: rejects stray characters that base64url decoding skips.
  if (decoded.byteLength !== MASTER_KEY_BYTES || decoded.toString("base64url") !== trimmed) {
    throw new GateError(
      "ERR_KEY_INVALID",
      `${source} must hold a ${MASTER_KEY_BYTES}-byte key in base64url (tenantgate keys generate)`,
    );
  }
  return decoded;
}

/**
 * Loads a master key from `env:NAME` or `file:PATH`. A key file readable by group or others is
 * refused: a key anyone on the host can read protects nothing.
 */
export async function loadMasterKey(
  reference: string,
  options: { env?: NodeJS.ProcessEnv; baseDir?: string } = {},
): Promise<Buffer> {
  const env = options.env ?? process.env;
  if (reference.startsWith("env:")) {
    const name = reference.slice(4);
    const value = env[name];
    if (!name || value === undefined || value === "") {
      throw new GateError("ERR_KEY_INVALID", `environment variable ${name || "(empty name)"} is not set`);
    }
    return parseMasterKey(value, `environment variable ${name}`);
  }
  if (reference.startsWith("file:")) {
    return readKeyFile(resolve(options.baseDir ?? process.cwd(), reference.slice(5)));
  }
  throw new GateError("ERR_KEY_INVALID", "a master key reference must start with env: or file:");
}

/**
 * The keyring a configuration's `secrets` describe (`GatewayConfig["secrets"]`): every master key
 * loaded by its reference, the active one chosen. The gateway and the CLI load keys only this way, so
 * a key id means the same key to both.
 */
export async function loadKeyring(
  secrets: {
    readonly masterKeys: readonly { readonly id: string; readonly key: string }[];
    readonly activeKeyId: string;
  },
  options: { env?: NodeJS.ProcessEnv; baseDir?: string } = {},
): Promise<Keyring> {
  const keys: MasterKeyInput[] = [];
  for (const { id, key } of secrets.masterKeys) keys.push({ id, key: await loadMasterKey(key, options) });
  return Keyring.fromKeys(keys, secrets.activeKeyId);
}

/**
 * Reads a key file through one handle: the checks (`fstat`) and the read apply to the same file, so
 * it cannot be swapped between them. Refused: anything but a regular file (a FIFO would block),
 * a file readable by group or others (a key anyone on the host can read protects nothing), and a
 * file owned by another user (who could replace it).
 */
async function readKeyFile(path: string): Promise<Buffer> {
  let handle: Awaited<ReturnType<typeof openFile>>;
  try {
    // O_NONBLOCK: opening a FIFO must not hang; it is refused below.
    handle = await openFile(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (cause) {
    throw new GateError("ERR_KEY_INVALID", `key file ${path} cannot be read`, { cause });
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new GateError("ERR_KEY_INVALID", `key file ${path} is not a regular file`);
    if ((info.mode & 0o077) !== 0) {
      throw new GateError(
        "ERR_KEY_FILE_EXPOSED",
        `key file ${path} is readable by group or others (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`,
      );
    }
    const uid = process.geteuid?.();
    if (uid !== undefined && info.uid !== uid && info.uid !== 0) {
      throw new GateError("ERR_KEY_FILE_EXPOSED", `key file ${path} is owned by another user`);
    }
    // A key file is 43 characters and a newline; anything much larger is not a key file.
    if (info.size > MAX_KEY_FILE_BYTES)
      throw new GateError("ERR_KEY_INVALID", `key file ${path} is too large`);
    return parseMasterKey(await handle.readFile("utf8"), `key file ${path}`);
  } finally {
    await handle.close();
  }
}
