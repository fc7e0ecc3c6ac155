import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import type { JsonRpcMessage } from "../../src/gateway/json-rpc-body.ts";
import {
  checkModernRequest,
  decodeMirrored,
  PROTOCOL_VERSION_META_KEY,
} from "../../src/gateway/modern-request.ts";

const VERSION = "2026-07-28";
const meta = { [PROTOCOL_VERSION_META_KEY]: VERSION };

function request(method: string, params: Record<string, unknown> = {}): JsonRpcMessage {
  return { kind: "request", id: 1, method, params: { ...params, _meta: meta } };
}

function headers(values: Record<string, string | string[]>): Record<string, string[]> {
  return Object.fromEntries(Object.entries(values).map(([k, v]) => [k, Array.isArray(v) ? v : [v]]));
}

const refusedWith = (detail: string) => (error: unknown) =>
  isGateError(error, "ERR_HEADER_MISMATCH") && error.detail === detail;

describe("decodeMirrored (2026-07-28 Value Encoding)", () => {
  it("reads plain visible ASCII as it is and base64 sentinels as UTF-8", () => {
    assert.equal(decodeMirrored("get_weather"), "get_weather");
    assert.equal(decodeMirrored("=?base64?SGVsbG8sIOS4lueVjA==?="), "Hello, 世界");
    assert.equal(decodeMirrored("=?base64?IHBhZGRlZCA=?="), " padded ");
  });

  it("refuses malformed values: control characters, bad base64, non-canonical base64, bare sentinel prefix", () => {
    for (const value of [
      "",
      "a\nb",
      "tab\tend\t",
      " lead",
      "=?base64?***?=",
      "=?base64?SGVsbG8?=",
      "=?base64?x",
      "=?base64?/w==?=",
    ]) {
      assert.equal(decodeMirrored(value), null, JSON.stringify(value));
    }
  });
});

describe("checkModernRequest (2026-07-28 Server Validation)", () => {
  it("passes agreeing headers and forwards exactly the values it checked", () => {
    const checked = checkModernRequest(
      headers({
        "mcp-method": "tools/call",
        "mcp-name": "=?base64?ZWNobw==?=",
        "mcp-param-region": "us-west1",
      }),
      request("tools/call", { name: "echo", arguments: { region: "us-west1" } }),
      VERSION,
    );
    assert.deepEqual(checked.mirroredHeaders, {
      "mcp-method": "tools/call",
      "mcp-name": "=?base64?ZWNobw==?=",
      "mcp-param-region": "us-west1",
    });
  });

  it("refuses a method header that disagrees with the body, or is missing on a request", () => {
    assert.throws(
      () =>
        checkModernRequest(
          headers({ "mcp-method": "tools/list" }),
          request("tools/call", { name: "x" }),
          VERSION,
        ),
      refusedWith("mcp-method"),
    );
    assert.throws(
      () => checkModernRequest(headers({}), request("tools/list"), VERSION),
      refusedWith("mcp-method-missing"),
    );
  });

  it("refuses a name header that disagrees with params.name / params.uri, or is missing where required", () => {
    assert.throws(
      () =>
        checkModernRequest(
          headers({ "mcp-method": "tools/call", "mcp-name": "harmless" }),
          request("tools/call", { name: "delete_everything" }),
          VERSION,
        ),
      refusedWith("mcp-name"),
    );
    assert.throws(
      () =>
        checkModernRequest(
          headers({ "mcp-method": "resources/read", "mcp-name": "file:///a" }),
          request("resources/read", { uri: "file:///b" }),
          VERSION,
        ),
      refusedWith("mcp-name"),
    );
    assert.throws(
      () =>
        checkModernRequest(
          headers({ "mcp-method": "prompts/get" }),
          request("prompts/get", { name: "p" }),
          VERSION,
        ),
      refusedWith("mcp-name-missing"),
    );
  });

  it("refuses a body whose _meta protocol version is not the header's", () => {
    const message: JsonRpcMessage = {
      kind: "request",
      id: 1,
      method: "tools/list",
      params: { _meta: { [PROTOCOL_VERSION_META_KEY]: "2025-11-25" } },
    };
    assert.throws(
      () => checkModernRequest(headers({ "mcp-method": "tools/list" }), message, VERSION),
      refusedWith("protocol-version-meta"),
    );
    const bare: JsonRpcMessage = { kind: "request", id: 1, method: "tools/list", params: {} };
    assert.throws(
      () => checkModernRequest(headers({ "mcp-method": "tools/list" }), bare, VERSION),
      refusedWith("protocol-version-meta"),
    );
  });

  it("refuses repeated or malformed mirrored headers", () => {
    assert.throws(
      () =>
        checkModernRequest(
          headers({ "mcp-method": ["tools/list", "tools/list"] }),
          request("tools/list"),
          VERSION,
        ),
      refusedWith("mcp-method-repeated"),
    );
    assert.throws(
      () =>
        checkModernRequest(
          headers({ "mcp-method": "tools/list", "mcp-param-x": "=?base64?not valid?=" }),
          request("tools/list"),
          VERSION,
        ),
      refusedWith("mcp-param"),
    );
  });

  it("refuses a JSON-RPC response sent to a modern endpoint", () => {
    assert.throws(
      () => checkModernRequest(headers({}), { kind: "response", id: 1 }, VERSION),
      (error: unknown) => isGateError(error, "ERR_REQUEST_INVALID"),
    );
  });
});
