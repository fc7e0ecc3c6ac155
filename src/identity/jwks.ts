import { readFileSync, statSync } from "node:fs";
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  errors,
  type FetchImplementation,
  type JSONWebKeySet,
  type JWTVerifyGetKey,
} from "jose";
import { GateError } from "../errors.ts";
import { invalidCredential } from "./failure.ts";

/**
 * An issuer's verification keys, from a file or a URL. `resolve` is handed to jose's `jwtVerify`
 * and only ever answers with this issuer's keys. Its failures are already `ERR_AUTH_INVALID` with a
 * reason ("unknown-kid", "missing-kid", "jwks-unavailable", ...).
 */
export interface IssuerKeySet {
  readonly resolve: JWTVerifyGetKey;
  /** How many keys the set holds, or undefined before a remote set was first fetched. */
  keyCount(): number | undefined;
}

export interface RemoteJwksOptions {
  /** Bound on one fetch, body included. */
  readonly timeoutMs: number;
  /**
   * After a successful fetch, a token naming an unknown `kid` triggers no new fetch for this long,
   * so a flood of invented `kid`s costs the issuer at most one request per cooldown.
   */
  readonly cooldownMs: number;
  /** Keys older than this are fetched again before use (key removal at the issuer takes effect). */
  readonly maxAgeMs: number;
  /** After a failed fetch, no new attempt for this long; tokens needing the keys are refused. */
  readonly retryAfterFailureMs: number;
}

/** A JWKS larger than this is refused: real sets are a few KiB. */
export const MAX_JWKS_BYTES = 512 * 1024;

// Members that only private or symmetric keys have (RFC 7518 section 6; "priv" for AKP keys).
const PRIVATE_MEMBERS = ["d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"] as const;

function configError(setting: string, problem: string, cause?: unknown): GateError {
  return new GateError("ERR_CONFIG_INVALID", `${setting} ${problem}`, cause === undefined ? {} : { cause });
}

/**
 * What is wrong with `value` as a set of public verification keys, or undefined if nothing is. A
 * JWKS file is published material; one holding a private key means the operator pointed at the
 * wrong file, and that key would then be readable by whoever can read the configuration.
 */
function publicKeySetProblem(value: unknown): string | undefined {
  if (typeof value !== "object" || value === null || !Array.isArray((value as { keys?: unknown }).keys)) {
    return "is not a JSON Web Key Set";
  }
  const keys = (value as { keys: unknown[] }).keys;
  if (keys.length === 0) return "holds no keys";
  for (const [index, key] of keys.entries()) {
    if (typeof key !== "object" || key === null || Array.isArray(key)) {
      return `key ${index} is not a JSON object`;
    }
    const kty = (key as { kty?: unknown }).kty;
    if (kty === "oct" || PRIVATE_MEMBERS.some((member) => Object.hasOwn(key, member))) {
      return `key ${index} holds private or symmetric key material`;
    }
  }
  return undefined;
}

/**
 * Keys from a file, read once at creation: the set cannot change under a running gateway, and a
 * broken file stops the start rather than the first request.
 */
export function fileJwks(path: string, setting: string): IssuerKeySet {
  let jwks: JSONWebKeySet;
  try {
    if (statSync(path).size > MAX_JWKS_BYTES) throw configError(setting, "is too large for a JWKS");
    const parsed: unknown = JSON.parse(readFileSync(path, "utf8"));
    const problem = publicKeySetProblem(parsed);
    if (problem !== undefined) throw configError(setting, problem);
    jwks = parsed as JSONWebKeySet;
  } catch (error) {
    if (error instanceof GateError) throw error;
    // The cause is a filesystem or JSON error: it names the path, never key material.
    throw configError(setting, "cannot be read as a JSON Web Key Set", error);
  }
  let local: ReturnType<typeof createLocalJWKSet>;
  try {
    local = createLocalJWKSet(jwks);
  } catch (error) {
    throw configError(setting, "is not a valid JSON Web Key Set", error);
  }
  const count = jwks.keys.length;
  return { resolve: withKeyFailures(local), keyCount: () => count };
}

/** http is allowed only to the local machine (a sidecar or a test); anything else must be https. */
function isLoopbackHost(hostname: string): boolean {
  return hostname === "localhost" || hostname === "[::1]" || /^127(\.\d{1,3}){3}$/.test(hostname);
}

/**
 * Keys fetched from the issuer's JWKS URL with jose's `createRemoteJWKSet`, which caches them for
 * `maxAgeMs` and refetches for an unknown `kid` at most once per `cooldownMs` after a success.
 *
 * Two gaps in that are closed here, in the fetch jose calls: jose's cooldown counts from the last
 * *successful* fetch, so while the issuer is down every token would trigger a new request; and the
 * response body is read with no size bound. The gate below allows one attempt per
 * `retryAfterFailureMs` after a failure and reads at most `MAX_JWKS_BYTES`. Redirects are not
 * followed (jose asks for `redirect: "manual"`, so a 3xx is not a 200 and fails).
 */
export function remoteJwks(url: string, setting: string, options: RemoteJwksOptions): IssuerKeySet {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw configError(setting, "is not a URL");
  }
  if (parsed.username !== "" || parsed.password !== "") {
    throw configError(setting, "must not carry credentials");
  }
  if (parsed.protocol !== "https:" && !(parsed.protocol === "http:" && isLoopbackHost(parsed.hostname))) {
    throw configError(setting, "must use https (http only to a loopback address)");
  }

  let lastFailureAt: number | undefined;
  const gatedFetch: FetchImplementation = async (target, init) => {
    if (lastFailureAt !== undefined && Date.now() - lastFailureAt < options.retryAfterFailureMs) {
      throw invalidCredential("jwks-unavailable");
    }
    try {
      const response = await fetch(target, init);
      if (response.status !== 200) {
        await response.body?.cancel();
        throw new GateError("ERR_INTERNAL", `JWKS answered ${response.status}`);
      }
      const text = await readBounded(response, MAX_JWKS_BYTES);
      // Checked here rather than left to jose, so a set that does not parse counts as a failed
      // fetch and waits for `retryAfterFailureMs` like any other.
      const problem = publicKeySetProblem(JSON.parse(text));
      if (problem !== undefined) throw new GateError("ERR_INTERNAL", `JWKS ${problem}`);
      lastFailureAt = undefined;
      return new Response(text, { status: 200, headers: { "content-type": "application/json" } });
    } catch (error) {
      lastFailureAt = Date.now();
      // The cause (status, network error, timeout) names the JWKS host at most, which is
      // configuration, not a secret; it is kept for the operator.
      throw invalidCredential("jwks-unavailable", error);
    }
  };

  const remote = createRemoteJWKSet(parsed, {
    timeoutDuration: options.timeoutMs,
    cooldownDuration: options.cooldownMs,
    cacheMaxAge: options.maxAgeMs,
    [customFetch]: gatedFetch,
  });
  return {
    resolve: withKeyFailures(remote),
    keyCount: () => remote.jwks()?.keys.length,
  };
}

async function readBounded(response: Response, limit: number): Promise<string> {
  if (Number(response.headers.get("content-length") ?? "0") > limit) {
    await response.body?.cancel();
    throw new GateError("ERR_INTERNAL", "JWKS response is too large");
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (response.body !== null) {
    for await (const chunk of response.body) {
      total += chunk.byteLength;
      // Leaving the loop early cancels the stream, so the rest is never downloaded.
      if (total > limit) throw new GateError("ERR_INTERNAL", "JWKS response is too large");
      chunks.push(chunk);
    }
  }
  return new TextDecoder("utf-8", { fatal: true }).decode(Buffer.concat(chunks));
}

/**
 * Turns jose's key-selection errors into reason codes. Everything that is not about the token's
 * header (network errors, timeouts, a set that does not parse) is "jwks-unavailable": the
 * operator's problem, which the failed-auth limiter does not hold against the client.
 */
function withKeyFailures(resolve: JWTVerifyGetKey): JWTVerifyGetKey {
  return async (header, token) => {
    try {
      return await resolve(header, token);
    } catch (error) {
      if (error instanceof GateError) throw error;
      if (error instanceof errors.JWKSNoMatchingKey) throw invalidCredential("unknown-kid");
      // Without a `kid`, several keys fit: refuse rather than try each (one signature check per
      // token is the most a caller can make us do).
      if (error instanceof errors.JWKSMultipleMatchingKeys) throw invalidCredential("missing-kid");
      if (error instanceof errors.JOSENotSupported) throw invalidCredential("algorithm");
      // A key in the set jose cannot import for this algorithm (fetch errors never get here: the
      // gated fetch turns them into "jwks-unavailable").
      if (error instanceof errors.JWKInvalid || error instanceof TypeError) {
        throw invalidCredential("key-unusable");
      }
      throw invalidCredential("jwks-unavailable");
    }
  };
}
