/**
 * The message translation behind `stdio.modern: "per-principal"` (src/upstreams/stdio-modern.ts):
 * what a 2025 stdio server receives for a modern request, and what the modern client gets back.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { clientAnswer, serverRequest } from "../../src/upstreams/stdio-modern.ts";

describe("stdio modern translation", () => {
  it("a cacheable result is never public, whatever a 2025 server wrote", () => {
    const answer = JSON.parse(
      clientAnswer(
        JSON.stringify({ jsonrpc: "2.0", id: 4, result: { tools: [], cacheScope: "public", ttlMs: 60_000 } }),
        "client-1",
        "tools/list",
      ),
    );
    assert.deepEqual(answer, {
      jsonrpc: "2.0",
      id: "client-1",
      result: { resultType: "complete", tools: [], ttlMs: 0, cacheScope: "private" },
    });
  });

  it("a result that is not an object becomes an internal error; an error passes under the client's id", () => {
    assert.deepEqual(JSON.parse(clientAnswer('{"jsonrpc":"2.0","id":4,"result":null}', 7, "tools/call")), {
      jsonrpc: "2.0",
      id: 7,
      error: { code: -32603, message: "Internal error: the server's answer was not a result" },
    });
    const error = { code: -32602, message: "Unknown tool", data: { name: "x" } };
    assert.deepEqual(
      JSON.parse(clientAnswer(JSON.stringify({ jsonrpc: "2.0", id: 4, error }), 7, "tools/call")),
      {
        jsonrpc: "2.0",
        id: 7,
        error,
      },
    );
  });

  it("the server gets the bridge's id and no envelope keys; other params and _meta keys pass", () => {
    const request = {
      jsonrpc: "2.0",
      id: "client-id",
      method: "tools/call",
      params: {
        name: "echo",
        arguments: { text: "hi" },
        _meta: {
          "io.modelcontextprotocol/protocolVersion": "2026-07-28",
          "io.modelcontextprotocol/clientCapabilities": {},
          "io.modelcontextprotocol/clientInfo": { name: "c", version: "1" },
        },
      },
    };
    assert.deepEqual(serverRequest(request, 12), {
      jsonrpc: "2.0",
      id: 12,
      method: "tools/call",
      params: { name: "echo", arguments: { text: "hi" } },
    });
    const withToken = {
      ...request,
      params: { ...request.params, _meta: { progressToken: "mine", trace: 1 } },
    };
    assert.deepEqual(serverRequest(withToken, 13)["params"], {
      name: "echo",
      arguments: { text: "hi" },
      _meta: { progressToken: 13, trace: 1 },
    });
  });
});
