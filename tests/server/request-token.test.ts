/**
 * Reading poll and download tokens from requests: headers only (THREATS T4).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { readRequestToken } from "../../src/server/request-token.ts";

const TOKEN = "kq3vN0m8JbCw1xYz5tUe7rAa9sDf2gHh";
const request = (url: string, headers: Record<string, string[]> = {}) => ({ url, headersDistinct: headers });
const refusedQuery = (error: unknown) =>
  isGateError(error, "ERR_REQUEST_INVALID") &&
  error.detail === "query-string" &&
  !error.message.includes(TOKEN);

describe("readRequestToken", () => {
  it("T4 a token in a query string is refused, whatever it is called and wherever the header token is", () => {
    for (const query of [
      `token=${TOKEN}`,
      `poll_token=${TOKEN}`,
      `pollToken=${TOKEN}`,
      `access_token=${TOKEN}`,
      `download-token=${TOKEN}`,
      `ACCESS_TOKEN=${TOKEN}`,
      `authorization=Bearer%20${TOKEN}`,
      `page=2&token=${TOKEN}`,
      `tenantgate-poll-token=${TOKEN}`,
      "token=",
      `%74oken=${TOKEN}`,
    ]) {
      for (const header of ["authorization", "Tenantgate-Poll-Token"]) {
        assert.throws(
          () => readRequestToken(request(`/api/progress/t1?${query}`), { header }),
          refusedQuery,
          query,
        );
        // Also when a proper header is there: the query must not be read around.
        const headers = { authorization: [`Bearer ${TOKEN}`], "tenantgate-poll-token": [TOKEN] };
        assert.throws(
          () => readRequestToken(request(`/p?${query}`, headers), { header }),
          refusedQuery,
          query,
        );
      }
    }
  });

  it("T4 tokens are read from Authorization: Bearer or from a dedicated header", () => {
    assert.equal(readRequestToken(request("/p", { authorization: [`Bearer ${TOKEN}`] })), TOKEN);
    assert.equal(readRequestToken(request("/p?page=2", { authorization: [`bearer ${TOKEN}`] })), TOKEN);
    assert.equal(
      readRequestToken(request("/p", { "tenantgate-poll-token": [TOKEN] }), {
        header: "Tenantgate-Poll-Token",
      }),
      TOKEN,
    );
    assert.equal(readRequestToken(request("/p")), undefined);
    assert.equal(readRequestToken(request("/p"), { header: "Tenantgate-Poll-Token" }), undefined);
  });

  it("a header given twice, a malformed value or a bad header name is refused", () => {
    const invalid = (error: unknown) => isGateError(error, "ERR_REQUEST_INVALID");
    const options = { header: "Tenantgate-Poll-Token" };
    assert.throws(
      () => readRequestToken(request("/p", { "tenantgate-poll-token": [TOKEN, TOKEN] }), options),
      invalid,
    );
    assert.throws(
      () =>
        readRequestToken(
          request("/p", { "Tenantgate-Poll-Token": [TOKEN], "tenantgate-poll-token": [TOKEN] }),
          options,
        ),
      invalid,
    );
    assert.throws(
      () => readRequestToken(request("/p", { "tenantgate-poll-token": ["a b"] }), options),
      invalid,
    );
    assert.throws(() => readRequestToken(request("/p", { "tenantgate-poll-token": [""] }), options), invalid);
    assert.throws(
      () => readRequestToken(request("/p", { authorization: [`Bearer ${TOKEN}`, `Bearer ${TOKEN}`] })),
      (error: unknown) => isGateError(error, "ERR_AUTH_INVALID"),
    );
    assert.throws(
      () => readRequestToken(request("/p", { authorization: [`Basic ${TOKEN}`] })),
      (error: unknown) => isGateError(error, "ERR_AUTH_INVALID"),
    );
    assert.throws(
      () => readRequestToken(request("/p"), { header: "bad header" }),
      (error: unknown) => isGateError(error, "ERR_ARGUMENT_INVALID"),
    );
  });
});
