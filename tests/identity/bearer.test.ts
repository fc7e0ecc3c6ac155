import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import * as identity from "../../src/identity/index.ts";
import { type DistinctHeaders, extractBearerToken, findBearerToken } from "../../src/identity/index.ts";

const TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";

describe("bearer extraction", () => {
  it("accepts exactly one `Bearer <token>`, the scheme in any case", () => {
    for (const value of [`Bearer ${TOKEN}`, `bearer ${TOKEN}`, `BEARER ${TOKEN}`, `Bearer  ${TOKEN}`]) {
      assert.equal(extractBearerToken({ authorization: [value] }), TOKEN, value);
    }
    assert.equal(extractBearerToken({ authorization: ["Bearer tg_abc-_~+/=!"] }), "tg_abc-_~+/=!");
    assert.equal(extractBearerToken({ Authorization: [`Bearer ${TOKEN}`] }), TOKEN);
  });

  it("no Authorization header is ERR_AUTH_REQUIRED, or undefined from findBearerToken", () => {
    for (const headers of [{}, { authorization: undefined }, { authorization: [] }, { cookie: ["a=b"] }]) {
      assert.throws(
        () => extractBearerToken(headers as DistinctHeaders),
        (error: unknown) => isGateError(error, "ERR_AUTH_REQUIRED"),
      );
      assert.equal(findBearerToken(headers as DistinctHeaders), undefined);
    }
  });

  const malformed: [string, DistinctHeaders, string][] = [
    [
      "two Authorization headers",
      { authorization: [`Bearer ${TOKEN}`, `Bearer ${TOKEN}`] },
      "duplicate-authorization",
    ],
    [
      "two spellings of the header name",
      { authorization: [`Bearer ${TOKEN}`], Authorization: ["Bearer other"] },
      "duplicate-authorization",
    ],
    ["Basic", { authorization: ["Basic dXNlcjpwYXNz"] }, "scheme"],
    ["another scheme", { authorization: [`DPoP ${TOKEN}`] }, "scheme"],
    ["token with spaces", { authorization: ["Bearer abc def"] }, "malformed-bearer"],
    ["a tab as separator", { authorization: [`Bearer\t${TOKEN}`] }, "malformed-bearer"],
    ["scheme only", { authorization: ["Bearer"] }, "malformed-bearer"],
    ["scheme and space only", { authorization: ["Bearer "] }, "malformed-bearer"],
    ["empty value", { authorization: [""] }, "malformed-bearer"],
    ["leading space", { authorization: [` Bearer ${TOKEN}`] }, "malformed-bearer"],
    ["non-ASCII token", { authorization: ["Bearer tökén"] }, "malformed-bearer"],
    ["control character", { authorization: ["Bearer abc\u0001def"] }, "malformed-bearer"],
    ["comma-joined credentials", { authorization: [`Bearer ${TOKEN}, Bearer ${TOKEN}`] }, "malformed-bearer"],
    ["oversized", { authorization: [`Bearer ${"a".repeat(8 * 1024 + 1)}`] }, "oversized"],
    ["oversized header", { authorization: [`Bearer ${"a".repeat(64 * 1024)}`] }, "oversized"],
  ];
  for (const [name, headers, detail] of malformed) {
    it(`refuses ${name} as ERR_AUTH_INVALID (${detail})`, () => {
      for (const extract of [extractBearerToken, findBearerToken]) {
        assert.throws(
          () => extract(headers),
          (error: unknown) => isGateError(error, "ERR_AUTH_INVALID") && error.detail === detail,
        );
      }
    });
  }

  it("accepts a token of exactly 8 KiB", () => {
    const token = "a".repeat(8 * 1024);
    assert.equal(extractBearerToken({ authorization: [`Bearer ${token}`] }), token);
  });

  it("two Authorization headers on a real request are seen through headersDistinct", async () => {
    const server = createServer((req, res) => {
      let outcome: string;
      try {
        outcome = extractBearerToken(req.headersDistinct);
      } catch (error) {
        outcome = isGateError(error) ? `${error.code}:${error.detail}` : "other";
      }
      // Why headersDistinct: `headers` silently keeps only the first Authorization header.
      res.end(`${outcome} ${req.headers.authorization}`);
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    try {
      const send = async (rawHeaders: string[]) => {
        const req = request({
          host: "127.0.0.1",
          port,
          path: "/",
          headers: ["Host", "localhost", ...rawHeaders],
        });
        req.end();
        const [res] = (await once(req, "response")) as [import("node:http").IncomingMessage];
        let body = "";
        for await (const chunk of res) body += chunk;
        return body;
      };
      assert.equal(await send(["Authorization", `Bearer ${TOKEN}`]), `${TOKEN} Bearer ${TOKEN}`);
      assert.equal(
        await send(["Authorization", `Bearer ${TOKEN}`, "Authorization", "Bearer other"]),
        `ERR_AUTH_INVALID:duplicate-authorization Bearer ${TOKEN}`,
      );
    } finally {
      server.close();
    }
  });

  it("headers only: the identity layer offers no way to read a token from a query string (T4)", () => {
    // Every export that takes request input takes headers; none is named for URLs or queries.
    for (const name of Object.keys(identity)) {
      assert.doesNotMatch(name, /query|url|search|param/i, name);
    }
    // A token in the URL of a request is simply not a credential.
    assert.equal(findBearerToken({ ":path": [`/mcp?access_token=${TOKEN}`] }), undefined);
  });
});
