import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { request as undiciRequest } from "undici";
import { isGateError } from "../../src/errors.ts";
import {
  clientResponseHeaders,
  FORWARDED_REQUEST_HEADERS,
  FORWARDED_RESPONSE_HEADERS,
  upstreamRequestHeaders,
} from "../../src/gateway/forward-headers.ts";

const GATEWAY_REQUEST_SET = {
  "tenantgate-assertion": "eyJhbGciOiJFZERTQSJ9.gateway.signature",
  "mcp-session-id": "upstream-session-7",
  "mcp-protocol-version": "2025-11-25",
  "last-event-id": "upstream-event-9",
};

/** Everything a client might send that must never reach the upstream (THREATS S9). */
const FORBIDDEN_REQUEST_HEADERS: Record<string, string> = {
  authorization: "Bearer client-token",
  "proxy-authorization": "Basic cHJveHk6cHc=",
  cookie: "sid=client-cookie",
  "tenantgate-assertion": "forged.client.assertion",
  "mcp-session-id": "client-session-id",
  "last-event-id": "client-event-id",
  "mcp-protocol-version": "2025-06-18",
  forwarded: "for=203.0.113.9;host=evil.test",
  "x-forwarded-for": "203.0.113.9",
  "x-forwarded-host": "evil.test",
  "x-forwarded-proto": "http",
  "x-real-ip": "203.0.113.9",
  via: "1.1 evil",
  "keep-alive": "timeout=5",
  te: "trailers",
  trailer: "x-later",
  upgrade: "websocket",
  "proxy-connection": "keep-alive",
  expect: "100-continue",
  origin: "https://app.example.com",
  referer: "https://app.example.com/page?secret=1",
  "accept-encoding": "gzip, br",
  "x-api-key": "client-api-key",
  "x-custom": "anything",
};

const ALLOWED_REQUEST_HEADERS = {
  accept: "application/json, text/event-stream",
  "content-type": "application/json",
  "user-agent": "mcp-client/1.0",
};

describe("upstreamRequestHeaders", () => {
  it("copies only accept, content-type and user-agent, then the gateway's own headers", () => {
    const client: IncomingHttpHeaders = {
      host: "gateway.example.com",
      connection: "keep-alive",
      "content-length": "42",
      "transfer-encoding": "chunked",
      ...FORBIDDEN_REQUEST_HEADERS,
      ...ALLOWED_REQUEST_HEADERS,
    };
    const forwarded = upstreamRequestHeaders(client, GATEWAY_REQUEST_SET);
    assert.deepEqual(forwarded, { ...ALLOWED_REQUEST_HEADERS, ...GATEWAY_REQUEST_SET });
    // The session, stream and assertion headers are the gateway's values, not the client's.
    const values = Object.values(forwarded).join("\n");
    for (const value of Object.values(FORBIDDEN_REQUEST_HEADERS)) assert.ok(!values.includes(value), value);
  });

  it("drops each forbidden header, one at a time, and keeps each allowed one", () => {
    for (const [name, value] of Object.entries(FORBIDDEN_REQUEST_HEADERS)) {
      assert.deepEqual(upstreamRequestHeaders({ [name]: value }, {}), {}, name);
    }
    for (const [name, value] of Object.entries(ALLOWED_REQUEST_HEADERS)) {
      assert.deepEqual(upstreamRequestHeaders({ [name]: value }, {}), { [name]: value }, name);
    }
    assert.deepEqual([...FORWARDED_REQUEST_HEADERS].sort(), Object.keys(ALLOWED_REQUEST_HEADERS).sort());
  });

  it("drops an allowlisted header the client named in Connection", () => {
    const forwarded = upstreamRequestHeaders(
      { ...ALLOWED_REQUEST_HEADERS, connection: "keep-alive, User-Agent ,  ACCEPT" },
      { "mcp-session-id": "s" },
    );
    assert.deepEqual(forwarded, { "content-type": "application/json", "mcp-session-id": "s" });
    // The gateway's own headers stay even if named: they are not the client's.
    assert.deepEqual(upstreamRequestHeaders({ connection: "mcp-session-id" }, { "mcp-session-id": "s" }), {
      "mcp-session-id": "s",
    });
  });

  it("works on a real request's headers, with every spelling and duplicate Node keeps", async () => {
    let seen: IncomingHttpHeaders = {};
    const server = createServer((req, res) => {
      seen = req.headers;
      res.end();
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    try {
      const client = httpRequest({
        host: "127.0.0.1",
        port,
        method: "POST",
        // Raw header pairs: repeated and oddly cased names, as a hostile client would send them.
        // (Node adds no Host to a raw list; the server requires one.)
        headers: [
          "Host",
          `127.0.0.1:${port}`,
          "Accept",
          "application/json",
          "ACCEPT",
          "text/event-stream",
          "Content-Type",
          "application/json",
          "Authorization",
          "Bearer t",
          "Cookie",
          "a=1",
          "cookie",
          "b=2",
          "Tenantgate-Assertion",
          "forged",
          "Mcp-Session-Id",
          "client-chosen",
          "X-Forwarded-For",
          "10.0.0.1",
          "Connection",
          "keep-alive, x-forwarded-for",
        ],
      });
      client.end("{}");
      const [response] = (await once(client, "response")) as [NodeJS.ReadableStream & { statusCode: number }];
      assert.equal(response.statusCode, 200);
      response.resume();
      await once(response, "end");
    } finally {
      server.close();
    }
    assert.deepEqual(upstreamRequestHeaders(seen, GATEWAY_REQUEST_SET), {
      // Node joins repeated Accept lines with ", ": one value, as the gateway saw it.
      accept: "application/json, text/event-stream",
      "content-type": "application/json",
      ...GATEWAY_REQUEST_SET,
    });
  });

  it("refuses an allowlisted header given twice, and control characters", () => {
    const invalid = (e: unknown) => isGateError(e, "ERR_REQUEST_INVALID");
    assert.throws(() => upstreamRequestHeaders({ accept: ["a", "b"] } as never, {}), invalid);
    assert.throws(() => upstreamRequestHeaders({ Accept: "a", accept: "b" }, {}), invalid);
    for (const bad of ["a\r\nx-injected: 1", "a\nb", "a\rb", "a\0b", "a\u0001b", "a\u007fb", "€"]) {
      assert.throws(() => upstreamRequestHeaders({ "user-agent": bad }, {}), invalid, JSON.stringify(bad));
    }
    // Tabs and obs-text are legal field content; bad values in headers that are dropped anyway
    // are not looked at.
    assert.deepEqual(upstreamRequestHeaders({ "user-agent": "a\tb\u00e9", "x-other": "a\r\nb" }, {}), {
      "user-agent": "a\tb\u00e9",
    });
  });

  it("lower-cases the gateway's headers and refuses its mistakes as argument errors", () => {
    assert.deepEqual(upstreamRequestHeaders({}, { "Mcp-Session-Id": "s" }), { "mcp-session-id": "s" });
    const argument = (e: unknown) => isGateError(e, "ERR_ARGUMENT_INVALID");
    assert.throws(() => upstreamRequestHeaders({}, { "mcp-session-id": "s\r\nx: y" }), argument);
    assert.throws(() => upstreamRequestHeaders({}, { "bad name": "v" }), argument);
    assert.throws(() => upstreamRequestHeaders({}, { "": "v" }), argument);
    assert.throws(
      () => upstreamRequestHeaders({}, { "Mcp-Session-Id": "a", "mcp-session-id": "b" }),
      argument,
    );
    assert.throws(() => upstreamRequestHeaders({}, { "mcp-session-id": 1 as never }), argument);
    assert.throws(() => upstreamRequestHeaders(null as never, {}), argument);
    assert.throws(() => upstreamRequestHeaders({}, null as never), argument);
  });

  it("keeps the gateway's value when it sets an allowlisted header too", () => {
    assert.deepEqual(upstreamRequestHeaders({ accept: "*/*" }, { accept: "application/json" }), {
      accept: "application/json",
    });
  });

  it("never lets a __proto__ name reach a prototype", () => {
    const set = JSON.parse('{"__proto__":"x"}') as Record<string, string>;
    const forwarded = upstreamRequestHeaders(JSON.parse('{"__proto__":"y","accept":"a"}'), set);
    assert.equal(Object.getPrototypeOf(forwarded), Object.prototype);
    assert.deepEqual(Object.keys(forwarded).sort(), ["__proto__", "accept"]);
    assert.equal(Object.getOwnPropertyDescriptor(forwarded, "__proto__")?.value, "x");
  });
});

/** Everything an upstream might answer with that must never reach the client. */
const FORBIDDEN_RESPONSE_HEADERS: Record<string, string> = {
  "set-cookie": "upstream_session=abc; HttpOnly",
  "mcp-session-id": "upstream-session-7",
  "www-authenticate": 'Bearer realm="upstream"',
  "keep-alive": "timeout=5",
  "content-encoding": "gzip",
  server: "upstream/1.2.3",
  "x-powered-by": "Express",
  "access-control-allow-origin": "*",
  "access-control-allow-credentials": "true",
  location: "https://upstream.internal/",
  "strict-transport-security": "max-age=0",
  "x-upstream-debug": "internal",
  "proxy-authenticate": "Basic",
  trailer: "x-later",
  upgrade: "h2c",
  vary: "accept-encoding",
  etag: '"v1"',
};

const ALLOWED_RESPONSE_HEADERS = {
  "content-type": "text/event-stream",
  "cache-control": "no-cache",
  "retry-after": "5",
};

const GATEWAY_RESPONSE_SET = { "mcp-session-id": "gateway-session-id" };

describe("clientResponseHeaders", () => {
  it("copies only content-type, cache-control and retry-after from a real undici response", async () => {
    const server = createServer((_req, res) => {
      res.setHeader("set-cookie", ["a=1", "b=2"]);
      for (const [name, value] of Object.entries(FORBIDDEN_RESPONSE_HEADERS)) {
        if (name !== "set-cookie" && name !== "trailer" && name !== "upgrade") res.setHeader(name, value);
      }
      for (const [name, value] of Object.entries(ALLOWED_RESPONSE_HEADERS)) res.setHeader(name, value);
      res.setHeader("content-length", "2");
      res.end("{}");
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    try {
      const response = await undiciRequest(`http://127.0.0.1:${port}/mcp`);
      await response.body.text();
      // undici saw them all, including the framing and connection headers Node added.
      for (const name of [
        "set-cookie",
        "mcp-session-id",
        "www-authenticate",
        "content-length",
        "connection",
      ]) {
        assert.ok(response.headers[name] !== undefined, name);
      }
      assert.deepEqual(clientResponseHeaders(response.headers, GATEWAY_RESPONSE_SET), {
        ...ALLOWED_RESPONSE_HEADERS,
        ...GATEWAY_RESPONSE_SET,
      });
    } finally {
      server.close();
    }
  });

  it("drops each forbidden header, one at a time, and keeps each allowed one", () => {
    const framing = {
      connection: "keep-alive",
      "transfer-encoding": "chunked",
      "content-length": "10",
      date: "Sun, 22 Nov 2026 10:00:00 GMT",
    };
    for (const [name, value] of Object.entries({ ...FORBIDDEN_RESPONSE_HEADERS, ...framing })) {
      assert.deepEqual(clientResponseHeaders({ [name]: value }, {}), {}, name);
    }
    for (const [name, value] of Object.entries(ALLOWED_RESPONSE_HEADERS)) {
      assert.deepEqual(clientResponseHeaders({ [name]: value }, {}), { [name]: value }, name);
    }
    assert.deepEqual([...FORWARDED_RESPONSE_HEADERS].sort(), Object.keys(ALLOWED_RESPONSE_HEADERS).sort());
  });

  it("replaces the upstream's session id with the gateway's", () => {
    const headers = clientResponseHeaders(
      { "mcp-session-id": "upstream-session-7", "content-type": "application/json" },
      GATEWAY_RESPONSE_SET,
    );
    assert.deepEqual(headers, { "content-type": "application/json", "mcp-session-id": "gateway-session-id" });
  });

  it("drops an allowlisted header the upstream named in Connection", () => {
    assert.deepEqual(
      clientResponseHeaders({ ...ALLOWED_RESPONSE_HEADERS, connection: ["keep-alive", "Retry-After"] }, {}),
      { "content-type": "text/event-stream", "cache-control": "no-cache" },
    );
  });

  it("joins repeated cache-control, refuses repeated content-type and retry-after", () => {
    assert.deepEqual(clientResponseHeaders({ "cache-control": ["no-cache", "no-transform"] }, {}), {
      "cache-control": "no-cache, no-transform",
    });
    const unavailable = (e: unknown) => isGateError(e, "ERR_UPSTREAM_UNAVAILABLE");
    assert.throws(
      () => clientResponseHeaders({ "content-type": ["application/json", "text/event-stream"] }, {}),
      unavailable,
    );
    assert.throws(() => clientResponseHeaders({ "retry-after": ["1", "2"] }, {}), unavailable);
    assert.throws(() => clientResponseHeaders({ "Content-Type": "a", "content-type": "b" }, {}), unavailable);
    // A single-element array is one field line.
    assert.deepEqual(clientResponseHeaders({ "content-type": ["application/json"] }, {}), {
      "content-type": "application/json",
    });
  });

  it("refuses upstream values with control characters", () => {
    const unavailable = (e: unknown) => isGateError(e, "ERR_UPSTREAM_UNAVAILABLE");
    for (const bad of ["text/html\r\nset-cookie: a=1", "a\nb", "a\0b"]) {
      assert.throws(
        () => clientResponseHeaders({ "content-type": bad }, {}),
        unavailable,
        JSON.stringify(bad),
      );
    }
    assert.throws(() => clientResponseHeaders({ "cache-control": ["ok", "a\rb"] }, {}), unavailable);
  });

  it("lower-cases the gateway's headers and refuses its mistakes as argument errors", () => {
    assert.deepEqual(clientResponseHeaders({}, { "Mcp-Session-Id": "g" }), { "mcp-session-id": "g" });
    assert.throws(
      () => clientResponseHeaders({}, { "mcp-session-id": "g\r\n" }),
      (e) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
  });
});
