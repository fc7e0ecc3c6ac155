import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import {
  type CryptoKey,
  exportJWK,
  exportSPKI,
  generateKeyPair,
  importJWK,
  type JWTPayload,
  SignJWT,
} from "jose";
import { type GateError, isGateError } from "../../src/errors.ts";
import {
  type CredentialFailure,
  createJwtAuthenticator,
  type JwtAuthenticator,
  type JwtAuthenticatorOptions,
  ownerScope,
  type Principal,
  samePrincipal,
} from "../../src/identity/index.ts";
import {
  type JwksServer,
  jwksOf,
  makeSigningKey,
  nowSeconds,
  type SigningKey,
  signToken,
  startJwksServer,
  unsignedToken,
  writeJwksFile,
} from "../support/token-issuer.ts";

const ISSUER_A = "https://issuer-a.example";
const ISSUER_B = "https://issuer-b.example";
const AUD_X = "https://gateway.example/mcp/x";
const AUD_Y = "https://gateway.example/mcp/y";

let rsa: SigningKey;
let ec: SigningKey;
let ed: SigningKey;
let rsaB: SigningKey;
let jwksFile: { path: string; cleanup: () => Promise<void> };
let serverB: JwksServer;
let auth: JwtAuthenticator;

/** Issuer A (file JWKS, three keys, tenant claim) and issuer B (remote JWKS, tenant = issuer). */
function options(overrides: Partial<JwtAuthenticatorOptions> = {}): JwtAuthenticatorOptions {
  return {
    issuers: [
      {
        issuer: ISSUER_A,
        jwksFile: jwksFile.path,
        algorithms: ["RS256", "ES256", "EdDSA"],
        clockSkewMs: 30_000,
        tenantClaim: "tenant",
      },
      { issuer: ISSUER_B, jwksUrl: serverB.url, algorithms: ["RS256"], clockSkewMs: 30_000 },
    ],
    ...overrides,
  };
}

function claimsA(overrides: JWTPayload = {}): JWTPayload {
  return {
    iss: ISSUER_A,
    sub: "alice",
    aud: AUD_X,
    exp: nowSeconds() + 300,
    tenant: "acme",
    scope: "tools:read tools:call",
    ...overrides,
  };
}

function claimsB(overrides: JWTPayload = {}): JWTPayload {
  return { iss: ISSUER_B, sub: "alice", aud: AUD_X, exp: nowSeconds() + 300, ...overrides };
}

/** Asserts `promise` is refused as ERR_AUTH_INVALID with reason `detail`, and returns the error. */
async function refused(promise: Promise<unknown>, detail: CredentialFailure): Promise<GateError> {
  let caught: unknown;
  await assert.rejects(promise, (error: unknown) => {
    caught = error;
    return true;
  });
  assert.ok(isGateError(caught, "ERR_AUTH_INVALID"), `expected ERR_AUTH_INVALID, got ${String(caught)}`);
  assert.equal(caught.detail, detail);
  assert.equal(caught.message, "invalid token");
  return caught;
}

before(async () => {
  [rsa, ec, ed, rsaB] = await Promise.all([
    makeSigningKey("RS256", "rsa-1"),
    makeSigningKey("ES256", "ec-1"),
    makeSigningKey("EdDSA", "ed-1"),
    makeSigningKey("RS256", "rsa-b-1"),
  ]);
  jwksFile = await writeJwksFile(jwksOf(rsa, ec, ed));
  serverB = await startJwksServer(jwksOf(rsaB));
  auth = createJwtAuthenticator(options());
});

after(async () => {
  await serverB.close();
  await jwksFile.cleanup();
});

describe("JWT authenticator: valid tokens", () => {
  it("accepts RS256, ES256 and EdDSA tokens from a JWKS file", async () => {
    for (const key of [rsa, ec, ed]) {
      const exp = nowSeconds() + 300;
      const principal = await auth.verify(await signToken(key, claimsA({ exp })), { audience: AUD_X });
      assert.deepEqual(
        { ...principal },
        {
          kind: "jwt",
          issuer: ISSUER_A,
          subject: "alice",
          tenant: "acme",
          scopes: ["tools:read", "tools:call"],
          expiresAt: exp * 1000,
        },
        key.alg,
      );
      assert.ok(Object.isFrozen(principal) && Object.isFrozen(principal.scopes));
    }
  });

  it("accepts tokens verified with a remote JWKS; the tenant is the issuer when no claim is configured", async () => {
    const principal = await auth.verify(await signToken(rsaB, claimsB({ tenant: "ignored" })), {
      audience: AUD_X,
    });
    assert.equal(principal.issuer, ISSUER_B);
    assert.equal(principal.tenant, ISSUER_B);
    assert.deepEqual(principal.scopes, []);
  });

  it("accepts an audience array that names the upstream", async () => {
    const token = await signToken(rsa, claimsA({ aud: ["https://other.example", AUD_X] }));
    assert.equal((await auth.verify(token, { audience: AUD_X })).subject, "alice");
  });

  it("reads scopes from `scope`, or else from `scp` as an array or a string", async () => {
    const scopesOf = async (claims: JWTPayload) =>
      (await auth.verify(await signToken(rsa, claimsA(claims)), { audience: AUD_X })).scopes;
    assert.deepEqual(await scopesOf({ scope: "a  b a" }), ["a", "b"]);
    assert.deepEqual(await scopesOf({ scope: undefined, scp: ["c", "d"] }), ["c", "d"]);
    assert.deepEqual(await scopesOf({ scope: undefined, scp: "e f" }), ["e", "f"]);
    assert.deepEqual(await scopesOf({ scope: "a", scp: ["ignored"] }), ["a"]);
    await refused(
      auth.verify(await signToken(rsa, claimsA({ scope: ["a"] })), { audience: AUD_X }),
      "scope-claim",
    );
    await refused(
      auth.verify(await signToken(rsa, claimsA({ scope: undefined, scp: [1] })), { audience: AUD_X }),
      "scope-claim",
    );
    await refused(
      auth.verify(await signToken(rsa, claimsA({ scope: 'a"b' })), { audience: AUD_X }),
      "scope-claim",
    );
  });

  it("accepts exp and nbf within the configured clock skew", async () => {
    const token = await signToken(rsa, claimsA({ exp: nowSeconds() - 10, nbf: nowSeconds() + 10 }));
    assert.equal((await auth.verify(token, { audience: AUD_X })).subject, "alice");
  });
});

describe("JWT authenticator: refusals (THREATS A1, A2)", () => {
  it("A2 alg none is refused", async () => {
    const claims = claimsA();
    await refused(auth.verify(unsignedToken({ alg: "none" }, claims, ""), { audience: AUD_X }), "malformed");
    await refused(auth.verify(unsignedToken({ alg: "none" }, claims), { audience: AUD_X }), "algorithm");
    await refused(
      auth.verify(unsignedToken({ alg: "NONE", kid: "rsa-1" }, claims), { audience: AUD_X }),
      "algorithm",
    );
  });

  it("A2 an HMAC token signed with the issuer's public key is refused", async () => {
    // The issuer's own public key, in the forms a confused verifier might take as an HMAC secret.
    const publicKey = await importJWK(rsa.publicJwk, "RS256");
    const secrets = [
      new TextEncoder().encode(await exportSPKI(publicKey as CryptoKey)),
      new TextEncoder().encode(JSON.stringify(rsa.publicJwk)),
    ];
    for (const secret of secrets) {
      for (const alg of ["HS256", "HS384", "HS512"]) {
        const token = await new SignJWT(claimsA()).setProtectedHeader({ alg, kid: "rsa-1" }).sign(secret);
        await refused(auth.verify(token, { audience: AUD_X }), "algorithm");
      }
    }
  });

  it("A2 HMAC and none cannot be configured as an issuer's algorithms", () => {
    for (const alg of ["HS256", "none", "RSA-OAEP", ""]) {
      assert.throws(
        () =>
          createJwtAuthenticator({
            issuers: [{ issuer: ISSUER_A, jwksFile: jwksFile.path, algorithms: [alg], clockSkewMs: 0 }],
          }),
        (error: unknown) =>
          isGateError(error, "ERR_CONFIG_INVALID") && /issuers\[0\]\.algorithms/.test(error.message),
        alg,
      );
    }
  });

  it("A2 an algorithm the issuer does not use is refused, though asymmetric", async () => {
    // Issuer B signs RS256 only.
    const esKey = await makeSigningKey("ES256", "rsa-b-1");
    await refused(auth.verify(await signToken(esKey, claimsB()), { audience: AUD_X }), "algorithm");
  });

  it("A2 wrong iss", async () => {
    await refused(
      auth.verify(await signToken(rsa, claimsA({ iss: "https://evil.example" })), { audience: AUD_X }),
      "unknown-issuer",
    );
    await refused(
      auth.verify(await signToken(rsa, claimsA({ iss: `${ISSUER_A}/` })), { audience: AUD_X }),
      "unknown-issuer",
    );
    await refused(
      auth.verify(await signToken(rsa, claimsA({ iss: undefined })), { audience: AUD_X }),
      "malformed",
    );
  });

  it("A2 a token claiming issuer B is checked against B's keys only", async () => {
    // Signed with issuer A's key, claiming B: selecting the issuer from the unverified `iss` is
    // safe because only B's keys are then tried.
    await refused(auth.verify(await signToken(rsa, claimsB()), { audience: AUD_X }), "unknown-kid");
    const token = await signToken(rsa, claimsB(), { header: { kid: "rsa-b-1" } });
    await refused(auth.verify(token, { audience: AUD_X }), "bad-signature");
  });

  it("A2 wrong aud", async () => {
    await refused(
      auth.verify(await signToken(rsa, claimsA({ aud: AUD_Y })), { audience: AUD_X }),
      "audience",
    );
    await refused(
      auth.verify(await signToken(rsa, claimsA({ aud: undefined })), { audience: AUD_X }),
      "audience",
    );
    await refused(auth.verify(await signToken(rsa, claimsA({ aud: [] })), { audience: AUD_X }), "audience");
    await refused(
      auth.verify(await signToken(rsa, claimsA({ aud: `${AUD_X}/` })), { audience: AUD_X }),
      "audience",
    );
  });

  it("A1 a token for upstream X is refused at upstream Y", async () => {
    const token = await signToken(rsa, claimsA({ aud: AUD_X }));
    assert.equal((await auth.verify(token, { audience: AUD_X })).subject, "alice");
    // The same token, now cached for X, is still refused at Y.
    await refused(auth.verify(token, { audience: AUD_Y }), "audience");
  });

  it("A2 expired", async () => {
    await refused(
      auth.verify(await signToken(rsa, claimsA({ exp: nowSeconds() - 60 })), { audience: AUD_X }),
      "expired",
    );
    await refused(
      auth.verify(await signToken(rsa, claimsA({ exp: undefined })), { audience: AUD_X }),
      "malformed",
    );
    await refused(
      auth.verify(await signToken(rsa, claimsA({ exp: "9999999999" as never })), { audience: AUD_X }),
      "malformed",
    );
  });

  it("A2 a token valid for more than a year, or sender-constrained (cnf), is refused", async () => {
    await refused(
      auth.verify(await signToken(rsa, claimsA({ exp: 1e300 })), { audience: AUD_X }),
      "lifetime",
    );
    await refused(
      auth.verify(await signToken(rsa, claimsA({ exp: nowSeconds() + 400 * 86_400 })), { audience: AUD_X }),
      "lifetime",
    );
    await refused(
      auth.verify(await signToken(rsa, { ...claimsA(), cnf: { jkt: "thumbprint" } }), { audience: AUD_X }),
      "sender-constrained",
    );
  });

  it("A2 not yet valid", async () => {
    await refused(
      auth.verify(await signToken(rsa, claimsA({ nbf: nowSeconds() + 120 })), { audience: AUD_X }),
      "not-yet-valid",
    );
  });

  it("A2 unknown kid, and the JWKS endpoint is fetched at most once per cooldown under 100 such tokens", async () => {
    const server = await startJwksServer(jwksOf(rsaB));
    try {
      const remote = createJwtAuthenticator({
        issuers: [{ issuer: ISSUER_B, jwksUrl: server.url, algorithms: ["RS256"], clockSkewMs: 0 }],
        jwks: { cooldownMs: 30_000 },
      });
      const tokens = await Promise.all(
        Array.from({ length: 100 }, () =>
          signToken(rsaB, claimsB(), { header: { kid: randomBytes(8).toString("hex") } }),
        ),
      );
      for (const token of tokens) await refused(remote.verify(token, { audience: AUD_X }), "unknown-kid");
      await Promise.all(
        tokens.map((token) => refused(remote.verify(token, { audience: AUD_X }), "unknown-kid")),
      );
      assert.equal(server.requests, 1, "one fetch for the first token, none for the other 199");
      // The known key still works without another fetch.
      assert.equal(
        (await remote.verify(await signToken(rsaB, claimsB()), { audience: AUD_X })).issuer,
        ISSUER_B,
      );
      assert.equal(server.requests, 1);
    } finally {
      await server.close();
    }
  });

  it("A2 an unknown kid refetches once after the cooldown, so a rotated-in key is picked up", async () => {
    const server = await startJwksServer(jwksOf(rsaB));
    try {
      const remote = createJwtAuthenticator({
        issuers: [{ issuer: ISSUER_B, jwksUrl: server.url, algorithms: ["RS256"], clockSkewMs: 0 }],
        jwks: { cooldownMs: 200 },
      });
      await remote.verify(await signToken(rsaB, claimsB()), { audience: AUD_X });
      const rotated = await makeSigningKey("RS256", "rsa-b-2");
      server.serve(jwksOf(rsaB, rotated));
      const token = await signToken(rotated, claimsB());
      await refused(remote.verify(token, { audience: AUD_X }), "unknown-kid");
      assert.equal(server.requests, 1, "within the cooldown: no refetch");
      await new Promise((resolve) => setTimeout(resolve, 250));
      const results = await Promise.allSettled(
        Array.from({ length: 100 }, () => remote.verify(token, { audience: AUD_X })),
      );
      assert.ok(results.every((result) => result.status === "fulfilled"));
      assert.equal(server.requests, 2, "one refetch after the cooldown");
    } finally {
      await server.close();
    }
  });

  it("A2 bad signature", async () => {
    const token = await signToken(rsa, claimsA());
    const [header, payload, signature] = token.split(".") as [string, string, string];
    const flipped = `${signature.slice(0, 10)}${signature[10] === "A" ? "B" : "A"}${signature.slice(11)}`;
    await refused(auth.verify(`${header}.${payload}.${flipped}`, { audience: AUD_X }), "bad-signature");
    // A payload edited after signing (another subject), with the original signature.
    const forged = Buffer.from(JSON.stringify(claimsA({ sub: "mallory" }))).toString("base64url");
    await refused(auth.verify(`${header}.${forged}.${signature}`, { audience: AUD_X }), "bad-signature");
    // A signature by a key the issuer never published, under its kid.
    const impostor = await makeSigningKey("RS256", "rsa-1");
    await refused(auth.verify(await signToken(impostor, claimsA()), { audience: AUD_X }), "bad-signature");
  });

  it("A2 missing tenant claim", async () => {
    for (const tenant of [undefined, "", 42, ["acme"], null, "a\nb", "x".repeat(300)]) {
      const token = await signToken(rsa, claimsA({ tenant: tenant as never }));
      await refused(auth.verify(token, { audience: AUD_X }), "tenant-claim");
    }
  });

  it("refuses a missing, empty or non-string subject", async () => {
    for (const sub of [undefined, "", 7, "a\u0000b"]) {
      const token = await signToken(rsa, claimsA({ sub: sub as never }));
      await refused(auth.verify(token, { audience: AUD_X }), "subject");
    }
  });

  it("refuses malformed tokens before any key work", async () => {
    const valid = await signToken(rsa, claimsA());
    const [header, payload, signature] = valid.split(".") as [string, string, string];
    const encode = (text: string) => Buffer.from(text).toString("base64url");
    for (const token of [
      "",
      "a.b",
      "a.b.c.d",
      `${header}.${payload}`,
      `${header}.${payload}.${signature}.`,
      `${header}=.${payload}.${signature}`,
      `${header}.${payload}.${signature}+`,
      `${encode("[1]")}.${payload}.${signature}`,
      `${encode("not json")}.${payload}.${signature}`,
      `${header}.${encode("null")}.${signature}`,
      `${header}.${Buffer.from([0xff, 0xfe]).toString("base64url")}.${signature}`,
      `${header}.${payload}.${"A".repeat(8 * 1024)}`,
      `${header}.a.${signature}`,
    ]) {
      await refused(auth.verify(token, { audience: AUD_X }), "malformed");
    }
    await refused(
      auth.verify(unsignedToken({ alg: "RS256", kid: "rsa-1", crit: ["b64"], b64: false }, claimsA()), {
        audience: AUD_X,
      }),
      "malformed",
    );
    await refused(
      auth.verify(unsignedToken({ alg: "RS256", kid: 5 }, claimsA()), { audience: AUD_X }),
      "malformed",
    );
  });

  it("cheap checks refuse before any key is fetched or any signature checked", async () => {
    const server = await startJwksServer(jwksOf(rsaB));
    try {
      const remote = createJwtAuthenticator({
        issuers: [
          {
            issuer: ISSUER_B,
            jwksUrl: server.url,
            algorithms: ["RS256"],
            clockSkewMs: 0,
            tenantClaim: "tenant",
          },
        ],
      });
      const cases: [CredentialFailure, string][] = [
        ["malformed", "not.a.jwt"],
        ["algorithm", unsignedToken({ alg: "none" }, claimsB({ tenant: "t" }))],
        ["algorithm", unsignedToken({ alg: "HS256" }, claimsB({ tenant: "t" }))],
        ["unknown-issuer", await signToken(rsaB, claimsB({ iss: ISSUER_A, tenant: "t" }))],
        ["expired", await signToken(rsaB, claimsB({ exp: nowSeconds() - 1, tenant: "t" }))],
        ["not-yet-valid", await signToken(rsaB, claimsB({ nbf: nowSeconds() + 60, tenant: "t" }))],
        ["audience", await signToken(rsaB, claimsB({ aud: AUD_Y, tenant: "t" }))],
        ["subject", await signToken(rsaB, claimsB({ sub: "", tenant: "t" }))],
        ["tenant-claim", await signToken(rsaB, claimsB())],
      ];
      for (const [detail, token] of cases) await refused(remote.verify(token, { audience: AUD_X }), detail);
      assert.equal(server.requests, 0);
    } finally {
      await server.close();
    }
  });

  it("refuses a token without kid when the issuer has several keys, and accepts it with one key", async () => {
    await refused(
      auth.verify(await signToken(rsa, claimsA(), { noKid: true }), { audience: AUD_X }),
      "missing-kid",
    );
    const single = await writeJwksFile(jwksOf(rsa));
    try {
      const one = createJwtAuthenticator({
        issuers: [{ issuer: ISSUER_A, jwksFile: single.path, algorithms: ["RS256"], clockSkewMs: 0 }],
      });
      const principal = await one.verify(await signToken(rsa, claimsA(), { noKid: true }), {
        audience: AUD_X,
      });
      assert.equal(principal.tenant, ISSUER_A);
    } finally {
      await single.cleanup();
    }
  });

  it("every failure has the same client-facing message, and detail never holds the token or a claim", async () => {
    const secretSub = `sub-${randomBytes(12).toString("hex")}`;
    const secretTenant = `tenant-${randomBytes(12).toString("hex")}`;
    const claims = (overrides: JWTPayload) => claimsA({ sub: secretSub, tenant: secretTenant, ...overrides });
    const valid = await signToken(rsa, claims({}));
    const [header, payload, signature] = valid.split(".") as [string, string, string];
    const bad = [
      unsignedToken({ alg: "none" }, claims({})),
      await new SignJWT(claims({})).setProtectedHeader({ alg: "HS256" }).sign(randomBytes(32)),
      await signToken(rsa, claims({ iss: "https://evil.example" })),
      await signToken(rsa, claims({ aud: AUD_Y })),
      await signToken(rsa, claims({ exp: nowSeconds() - 3600 })),
      await signToken(rsa, claims({ nbf: nowSeconds() + 3600 })),
      await signToken(rsa, claims({}), { header: { kid: "nope" } }),
      `${header}.${payload}.${signature.slice(0, -4)}AAAA`,
      await signToken(rsa, claims({ tenant: undefined })),
      "garbage",
    ];
    const errors: GateError[] = [];
    for (const token of bad) {
      const error = await auth.verify(token, { audience: AUD_X }).then(
        () => assert.fail("accepted a bad token"),
        (e: unknown) => e,
      );
      assert.ok(isGateError(error, "ERR_AUTH_INVALID"));
      errors.push(error);
      const exposed = [
        error.message,
        error.detail ?? "",
        JSON.stringify(error.toWire()),
        String(error.cause ?? ""),
      ];
      for (const text of exposed) {
        for (const secret of [token, secretSub, secretTenant, signature]) {
          assert.ok(!text.includes(secret), `${error.detail}: error text holds a secret`);
        }
      }
    }
    assert.equal(new Set(errors.map((e) => e.message)).size, 1);
    assert.equal(new Set(errors.map((e) => JSON.stringify(e.toWire()))).size, 1);
    assert.deepEqual(errors[0]!.toWire(), {
      status: 401,
      code: "ERR_AUTH_INVALID",
      message: "authentication required",
    });
    // Each case failed for its own reason, so the audit trail can tell them apart.
    assert.ok(new Set(errors.map((e) => e.detail)).size >= 9);
  });
});

describe("JWT authenticator: principals (THREATS A3)", () => {
  const verifyA = async (claims: JWTPayload) =>
    auth.verify(await signToken(rsa, claimsA(claims)), { audience: AUD_X });

  it("A3 the same sub from two issuers are two principals", async () => {
    const fromA = await verifyA({ sub: "alice" });
    const fromB = await auth.verify(await signToken(rsaB, claimsB({ sub: "alice" })), { audience: AUD_X });
    assert.equal(fromA.subject, fromB.subject);
    assert.equal(samePrincipal(fromA, fromB), false);
    assert.notDeepEqual(ownerScope(fromA), ownerScope(fromB));
  });

  it("A3 a refreshed token (same iss/sub) is the same principal", async () => {
    const first = await verifyA({ exp: nowSeconds() + 60, jti: "one", scope: "tools:read" });
    const refreshed = await auth.verify(
      await signToken(ec, claimsA({ exp: nowSeconds() + 3600, jti: "two", scope: "tools:read tools:call" })),
      { audience: AUD_X },
    );
    assert.notEqual(first.expiresAt, refreshed.expiresAt);
    assert.equal(samePrincipal(first, refreshed), true);
    assert.deepEqual(ownerScope(first), ownerScope(refreshed));
  });

  it("A3 the same sub with another tenant is another principal", async () => {
    const acme: Principal = await verifyA({ tenant: "acme" });
    const globex: Principal = await verifyA({ tenant: "globex" });
    assert.equal(samePrincipal(acme, globex), false);
    assert.notDeepEqual(ownerScope(acme), ownerScope(globex));
  });
});

describe("JWT authenticator: verified-token cache", () => {
  it("a cached verification never outlives exp, never crosses audiences, and is bounded in age", async () => {
    const server = await startJwksServer(jwksOf(rsaB));
    let clock = Date.now();
    try {
      // maxAgeMs 0: every key lookup fetches, so the request count shows each real verification.
      const remote = createJwtAuthenticator({
        issuers: [{ issuer: ISSUER_B, jwksUrl: server.url, algorithms: ["RS256"], clockSkewMs: 0 }],
        jwks: { cooldownMs: 0, maxAgeMs: 0, retryAfterFailureMs: 0 },
        cache: { maxAgeMs: 60_000 },
        now: () => clock,
      });
      const exp = Math.floor(clock / 1000) + 120;
      const token = await signToken(rsaB, claimsB({ aud: [AUD_X, AUD_Y], exp }));
      await remote.verify(token, { audience: AUD_X });
      assert.equal(server.requests, 1);
      await remote.verify(token, { audience: AUD_X });
      assert.equal(server.requests, 1, "the second use is answered from the cache");
      await remote.verify(token, { audience: AUD_Y });
      assert.equal(server.requests, 2, "another audience is verified on its own");

      clock += 61_000;
      await remote.verify(token, { audience: AUD_X });
      assert.equal(server.requests, 3, "an entry older than the cache's max age is verified again");

      clock = exp * 1000;
      await refused(remote.verify(token, { audience: AUD_X }), "expired");
      await refused(remote.verify(token, { audience: AUD_Y }), "expired");
      assert.equal(server.requests, 3);
    } finally {
      await server.close();
    }
  });

  it("a key withdrawn at the issuer stops being honoured once cached entries age out", async () => {
    const server = await startJwksServer(jwksOf(rsaB));
    let clock = Date.now();
    try {
      const remote = createJwtAuthenticator({
        issuers: [{ issuer: ISSUER_B, jwksUrl: server.url, algorithms: ["RS256"], clockSkewMs: 0 }],
        jwks: { cooldownMs: 0, maxAgeMs: 0, retryAfterFailureMs: 0 },
        cache: { maxAgeMs: 1_000 },
        now: () => clock,
      });
      const token = await signToken(rsaB, claimsB());
      await remote.verify(token, { audience: AUD_X });
      server.serve(jwksOf(await makeSigningKey("RS256", "rsa-b-9")));
      await remote.verify(token, { audience: AUD_X });
      clock += 1_001;
      await refused(remote.verify(token, { audience: AUD_X }), "unknown-kid");
    } finally {
      await server.close();
    }
  });

  it("holds at most maxEntries tokens, evicting the least recently used", async () => {
    const server = await startJwksServer(jwksOf(rsaB));
    try {
      const remote = createJwtAuthenticator({
        issuers: [{ issuer: ISSUER_B, jwksUrl: server.url, algorithms: ["RS256"], clockSkewMs: 0 }],
        jwks: { cooldownMs: 0, maxAgeMs: 0, retryAfterFailureMs: 0 },
        cache: { maxEntries: 2 },
      });
      const [t1, t2, t3] = await Promise.all(["1", "2", "3"].map((jti) => signToken(rsaB, claimsB({ jti }))));
      for (const token of [t1!, t2!, t1!, t3!]) await remote.verify(token, { audience: AUD_X });
      assert.equal(server.requests, 3, "t1 was a hit");
      await remote.verify(t1!, { audience: AUD_X });
      assert.equal(server.requests, 3, "t1 was used more recently than t2, so t2 was evicted");
      await remote.verify(t2!, { audience: AUD_X });
      assert.equal(server.requests, 4);
    } finally {
      await server.close();
    }
  });
});

describe("JWT authenticator: JWKS sources", () => {
  const remoteWith = (server: JwksServer, jwks: JwtAuthenticatorOptions["jwks"]) =>
    createJwtAuthenticator({
      issuers: [{ issuer: ISSUER_B, jwksUrl: server.url, algorithms: ["RS256"], clockSkewMs: 0 }],
      jwks,
    });

  it("an unreachable or failing JWKS refuses tokens, and failed fetches are not retried for a while", async () => {
    const server = await startJwksServer(jwksOf(rsaB));
    try {
      server.serve((response) => {
        response.writeHead(500);
        response.end("down");
      });
      const remote = remoteWith(server, { retryAfterFailureMs: 300 });
      const token = await signToken(rsaB, claimsB());
      const error = await refused(remote.verify(token, { audience: AUD_X }), "jwks-unavailable");
      assert.ok(!String(error.cause).includes(token));
      for (let i = 0; i < 50; i++)
        await refused(remote.verify(token, { audience: AUD_X }), "jwks-unavailable");
      assert.equal(server.requests, 1, "no new attempt within retryAfterFailureMs");
      server.serve(jwksOf(rsaB));
      await new Promise((resolve) => setTimeout(resolve, 350));
      assert.equal((await remote.verify(token, { audience: AUD_X })).issuer, ISSUER_B);
      assert.equal(server.requests, 2);
    } finally {
      await server.close();
    }
  });

  it("a JWKS that does not answer is abandoned after the timeout", async () => {
    const server = await startJwksServer(jwksOf(rsaB));
    try {
      server.serve(() => {
        // Never answers.
      });
      const remote = remoteWith(server, { timeoutMs: 200 });
      const started = performance.now();
      await refused(remote.verify(await signToken(rsaB, claimsB()), { audience: AUD_X }), "jwks-unavailable");
      assert.ok(performance.now() - started < 2_000);
    } finally {
      await server.close();
    }
  });

  it("refuses an oversized, malformed or private remote JWKS, and a redirect", async () => {
    const privateJwk = await exportJWK((await generateKeyPair("RS256", { extractable: true })).privateKey);
    const answers: ((response: import("node:http").ServerResponse) => void)[] = [
      (response) => {
        response.writeHead(200, { "content-type": "application/json" });
        response.end(JSON.stringify({ keys: [rsaB.publicJwk], pad: "x".repeat(600 * 1024) }));
      },
      (response) => {
        response.writeHead(200, { "content-type": "application/json" });
        response.end("{not json");
      },
      (response) => {
        response.writeHead(200, { "content-type": "application/json" });
        response.end(JSON.stringify({ keys: [{ ...privateJwk, kid: "rsa-b-1" }] }));
      },
      (response) => {
        response.writeHead(302, { location: "http://127.0.0.1:1/jwks.json" });
        response.end();
      },
    ];
    for (const answer of answers) {
      const server = await startJwksServer(jwksOf(rsaB));
      try {
        server.serve(answer);
        const remote = remoteWith(server, {});
        await refused(
          remote.verify(await signToken(rsaB, claimsB()), { audience: AUD_X }),
          "jwks-unavailable",
        );
      } finally {
        await server.close();
      }
    }
  });

  it("refuses a JWKS file holding private or symmetric key material, naming the setting only", async () => {
    const { privateKey } = await generateKeyPair("ES256", { extractable: true });
    const privateJwk = await exportJWK(privateKey);
    for (const jwks of [{ keys: [privateJwk] }, { keys: [{ kty: "oct", k: "c2VjcmV0" }] }]) {
      const file = await writeJwksFile(jwks);
      try {
        assert.throws(
          () =>
            createJwtAuthenticator({
              issuers: [{ issuer: ISSUER_A, jwksFile: file.path, algorithms: ["ES256"], clockSkewMs: 0 }],
            }),
          (error: unknown) =>
            isGateError(error, "ERR_CONFIG_INVALID") &&
            error.message.startsWith("issuers[0].jwksFile ") &&
            !error.message.includes(String(privateJwk.d)),
        );
      } finally {
        await file.cleanup();
      }
    }
  });

  it("refuses bad issuer configuration at creation", async () => {
    const base = { issuer: ISSUER_A, jwksFile: jwksFile.path, algorithms: ["RS256"], clockSkewMs: 0 };
    const cases: [string, JwtAuthenticatorOptions][] = [
      ["issuers", { issuers: [] }],
      ["issuers[1].issuer", { issuers: [base, base] }],
      ["issuers[0].issuer", { issuers: [{ ...base, issuer: "urn:tenantgate:api-key" }] }],
      ["issuers[0].issuer", { issuers: [{ ...base, issuer: "" }] }],
      ["issuers[0]", { issuers: [{ ...base, jwksUrl: "https://a.example/jwks" }] }],
      ["issuers[0]", { issuers: [{ ...base, jwksFile: undefined }] }],
      [
        "issuers[0].jwksUrl",
        { issuers: [{ ...base, jwksFile: undefined, jwksUrl: "http://idp.example/jwks" }] },
      ],
      [
        "issuers[0].jwksUrl",
        { issuers: [{ ...base, jwksFile: undefined, jwksUrl: "https://u:p@idp.example/" }] },
      ],
      ["issuers[0].jwksFile", { issuers: [{ ...base, jwksFile: "/nonexistent/jwks.json" }] }],
      ["issuers[0].clockSkewMs", { issuers: [{ ...base, clockSkewMs: 600_000 }] }],
      ["issuers[0].clockSkewMs", { issuers: [{ ...base, clockSkewMs: -1 }] }],
      ["issuers[0].tenantClaim", { issuers: [{ ...base, tenantClaim: "" }] }],
      ["jwks.timeoutMs", { issuers: [base], jwks: { timeoutMs: 0 } }],
      ["jwks.maxAgeMs", { issuers: [base], jwks: { cooldownMs: 10_000, maxAgeMs: 5_000 } }],
    ];
    for (const [setting, config] of cases) {
      assert.throws(
        () => createJwtAuthenticator(config),
        (error: unknown) => isGateError(error, "ERR_CONFIG_INVALID") && error.message.startsWith(setting),
        setting,
      );
    }
    // http is fine to a loopback JWKS (a sidecar, or these tests).
    createJwtAuthenticator({
      issuers: [{ ...base, jwksFile: undefined, jwksUrl: "http://127.0.0.1:9/jwks.json" }],
    });
  });

  it("requires an audience", async () => {
    const token = await signToken(rsa, claimsA());
    await assert.rejects(auth.verify(token, { audience: "" }), (error: unknown) =>
      isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
  });
});
