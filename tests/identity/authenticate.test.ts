import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { digest, mintId } from "../../src/crypto/ids.ts";
import { type GateErrorCode, isGateError } from "../../src/errors.ts";
import {
  type AuthenticateOptions,
  createApiKeyAuthenticator,
  createAuthenticator,
  createFailedAuthLimiter,
  createJwtAuthenticator,
  type DistinctHeaders,
  type JwtAuthenticator,
} from "../../src/identity/index.ts";
import {
  type JwksServer,
  jwksOf,
  makeSigningKey,
  nowSeconds,
  type SigningKey,
  signToken,
  startJwksServer,
} from "../support/token-issuer.ts";

const ISSUER = "https://issuer.example";
const AUD = "https://gateway.example/mcp/x";
const apiKey = `tg_${mintId(32)}`;
const apiKeys = createApiKeyAuthenticator([
  { id: "k1", digest: digest("api-key", apiKey), subject: "robot", tenant: "acme", scopes: ["tools:read"] },
]);

let key: SigningKey;
let server: JwksServer;
let jwt: JwtAuthenticator;

const bearer = (token: string): DistinctHeaders => ({ authorization: [`Bearer ${token}`] });
const request = (overrides: Partial<AuthenticateOptions> = {}): AuthenticateOptions => ({
  audience: AUD,
  requiredScopes: [],
  clientAddress: "192.0.2.10",
  ...overrides,
});
const token = (claims: Record<string, unknown> = {}) =>
  signToken(key, {
    iss: ISSUER,
    sub: "alice",
    aud: AUD,
    exp: nowSeconds() + 300,
    scope: "tools:read",
    ...claims,
  });

async function rejectsWith(promise: Promise<unknown>, code: GateErrorCode, detail?: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isGateError(error, code), `expected ${code}, got ${String(error)}`);
    if (detail !== undefined) assert.equal(error.detail, detail);
    return true;
  });
}

before(async () => {
  key = await makeSigningKey("ES256", "ec-1");
  server = await startJwksServer(jwksOf(key));
  jwt = createJwtAuthenticator({
    issuers: [{ issuer: ISSUER, jwksUrl: server.url, algorithms: ["ES256"], clockSkewMs: 0 }],
  });
});

after(async () => {
  await server.close();
});

describe("authenticate", () => {
  it("sends a token with two dots to the JWT verifier and anything else to API keys", async () => {
    const auth = createAuthenticator({ jwt, apiKeys, anonymous: false });
    const fromJwt = await auth.authenticate(bearer(await token()), request());
    assert.ok(fromJwt !== "anonymous" && fromJwt.kind === "jwt" && fromJwt.subject === "alice");
    const fromKey = await auth.authenticate(bearer(apiKey), request());
    assert.ok(fromKey !== "anonymous" && fromKey.kind === "api-key" && fromKey.subject === "robot");
    await rejectsWith(
      auth.authenticate(bearer(`tg_${mintId(32)}`), request()),
      "ERR_AUTH_INVALID",
      "unknown-api-key",
    );
  });

  it("a JWT with no issuers configured, or an API key with none configured, is invalid", async () => {
    await rejectsWith(
      createAuthenticator({ apiKeys, anonymous: false }).authenticate(bearer(await token()), request()),
      "ERR_AUTH_INVALID",
      "no-jwt-issuers",
    );
    await rejectsWith(
      createAuthenticator({ jwt, anonymous: false }).authenticate(bearer(apiKey), request()),
      "ERR_AUTH_INVALID",
      "unknown-api-key",
    );
  });

  it("no credential: anonymous when enabled, else ERR_AUTH_REQUIRED", async () => {
    assert.equal(
      await createAuthenticator({ jwt, anonymous: true }).authenticate({}, request()),
      "anonymous",
    );
    await rejectsWith(
      createAuthenticator({ jwt, anonymous: false }).authenticate({}, request()),
      "ERR_AUTH_REQUIRED",
    );
  });

  it("anonymous access never reaches an upstream that requires scopes", async () => {
    const auth = createAuthenticator({ jwt, anonymous: true });
    await rejectsWith(
      auth.authenticate({}, request({ requiredScopes: ["tools:read"] })),
      "ERR_AUTH_REQUIRED",
    );
  });

  it("a bad credential is refused even when anonymous access is on: it never falls back to anonymous", async () => {
    const auth = createAuthenticator({ jwt, apiKeys, anonymous: true });
    await rejectsWith(auth.authenticate(bearer("not-a-key"), request()), "ERR_AUTH_INVALID");
    await rejectsWith(
      auth.authenticate(bearer(await token({ aud: "elsewhere" })), request()),
      "ERR_AUTH_INVALID",
    );
    await rejectsWith(
      auth.authenticate({ authorization: ["Basic dXNlcjpwYXNz"] }, request()),
      "ERR_AUTH_INVALID",
    );
    await rejectsWith(
      auth.authenticate({ authorization: ["Bearer a", "Bearer b"] }, request()),
      "ERR_AUTH_INVALID",
    );
  });

  it("A1 a token for upstream X is refused at upstream Y", async () => {
    const auth = createAuthenticator({ jwt, anonymous: false });
    const forX = await token({ aud: AUD });
    await auth.authenticate(bearer(forX), request());
    await rejectsWith(
      auth.authenticate(bearer(forX), request({ audience: "https://gateway.example/mcp/y" })),
      "ERR_AUTH_INVALID",
      "audience",
    );
  });

  it("missing scopes are ERR_INSUFFICIENT_SCOPE naming them; granted scopes pass", async () => {
    const auth = createAuthenticator({ jwt, apiKeys, anonymous: false });
    const jwtToken = await token({ scope: "tools:read files:read" });
    await auth.authenticate(bearer(jwtToken), request({ requiredScopes: ["tools:read", "files:read"] }));
    await rejectsWith(
      auth.authenticate(bearer(jwtToken), request({ requiredScopes: ["tools:read", "tools:call", "admin"] })),
      "ERR_INSUFFICIENT_SCOPE",
      "missing scopes: tools:call admin",
    );
    await rejectsWith(
      auth.authenticate(bearer(apiKey), request({ requiredScopes: ["tools:call"] })),
      "ERR_INSUFFICIENT_SCOPE",
      "missing scopes: tools:call",
    );
  });

  it("refuses to be created with no way to authenticate", () => {
    assert.throws(
      () => createAuthenticator({ anonymous: false }),
      (error: unknown) => isGateError(error, "ERR_CONFIG_INVALID"),
    );
  });
});

describe("authenticate with the failed-auth limiter", () => {
  it("L2 failed-auth limiting is consulted before signature verification", async () => {
    const fresh = await startJwksServer(jwksOf(key));
    try {
      const limiter = createFailedAuthLimiter({ maxFailures: 3, windowMs: 60_000 });
      const auth = createAuthenticator({
        jwt: createJwtAuthenticator({
          issuers: [{ issuer: ISSUER, jwksUrl: fresh.url, algorithms: ["ES256"], clockSkewMs: 0 }],
        }),
        apiKeys,
        anonymous: false,
        failedAuthLimiter: limiter,
      });
      const attacker = request({ clientAddress: "203.0.113.5" });
      // Guessed API keys count (each costs a lookup, and guessing is what the limit slows): no key
      // fetched yet.
      for (let i = 0; i < 3; i++) {
        await rejectsWith(auth.authenticate(bearer(`tg_${mintId(32)}`), attacker), "ERR_AUTH_INVALID");
      }
      assert.equal(fresh.requests, 0);
      // Now even a valid, well-formed token from that address costs no key fetch, no signature check.
      const valid = await token();
      for (let i = 0; i < 100; i++) {
        await rejectsWith(
          auth.authenticate(bearer(valid), attacker),
          "ERR_AUTH_RATE_LIMITED",
          "failed-auth-limit",
        );
        await rejectsWith(auth.authenticate(bearer(apiKey), attacker), "ERR_AUTH_RATE_LIMITED");
      }
      assert.equal(fresh.requests, 0, "the JWKS endpoint was never contacted for the limited address");
      // Another address is unaffected.
      const principal = await auth.authenticate(bearer(valid), request({ clientAddress: "198.51.100.7" }));
      assert.ok(principal !== "anonymous" && principal.subject === "alice");
      assert.equal(fresh.requests, 1);
      // A request without a credential is not a failed authentication, and is not rate limited.
      await rejectsWith(auth.authenticate({}, attacker), "ERR_AUTH_REQUIRED");
    } finally {
      await fresh.close();
    }
  });

  it("refusals decided by the cheap checks are not counted, so a shared address is not locked out", async () => {
    const limiter = createFailedAuthLimiter({ maxFailures: 2, windowMs: 60_000 });
    const auth = createAuthenticator({ jwt, anonymous: true, failedAuthLimiter: limiter });
    const from = request({ clientAddress: "2001:db8:9:9::1" });
    for (let i = 0; i < 10; i++) {
      await rejectsWith(auth.authenticate({ authorization: ["Basic x"] }, from), "ERR_AUTH_INVALID");
      await rejectsWith(
        auth.authenticate({ authorization: ["Bearer a", "Bearer b"] }, from),
        "ERR_AUTH_INVALID",
      );
      await rejectsWith(auth.authenticate(bearer("a.b.c"), from), "ERR_AUTH_INVALID");
    }
    // Same /64, a neighbour behind the same address: still served.
    const principal = await auth.authenticate(
      bearer(await token()),
      request({ clientAddress: "2001:db8:9:9::2" }),
    );
    assert.ok(principal !== "anonymous");
  });

  it("L2 a token already verified for the audience passes even from a limited address", async () => {
    const limiter = createFailedAuthLimiter({ maxFailures: 1, windowMs: 60_000 });
    const auth = createAuthenticator({ jwt, apiKeys, anonymous: false, failedAuthLimiter: limiter });
    const valid = await token();
    const shared = request({ clientAddress: "192.0.2.77" });
    assert.ok((await auth.authenticate(bearer(valid), shared)) !== "anonymous");
    await rejectsWith(auth.authenticate(bearer(`tg_${mintId(32)}`), shared), "ERR_AUTH_INVALID");
    // The address is now limited for new work...
    await rejectsWith(auth.authenticate(bearer(`tg_${mintId(32)}`), shared), "ERR_AUTH_RATE_LIMITED");
    // ...but the known-good token costs only a digest and is served.
    assert.ok((await auth.authenticate(bearer(valid), shared)) !== "anonymous");
  });

  it("an unavailable JWKS and missing scopes are not held against the client", async () => {
    const down = await startJwksServer(jwksOf(key));
    down.serve((response) => {
      response.writeHead(503);
      response.end();
    });
    try {
      const limiter = createFailedAuthLimiter({ maxFailures: 2, windowMs: 60_000 });
      const auth = createAuthenticator({
        jwt: createJwtAuthenticator({
          issuers: [{ issuer: ISSUER, jwksUrl: down.url, algorithms: ["ES256"], clockSkewMs: 0 }],
          jwks: { retryAfterFailureMs: 0 },
        }),
        apiKeys,
        anonymous: false,
        failedAuthLimiter: limiter,
      });
      const from = request({ clientAddress: "192.0.2.77" });
      for (let i = 0; i < 5; i++) {
        await rejectsWith(
          auth.authenticate(bearer(await token()), from),
          "ERR_AUTH_INVALID",
          "jwks-unavailable",
        );
        await rejectsWith(
          auth.authenticate(bearer(apiKey), { ...from, requiredScopes: ["admin"] }),
          "ERR_INSUFFICIENT_SCOPE",
        );
      }
      assert.equal(limiter.check("192.0.2.77"), true);
    } finally {
      await down.close();
    }
  });
});
