/**
 * JWT verification, cached vs uncached (`npm run bench:jwt`): the gateway's JWT authenticator on an
 * EdDSA issuer (a JWKS file), verifying
 *
 * - the same token again and again (the verified-token cache answers, keyed by the token's digest and
 *   the audience, never past the token's `exp`), and
 * - a fresh token every time (signature checked every time),
 *
 * interleaved over rounds, medians reported.
 *
 *   ./run npm run bench:jwt -- [--ops N] [--rounds N]
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { createJwtAuthenticator } from "../src/identity/jwt-authenticator.ts";

const { values } = parseArgs({
  options: { ops: { type: "string", default: "20000" }, rounds: { type: "string", default: "5" } },
});
const OPS = Number(values.ops);
const ROUNDS = Number(values.rounds);
const ISSUER = "https://bench-issuer.invalid";
const AUDIENCE = "http://127.0.0.1:8787/mcp";

const dir = await mkdtemp(join(tmpdir(), "tenantgate-bench-jwt-"));
try {
  const { publicKey, privateKey } = await generateKeyPair("EdDSA", { extractable: true });
  const jwksFile = join(dir, "jwks.json");
  await writeFile(
    jwksFile,
    JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: "b", alg: "EdDSA" }] }),
  );
  const authenticator = createJwtAuthenticator({
    issuers: [
      { issuer: ISSUER, jwksFile, algorithms: ["EdDSA"], clockSkewMs: 30_000, tenantClaim: "tenant" },
    ],
    cache: { maxEntries: OPS * 2 },
  });
  const sign = (n: number) =>
    new SignJWT({ tenant: "t", n })
      .setProtectedHeader({ alg: "EdDSA", kid: "b" })
      .setIssuer(ISSUER)
      .setSubject(`user-${n % 100}`)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime("1h")
      .sign(privateKey);
  const same = await sign(0);
  await authenticator.verify(same, { audience: AUDIENCE });

  const cached: number[] = [];
  const uncached: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    // Fresh tokens are signed before the clock starts: only verification is timed.
    const fresh = await Promise.all(Array.from({ length: OPS }, (_, i) => sign(round * OPS + i + 1)));
    let started = performance.now();
    for (let i = 0; i < OPS; i++) await authenticator.verify(same, { audience: AUDIENCE });
    cached.push(OPS / ((performance.now() - started) / 1000));
    started = performance.now();
    for (const token of fresh) await authenticator.verify(token, { audience: AUDIENCE });
    uncached.push(OPS / ((performance.now() - started) / 1000));
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
  const c = median(cached);
  const u = median(uncached);
  process.stdout.write(
    `${JSON.stringify(
      {
        when: new Date().toISOString(),
        node: process.version,
        ops: OPS,
        rounds: ROUNDS,
        cachedVerificationsPerSecond: Math.round(c),
        uncachedVerificationsPerSecond: Math.round(u),
        cachedMicrosecondsEach: Math.round((1e6 / c) * 100) / 100,
        uncachedMicrosecondsEach: Math.round((1e6 / u) * 100) / 100,
        speedup: Math.round((c / u) * 10) / 10,
      },
      null,
      2,
    )}\n`,
  );
} finally {
  await rm(dir, { recursive: true, force: true });
}
