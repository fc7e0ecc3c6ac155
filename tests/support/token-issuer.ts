/**
 * A test issuer: real key pairs (RS256, ES256, EdDSA), real jose-signed tokens, a JWKS file in a
 * temporary folder and a JWKS served by a real HTTP server that counts its requests.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from "jose";

export type TestAlgorithm = "RS256" | "ES256" | "EdDSA";

export interface SigningKey {
  readonly alg: TestAlgorithm;
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly publicJwk: JWK;
}

export async function makeSigningKey(alg: TestAlgorithm, kid: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: "sig" };
  return { alg, kid, privateKey, publicJwk };
}

export function jwksOf(...keys: SigningKey[]): { keys: JWK[] } {
  return { keys: keys.map((key) => key.publicJwk) };
}

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

export interface SignOptions {
  /** Header members to add or override (`alg` and `kid` default to the key's). */
  readonly header?: Record<string, unknown>;
  /** Leave `kid` out of the header. */
  readonly noKid?: boolean;
}

/** Signs `claims` as they are: nothing is added, so tests control every claim. */
export async function signToken(
  key: SigningKey,
  claims: JWTPayload,
  options: SignOptions = {},
): Promise<string> {
  const header = { alg: key.alg, ...(options.noKid === true ? {} : { kid: key.kid }), ...options.header };
  return new SignJWT(claims).setProtectedHeader(header as { alg: string }).sign(key.privateKey);
}

/** A token with the given header and payload and an arbitrary signature: for the cheap checks. */
export function unsignedToken(header: object, payload: object, signature = "c2lnbmF0dXJl"): string {
  const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${encode(header)}.${encode(payload)}.${signature}`;
}

export async function writeJwksFile(jwks: object): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "tenantgate-jwks-"));
  const path = join(dir, "jwks.json");
  await writeFile(path, JSON.stringify(jwks));
  return { path, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export interface JwksServer {
  readonly url: string;
  /** Requests received so far. */
  readonly requests: number;
  /** What the next requests get. */
  serve(answer: object | ((response: ServerResponse) => void)): void;
  close(): Promise<void>;
}

export async function startJwksServer(jwks: object): Promise<JwksServer> {
  let answer: object | ((response: ServerResponse) => void) = jwks;
  let requests = 0;
  const server: Server = createServer((request, response) => {
    requests++;
    request.resume();
    if (typeof answer === "function") {
      answer(response);
      return;
    }
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify(answer));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/jwks.json`,
    get requests() {
      return requests;
    },
    serve(next) {
      answer = next;
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
