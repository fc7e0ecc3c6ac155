/**
 * Findings of the security review of the library for server authors (assertion signer and verifier,
 * the SDK listener, signed uploads, single-use codes, safeFetch), plus the checks the review ran that
 * found nothing to fix, kept so a later change cannot quietly undo them.
 */
import assert from "node:assert/strict";
import { createPrivateKey } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { after, before, describe, it } from "node:test";
import { compactVerify, createLocalJWKSet, decodeJwt, type JSONWebKeySet, jwtVerify, SignJWT } from "jose";
import {
  ASSERTION_TYPE,
  type AssertionSigner,
  createAssertionSigner,
} from "../../src/crypto/assertion-signer.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { GateError, isGateError } from "../../src/errors.ts";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";
import { parseAllowances, vetAddress } from "../../src/server/address-policy.ts";
import { createAssertionVerifier } from "../../src/server/assertion-verifier.ts";
import {
  createNodeMcpListener,
  fromAssertion,
  type McpAuthInfo,
  principalOf,
} from "../../src/server/mcp-node-listener.ts";
import { safeFetch } from "../../src/server/safe-fetch.ts";

const GATEWAY = "https://gate.example.com";
const UPSTREAM = "https://files.internal.example/mcp";

const alice = makePrincipal({
  kind: "jwt",
  issuer: "https://idp.example.com",
  subject: "alice",
  tenant: "acme",
  scopes: [],
  expiresAt: null,
});

/** What `/.well-known/jwks.json` would serve, in the shape the verifier takes. */
const publishedKeys = (signer: AssertionSigner) => ({ keys: signer.jwks().keys.map((key) => ({ ...key })) });

/** The `ctx` a v2 SDK tool handler gets, as far as principalOf reads it. */
const ctxWith = (authInfo: McpAuthInfo | { extra?: unknown }) => ({ http: { authInfo } });

interface RawAnswer {
  readonly head: string;
  readonly closedByServer: boolean;
  /** Bytes the server's socket read for this request (body included). */
  readonly serverBytesRead: number;
}

/**
 * Sends a request declaring a large body and keeps streaming it until the server answers and closes
 * the connection, or `sendBytes` went out. Reports what the server read off the wire.
 */
async function streamLargeBody(
  server: Server,
  readBytes: () => number,
  headers: string,
  sendBytes: number,
): Promise<RawAnswer> {
  const { port } = server.address() as AddressInfo;
  const socket = connect(port, "127.0.0.1");
  let head = "";
  let closedByServer = false;
  socket.on("data", (data) => {
    head += data.toString("latin1");
  });
  socket.on("end", () => {
    closedByServer = true;
  });
  socket.on("close", () => {
    closedByServer = true;
  });
  socket.on("error", () => undefined);
  socket.write(`POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${sendBytes}\r\n${headers}\r\n`);
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  for (let sent = 0; sent < sendBytes && !closedByServer; sent += chunk.length) {
    socket.write(chunk);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  // Long enough for a server that keeps reading to show it.
  await new Promise((resolve) => setTimeout(resolve, 300));
  socket.destroy();
  return { head: head.split("\r\n\r\n")[0] ?? "", closedByServer, serverBytesRead: readBytes() };
}

describe("review: principalOf trusts only what the listener attached", () => {
  it("a principal-shaped object in authInfo.extra that the listener did not put there is refused", () => {
    // What a client-controlled claim set spread into `extra` by some other auth middleware looks like.
    const forged = {
      kind: "jwt",
      issuer: "https://idp.example.com",
      subject: "victim",
      tenant: "victim-tenant",
      scopes: [],
      expiresAt: null,
    };
    for (const principal of [forged, makePrincipal(forged as Principal)]) {
      assert.throws(
        () => principalOf(ctxWith({ extra: { "tenantgate.principal": principal } })),
        (error: unknown) => isGateError(error, "ERR_AUTH_REQUIRED"),
      );
    }
  });

  it("the principal the listener authenticated is what principalOf returns in the handler", async () => {
    const seen: Principal[] = [];
    const listener = createNodeMcpListener(
      {
        async fetch(_request, options) {
          seen.push(principalOf(ctxWith(options?.authInfo ?? {})));
          return new Response("{}", { headers: { "content-type": "application/json" } });
        },
      },
      { authenticate: async () => alice },
    );
    const server = createServer(listener);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const answer = await fetch(`http://127.0.0.1:${port}/mcp`, { method: "POST", body: "{}" });
      assert.equal(answer.status, 200);
      assert.deepEqual(seen, [alice]);
    } finally {
      server.close();
    }
  });
});

describe("review: the SDK listener keeps credentials out of tool code", () => {
  it("the request the SDK (and ctx.http.req) sees carries neither the bearer token nor the assertion", async () => {
    const seen: Headers[] = [];
    const listener = createNodeMcpListener(
      {
        async fetch(request) {
          seen.push(request.headers);
          return new Response("{}", { headers: { "content-type": "application/json" } });
        },
      },
      { authenticate: async () => alice },
    );
    const server = createServer(listener);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const answer = await fetch(`http://127.0.0.1:${port}/mcp`, {
        method: "POST",
        headers: {
          authorization: "Bearer secret-user-token",
          "tenantgate-assertion": "header.payload.signature",
          "content-type": "application/json",
          "mcp-protocol-version": "2026-07-28",
        },
        body: "{}",
      });
      assert.equal(answer.status, 200);
      const [headers] = seen;
      assert.ok(headers);
      assert.equal(headers.get("authorization"), null);
      assert.equal(headers.get("tenantgate-assertion"), null);
      // Everything else the SDK needs still arrives.
      assert.equal(headers.get("mcp-protocol-version"), "2026-07-28");
      assert.equal(headers.get("content-type"), "application/json");
    } finally {
      server.close();
    }
  });
});

describe("review: the SDK listener stops reading a body it refuses", () => {
  let server: Server;
  let lastSocketBytes = 0;
  let handlerCalls = 0;
  before(async () => {
    const listener = createNodeMcpListener(
      {
        async fetch() {
          handlerCalls += 1;
          return new Response("{}");
        },
      },
      {
        authenticate: async (request: IncomingMessage) => {
          if (request.headers["x-test-caller"] !== "alice") {
            throw new GateError("ERR_AUTH_REQUIRED", "no assertion");
          }
          return alice;
        },
        maxBodyBytes: 1024,
      },
    );
    server = createServer((request, response) => {
      const socket = request.socket;
      lastSocketBytes = 0;
      const sample = setInterval(() => {
        lastSocketBytes = socket.bytesRead;
      }, 20);
      socket.once("close", () => {
        lastSocketBytes = socket.bytesRead;
        clearInterval(sample);
      });
      listener(request, response);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });

  const sendBytes = 8 * 1024 * 1024;

  it("an unauthenticated request is answered 401 and its body is not read to the end", async () => {
    const answer = await streamLargeBody(server, () => lastSocketBytes, "", sendBytes);
    assert.match(answer.head, /^HTTP\/1\.1 401 /);
    assert.match(answer.head, /\r\nconnection: close/i);
    assert.ok(answer.closedByServer, "the server closes the connection");
    assert.ok(
      answer.serverBytesRead < 1024 * 1024,
      `read ${answer.serverBytesRead} bytes of an unauthenticated body`,
    );
    assert.equal(handlerCalls, 0);
  });

  it("a body over maxBodyBytes is 413 and the connection is closed, not left hanging", async () => {
    const answer = await streamLargeBody(
      server,
      () => lastSocketBytes,
      "x-test-caller: alice\r\n",
      sendBytes,
    );
    assert.match(answer.head, /^HTTP\/1\.1 413 /);
    assert.match(answer.head, /\r\nconnection: close/i);
    assert.ok(answer.closedByServer, "the server closes the connection");
    assert.ok(answer.serverBytesRead < 1024 * 1024, `read ${answer.serverBytesRead} bytes past the limit`);
    assert.equal(handlerCalls, 0);
  });
});

describe("review: assertion verifier options", () => {
  it("a clock tolerance that would stretch an assertion past its lifetime is an argument error", () => {
    const keyring = Keyring.ephemeral();
    const jwks = publishedKeys(createAssertionSigner({ keyring, issuer: GATEWAY }));
    for (const clockToleranceSeconds of [Number.POSITIVE_INFINITY, Number.NaN, -1, 61, 3600]) {
      assert.throws(
        () => createAssertionVerifier({ issuer: GATEWAY, audience: UPSTREAM, jwks, clockToleranceSeconds }),
        (error: unknown) => isGateError(error, "ERR_ARGUMENT_INVALID"),
        String(clockToleranceSeconds),
      );
    }
    for (const clockToleranceSeconds of [0, 5, 60]) {
      createAssertionVerifier({ issuer: GATEWAY, audience: UPSTREAM, jwks, clockToleranceSeconds });
    }
  });

  it("an hour-old assertion is refused at the largest tolerance allowed", async () => {
    const keyring = Keyring.ephemeral();
    const hourAgo = Date.now() - 3600_000;
    const signer = createAssertionSigner({ keyring, issuer: GATEWAY, now: () => hourAgo });
    const verifier = createAssertionVerifier({
      issuer: GATEWAY,
      audience: UPSTREAM,
      jwks: publishedKeys(signer),
      clockToleranceSeconds: 60,
    });
    const token = await signer.sign(alice, { audience: UPSTREAM });
    await assert.rejects(verifier.verify(token), (error: unknown) => isGateError(error, "ERR_AUTH_INVALID"));
  });

  it("two assertion headers are refused even when both are valid (one header, one value)", async () => {
    const keyring = Keyring.ephemeral();
    const signer = createAssertionSigner({ keyring, issuer: GATEWAY });
    const verify = fromAssertion(
      createAssertionVerifier({ issuer: GATEWAY, audience: UPSTREAM, jwks: publishedKeys(signer) }),
    );
    const token = await signer.sign(alice, { audience: UPSTREAM });
    const request = {
      headersDistinct: { "tenantgate-assertion": [token, token] },
    } as unknown as IncomingMessage;
    await assert.rejects(verify(request), (error: unknown) => isGateError(error, "ERR_AUTH_INVALID"));
  });
});

describe("review: the directly built assertion is the JWS jose would build", () => {
  it("byte for byte: re-signing its header and claims with jose under the same derived key gives the same token", async () => {
    const keyring = Keyring.ephemeral();
    const signer = createAssertionSigner({ keyring, issuer: GATEWAY });
    // Claim values that JSON must escape; none may reach the header or break the serialisation.
    const odd = makePrincipal({
      kind: "jwt",
      issuer: 'https://idp.example.com/"},"alg":"none',
      subject: 'a"b\\c</script>\u2028\u00e9\u{1F600}.x.y',
      tenant: "t.e.n.a.n.t",
      scopes: [],
      expiresAt: null,
    });
    const token = await signer.sign(odd, { audience: UPSTREAM });
    const parts = token.split(".");
    assert.equal(parts.length, 3);
    for (const part of parts) assert.match(part, /^[A-Za-z0-9_-]+$/, "base64url without padding");
    const header = JSON.parse(Buffer.from(parts[0] ?? "", "base64url").toString("utf8")) as Record<
      string,
      unknown
    >;
    assert.deepEqual(header, { alg: "EdDSA", typ: ASSERTION_TYPE, kid: signer.activeKid });

    const claims = decodeJwt(token);
    assert.equal(claims.sub, odd.subject);
    assert.equal(claims["principal_iss"], odd.issuer);
    assert.equal(typeof claims.aud, "string");
    assert.ok(Number.isInteger(claims.iat) && Number.isInteger(claims.exp));

    // Ed25519 signatures are deterministic: the same key over the same input gives the same bytes.
    const seed = keyring.purposeKey("assertion-signing");
    const privateKey = createPrivateKey({
      key: Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), seed]),
      format: "der",
      type: "pkcs8",
    });
    const { iss, aud, sub, jti, iat, exp, ...rest } = claims;
    const rebuilt = await new SignJWT(rest)
      .setProtectedHeader({ alg: "EdDSA", typ: ASSERTION_TYPE, kid: signer.activeKid })
      .setIssuer(String(iss))
      .setAudience(String(aud))
      .setSubject(String(sub))
      .setJti(String(jti))
      .setIssuedAt(Number(iat))
      .setExpirationTime(Number(exp))
      .sign(privateKey);
    assert.equal(rebuilt, token);

    const jwks = createLocalJWKSet(signer.jwks() as unknown as JSONWebKeySet);
    await compactVerify(token, jwks, { algorithms: ["EdDSA"] });
    const { payload } = await jwtVerify(token, jwks, {
      issuer: GATEWAY,
      audience: UPSTREAM,
      typ: ASSERTION_TYPE,
      algorithms: ["EdDSA"],
    });
    assert.equal(payload.sub, odd.subject);
    const verified = await createAssertionVerifier({
      issuer: GATEWAY,
      audience: UPSTREAM,
      jwks: publishedKeys(signer),
    }).verify(token);
    assert.equal(verified.subject, odd.subject);
    assert.equal(verified.issuer, odd.issuer);
  });
});

describe("review: safeFetch", () => {
  it("credential endpoints of cloud platforms stay refused under an intranet allowance", () => {
    const allowances = parseAllowances(["169.254.0.0/16", "fd00::/8", "0.0.0.0/0"]);
    for (const address of [
      "169.254.170.23", // EKS Pod Identity Agent (IAM credentials)
      "fd00:ec2::23", // the same over IPv6
      "::ffff:169.254.170.23",
      "169.254.0.23", // Tencent Cloud metadata
    ]) {
      const verdict = vetAddress(address, allowances);
      assert.equal(verdict.allowed, false, address);
      assert.equal(verdict.allowed === false && verdict.reason, "metadata", address);
    }
    // The allowance still opens the rest of the range it names.
    assert.equal(vetAddress("169.254.10.10", allowances).allowed, true);
  });

  it("HEAD on a resource larger than maxBytes answers: no body is read, so the declared length is no bound", async () => {
    const server = createServer((_request, response) => {
      response.writeHead(200, { "content-length": String(64 * 1024 * 1024), "content-type": "text/plain" });
      response.end();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const url = `http://127.0.0.1:${port}/big`;
      const policy = { allowAddresses: ["127.0.0.1"], allowedPorts: [port], maxBytes: 1024 };
      const head = await safeFetch(url, policy, { method: "HEAD" });
      assert.equal(head.status, 200);
      assert.equal(head.headers["content-length"], String(64 * 1024 * 1024));
      assert.equal(head.body.length, 0);
      // GET of the same resource is still refused before reading.
      await assert.rejects(safeFetch(url, policy), (error: unknown) =>
        isGateError(error, "ERR_FETCH_TOO_LARGE"),
      );
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});
