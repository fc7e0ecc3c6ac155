import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type IncomingMessage, request } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { type GateErrorCode, isGateError } from "../../src/errors.ts";
import {
  firstRequestId,
  type JsonRpcPayload,
  MAX_METHOD_LENGTH,
  MAX_STRING_ID_LENGTH,
  parseJsonRpcBody,
  readRequestBody,
} from "../../src/gateway/json-rpc-body.ts";
import { fastCheckParameters } from "../support/fast-check.ts";

// ---------------------------------------------------------------------------------------------
// readRequestBody, against real requests on loopback

type Probe = (request: IncomingMessage) => Promise<void>;

/** A loopback server that hands each request to the probe the test registered for its path. */
let port = 0;
const probes = new Map<string, Probe>();
const server = createServer((req, res) => {
  const probe = probes.get(req.url ?? "");
  if (probe === undefined) {
    res.writeHead(404).end();
    return;
  }
  probe(req).finally(() => {
    if (!res.headersSent) res.writeHead(204, { connection: "close" }).end();
  });
});

before(async () => {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  port = (server.address() as AddressInfo).port;
});
after(() => {
  server.closeAllConnections();
  server.close();
});

interface Read {
  readonly body?: Buffer;
  readonly code?: GateErrorCode;
  readonly error?: unknown;
  readonly request: IncomingMessage;
  /** Taken the moment readRequestBody settled, before the server's own response handling. */
  readonly listeners: Record<string, number>;
  readonly paused: boolean;
  readonly didRead: boolean;
}

const EVENTS = ["data", "end", "error", "close"];

function snapshot(req: IncomingMessage): Pick<Read, "listeners" | "paused" | "didRead" | "request"> {
  const listeners = Object.fromEntries(EVENTS.map((event) => [event, req.listenerCount(event)]));
  return { listeners, paused: req.isPaused(), didRead: req.readableDidRead, request: req };
}

let nextPath = 0;

/**
 * Sends one request (headers, then each chunk) and returns what readRequestBody made of it on the
 * server side. `abortAfterChunks` destroys the client socket instead of ending the request.
 */
async function readOnServer(
  maxBytes: number,
  send: {
    headers?: Record<string, string>;
    chunks?: (string | Buffer)[];
    abortAfterChunks?: boolean;
    method?: string;
  },
): Promise<Read> {
  const path = `/probe-${nextPath++}`;
  const result = new Promise<Read>((resolve) => {
    probes.set(path, async (req) => {
      try {
        const body = await readRequestBody(req, maxBytes);
        resolve({ body, ...snapshot(req) });
      } catch (error) {
        resolve({ code: isGateError(error) ? error.code : undefined, error, ...snapshot(req) });
      }
    });
  });
  const client = request({
    host: "127.0.0.1",
    port,
    path,
    method: send.method ?? "POST",
    headers: send.headers ?? {},
  });
  client.on("error", () => {}); // the server may close on us: that is the point of some tests
  client.flushHeaders();
  for (const chunk of send.chunks ?? []) {
    client.write(chunk);
    await new Promise((r) => setImmediate(r));
  }
  if (send.abortAfterChunks) {
    // Give the server time to see the bytes, then cut the connection mid-body.
    await new Promise((r) => setTimeout(r, 20));
    client.destroy();
  } else {
    client.end();
  }
  const read = await result;
  probes.delete(path);
  return read;
}

describe("readRequestBody", () => {
  it("resolves with the exact bytes of a body sent with Content-Length", async () => {
    const body = Buffer.from('{"jsonrpc":"2.0","id":1,"method":"ping"}');
    const read = await readOnServer(1024, {
      headers: { "content-length": String(body.length) },
      chunks: [body],
    });
    assert.deepEqual(read.body, body);
  });

  it("resolves with every chunk of a chunked body, in order", async () => {
    const parts = ["{", '"jsonrpc"', ':"2.0"', ',"method":"x"}', Buffer.from([0xc3, 0xa9])];
    const read = await readOnServer(1024, { chunks: parts });
    assert.deepEqual(read.body, Buffer.concat(parts.map((part) => Buffer.from(part))));
  });

  it("accepts a body of exactly maxBytes and an empty body", async () => {
    const exact = await readOnServer(16, { chunks: ["0123456789abcdef"] });
    assert.equal(exact.body?.length, 16);
    const empty = await readOnServer(16, { headers: { "content-length": "0" } });
    assert.deepEqual(empty.body, Buffer.alloc(0));
  });

  it("refuses a declared Content-Length over the limit before reading a byte", async () => {
    const read = await readOnServer(10, { headers: { "content-length": "11" }, chunks: ["01234567890"] });
    assert.equal(read.code, "ERR_BODY_TOO_LARGE");
    assert.equal(read.didRead, false);
    assert.equal(read.listeners["data"], 0);
  });

  it("refuses a streamed body at the chunk that crosses the limit, and stops reading", async () => {
    const read = await readOnServer(10, { chunks: ["012345", "6789ab", "cdef"] });
    assert.equal(read.code, "ERR_BODY_TOO_LARGE");
    // Paused and detached: the caller decides whether to drain or destroy.
    assert.equal(read.paused, true);
    for (const event of EVENTS) assert.equal(read.listeners[event], 0, event);
  });

  it("refuses an upload the client aborts as ERR_REQUEST_INVALID", async () => {
    const read = await readOnServer(1024, { chunks: ['{"jsonrpc":'], abortAfterChunks: true });
    assert.equal(read.code, "ERR_REQUEST_INVALID");
    // Node's error text is a cause at most, never in the message.
    assert.equal((read.error as Error).message, "invalid request");
  });

  it("removes its listeners once the body is read", async () => {
    const read = await readOnServer(1024, { chunks: ["abc"] });
    for (const event of EVENTS) assert.equal(read.listeners[event], 0, event);
  });

  it("refuses bad arguments and a body someone already read", async () => {
    const read = await readOnServer(1024, { chunks: ["abc"] });
    await assert.rejects(readRequestBody(read.request, -1), (e) => isGateError(e, "ERR_ARGUMENT_INVALID"));
    await assert.rejects(readRequestBody(read.request, 1.5), (e) => isGateError(e, "ERR_ARGUMENT_INVALID"));
    // read.request has been read to its end.
    await assert.rejects(readRequestBody(read.request, 1024), (e) => isGateError(e, "ERR_ARGUMENT_INVALID"));
  });
});

// ---------------------------------------------------------------------------------------------
// parseJsonRpcBody

const SINGLE = { maxBatchSize: 10, allowBatch: false };
const BATCH = { maxBatchSize: 3, allowBatch: true };

function parse(text: string | Buffer, options = SINGLE): JsonRpcPayload {
  return parseJsonRpcBody(typeof text === "string" ? Buffer.from(text) : text, options);
}

function refusal(text: string | Buffer, options = SINGLE): GateErrorCode {
  try {
    parse(text, options);
  } catch (error) {
    assert.ok(isGateError(error), String(error));
    // Generic whatever the flaw: the message and wire form say nothing about the body.
    assert.ok(["invalid request", "batch refused"].includes(error.message), error.message);
    return error.code;
  }
  assert.fail(`expected a refusal for ${String(text).slice(0, 80)}`);
}

describe("parseJsonRpcBody", () => {
  it("reads a request, a notification and responses", () => {
    assert.deepEqual(parse('{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}'), {
      batch: false,
      messages: [{ kind: "request", id: 1, method: "tools/list", params: {} }],
    });
    assert.deepEqual(parse('{"jsonrpc":"2.0","id":"a-1","method":"ping"}').messages, [
      { kind: "request", id: "a-1", method: "ping", params: undefined },
    ]);
    assert.deepEqual(parse('{"jsonrpc":"2.0","method":"notifications/initialized"}').messages, [
      { kind: "notification", method: "notifications/initialized", params: undefined },
    ]);
    assert.deepEqual(parse('{"jsonrpc":"2.0","id":7,"result":{}}').messages, [{ kind: "response", id: 7 }]);
    assert.deepEqual(parse('{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}').messages, [
      { kind: "response", id: null },
    ]);
    assert.deepEqual(parse('{"jsonrpc":"2.0","id":"s","method":"m","params":[1,2]}').messages, [
      { kind: "request", id: "s", method: "m", params: [1, 2] },
    ]);
    // Whitespace around the JSON is JSON.
    assert.equal(parse(' \n{"jsonrpc":"2.0","method":"m"}\r\n ').messages.length, 1);
  });

  it("refuses what is not one well-formed JSON-RPC 2.0 message", () => {
    const invalid = [
      "",
      " ",
      "nul",
      "{",
      '{"jsonrpc":"2.0","method":"m"} {}',
      "null",
      "1",
      '"text"',
      "true",
      "{}",
      '{"method":"m","id":1}',
      '{"jsonrpc":"1.0","method":"m","id":1}',
      '{"jsonrpc":2,"method":"m","id":1}',
      '{"jsonrpc":"2.0"}',
      '{"jsonrpc":"2.0","method":1,"id":1}',
      '{"jsonrpc":"2.0","method":"","id":1}',
      `{"jsonrpc":"2.0","method":"${"m".repeat(MAX_METHOD_LENGTH + 1)}","id":1}`,
      '{"jsonrpc":"2.0","method":"a\\u0000b","id":1}',
      '{"jsonrpc":"2.0","method":"a\\nb","id":1}',
      '{"jsonrpc":"2.0","method":"m","id":null}',
      '{"jsonrpc":"2.0","method":"m","id":1.5}',
      '{"jsonrpc":"2.0","method":"m","id":1e300}',
      '{"jsonrpc":"2.0","method":"m","id":9007199254740993}',
      '{"jsonrpc":"2.0","method":"m","id":true}',
      '{"jsonrpc":"2.0","method":"m","id":{}}',
      '{"jsonrpc":"2.0","method":"m","id":[1]}',
      `{"jsonrpc":"2.0","method":"m","id":"${"i".repeat(MAX_STRING_ID_LENGTH + 1)}"}`,
      '{"jsonrpc":"2.0","method":"m","id":1,"params":"p"}',
      '{"jsonrpc":"2.0","method":"m","id":1,"params":null}',
      '{"jsonrpc":"2.0","method":"m","id":1,"params":3}',
      '{"jsonrpc":"2.0","method":"m","id":1,"result":{}}',
      '{"jsonrpc":"2.0","method":"m","error":{"code":1,"message":"x"}}',
      '{"jsonrpc":"2.0","id":1}',
      '{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}',
      '{"jsonrpc":"2.0","result":{}}',
      '{"jsonrpc":"2.0","id":null,"result":{}}',
      '{"jsonrpc":"2.0","id":1,"result":{},"params":{}}',
      '{"jsonrpc":"2.0","id":1,"error":"boom"}',
      '{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"x"}}',
      '{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"x"}}',
      '{"jsonrpc":"2.0","id":1,"error":{"code":1}}',
    ];
    for (const text of invalid) assert.equal(refusal(text), "ERR_REQUEST_INVALID", text);
  });

  it("accepts the boundary lengths", () => {
    const method = "m".repeat(MAX_METHOD_LENGTH);
    const id = "i".repeat(MAX_STRING_ID_LENGTH);
    assert.deepEqual(parse(`{"jsonrpc":"2.0","method":"${method}","id":"${id}"}`).messages[0], {
      kind: "request",
      id,
      method,
      params: undefined,
    });
    assert.equal(firstRequestId(parse('{"jsonrpc":"2.0","method":"m","id":""}')), "");
    assert.equal(
      firstRequestId(parse('{"jsonrpc":"2.0","method":"m","id":-9007199254740991}')),
      -(2 ** 53 - 1),
    );
  });

  it("refuses a byte-order mark and invalid UTF-8, and reads valid multibyte text", () => {
    const ok = '{"jsonrpc":"2.0","method":"m","params":{"t":"é€😀"}}';
    assert.deepEqual(parse(ok).messages[0], { kind: "notification", method: "m", params: { t: "é€😀" } });
    assert.equal(
      refusal(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(ok)])),
      "ERR_REQUEST_INVALID",
    );
    const bad = [
      [0xff],
      [0xc3], // truncated sequence
      [0xc0, 0xaf], // overlong "/"
      [0xed, 0xa0, 0x80], // a surrogate encoded as UTF-8
    ];
    for (const bytes of bad) {
      const body = Buffer.concat([
        Buffer.from('{"jsonrpc":"2.0","method":"m","params":{"t":"'),
        Buffer.from(bytes),
        Buffer.from('"}}'),
      ]);
      assert.equal(refusal(body), "ERR_REQUEST_INVALID", JSON.stringify(bytes));
    }
  });

  it("refuses duplicate keys at any depth, also when spelled with escapes", () => {
    const duplicates = [
      '{"jsonrpc":"2.0","method":"tools/list","method":"tools/call","id":1}',
      '{"jsonrpc":"2.0","method":"m","id":1,"id":2}',
      '{"jsonrpc":"2.0","method":"m","id":1,"params":{"name":"a","name":"b"}}',
      '{"jsonrpc":"2.0","method":"m","id":1,"params":{"a":[{"x":1},{"y":{"k":1,"k":2}}]}}',
      '{"jsonrpc":"2.0","method":"m","id":1,"params":{"name":"a","n\\u0061me":"b"}}',
      '{"jsonrpc":"2.0","method":"m","id":1,"params":{"__proto__":1,"__proto__":2}}',
    ];
    for (const text of duplicates) assert.equal(refusal(text), "ERR_REQUEST_INVALID", text);
    // The same name in sibling objects, and strings that look like keys, are fine.
    const fine = [
      '{"jsonrpc":"2.0","method":"m","id":1,"params":{"a":{"k":1},"b":{"k":1}}}',
      '{"jsonrpc":"2.0","method":"m","id":1,"params":{"list":["k","k"],"k":"k"}}',
      '{"jsonrpc":"2.0","method":"m","id":1,"params":{"s":"\\"k\\":1,\\"k\\":2","k":[{},{}]}}',
      '{"jsonrpc":"2.0","method":"m","id":1,"params":{"a\\\\":1,"a":2}}',
    ];
    for (const text of fine) assert.equal(parse(text).messages.length, 1, text);
  });

  it("agrees with a reference duplicate-key check on generated JSON", () => {
    // Reference: re-serialising loses duplicates, so a body with duplicates has more keys in its
    // text than the parsed value has. Generate objects, then inject a duplicate or not.
    const json = fc.letrec((tie) => ({
      value: fc.oneof(
        { depthSize: "small" },
        fc.string({ maxLength: 4 }),
        fc.integer(),
        fc.constant(null),
        fc.array(tie("value"), { maxLength: 3 }),
        tie("object"),
      ),
      object: fc.dictionary(fc.string({ maxLength: 3 }), tie("value"), { maxKeys: 4 }),
    }));
    fc.assert(
      fc.property(json.object as fc.Arbitrary<Record<string, unknown>>, fc.boolean(), (params, duplicate) => {
        let text = JSON.stringify({ jsonrpc: "2.0", method: "m", params });
        const keys = Object.keys(params);
        if (duplicate && keys.length > 0) {
          // Repeat the first key at the end of the params object, escaped differently.
          const key = keys[0]!;
          const escaped =
            key === ""
              ? '""'
              : `"\\u${key.charCodeAt(0).toString(16).padStart(4, "0")}${JSON.stringify(key.slice(1)).slice(1)}`;
          text = `${text.slice(0, -2)},${escaped}:0}}`;
          assert.equal(refusal(text), "ERR_REQUEST_INVALID");
        } else {
          const expected = JSON.parse(JSON.stringify(params));
          assert.deepEqual(parse(text).messages[0], { kind: "notification", method: "m", params: expected });
        }
      }),
      fastCheckParameters(300),
    );
  });

  it("keeps __proto__ keys as data and pollutes nothing", () => {
    const payload = parse('{"jsonrpc":"2.0","method":"m","id":1,"params":{"__proto__":{"polluted":true}}}');
    const message = payload.messages[0]!;
    assert.equal(message.kind, "request");
    const params = (message as { params: Record<string, unknown> }).params;
    assert.ok(Object.hasOwn(params, "__proto__"));
    assert.equal(Object.getPrototypeOf(params), Object.prototype);
    assert.equal(({} as Record<string, unknown>)["polluted"], undefined);
    // A message whose members come only from a forged prototype is not a message.
    assert.equal(refusal('{"__proto__":{"jsonrpc":"2.0","method":"m","id":1}}'), "ERR_REQUEST_INVALID");
  });

  it("refuses batches unless allowed, empty or too long; checks every element", () => {
    const request = (id: number) => `{"jsonrpc":"2.0","id":${id},"method":"ping"}`;
    assert.equal(refusal(`[${request(1)}]`, SINGLE), "ERR_BATCH_REFUSED");
    assert.equal(refusal("[]", SINGLE), "ERR_BATCH_REFUSED");
    assert.equal(refusal("[]", BATCH), "ERR_REQUEST_INVALID");
    assert.equal(refusal(`[${[1, 2, 3, 4].map(request).join(",")}]`, BATCH), "ERR_BATCH_REFUSED");
    // One bad element refuses the whole batch: nothing is forwarded half-checked.
    assert.equal(refusal(`[${request(1)},{"jsonrpc":"2.0","id":2}]`, BATCH), "ERR_REQUEST_INVALID");
    assert.equal(refusal(`[${request(1)},1]`, BATCH), "ERR_REQUEST_INVALID");
    assert.equal(refusal(`[[${request(1)}]]`, BATCH), "ERR_REQUEST_INVALID");
    // Two requests with one id could not be told apart in the answers.
    assert.equal(refusal(`[${request(1)},${request(1)}]`, BATCH), "ERR_REQUEST_INVALID");

    const payload = parse(
      `[{"jsonrpc":"2.0","method":"notifications/x"},${request(1)},{"jsonrpc":"2.0","id":"1","method":"ping"},{"jsonrpc":"2.0","id":1,"result":{}}]`,
      { maxBatchSize: 4, allowBatch: true },
    );
    assert.equal(payload.batch, true);
    assert.deepEqual(
      payload.messages.map((m) => m.kind),
      ["notification", "request", "request", "response"],
    );
    assert.equal(firstRequestId(payload), 1);
    // A batch of one is still a batch (the answer must be an array).
    assert.equal(parse(`[${request(5)}]`, BATCH).batch, true);
  });

  it("returns frozen results", () => {
    const payload = parse('{"jsonrpc":"2.0","id":1,"method":"ping"}');
    assert.ok(Object.isFrozen(payload));
    assert.ok(Object.isFrozen(payload.messages));
  });

  it("never puts a body value into an error", () => {
    const secret = "sk-live-4f9a2c";
    const bodies = [
      `{"jsonrpc":"2.0","method":"${secret}\\u0001","id":1}`,
      `{"jsonrpc":"2.0","method":"m","id":"${secret}${"x".repeat(300)}"}`,
      `{"jsonrpc":"2.0","method":"m","id":1,"params":"${secret}"}`,
      `{"jsonrpc":"2.0","method":"${secret}",`,
      `{"jsonrpc":"${secret}","method":"m"}`,
      `{"${secret}":1,"${secret}":2}`,
    ];
    for (const body of bodies) {
      try {
        parse(body);
        assert.fail("expected a refusal");
      } catch (error) {
        assert.ok(isGateError(error));
        const seen = JSON.stringify([error.message, error.detail, error.toWire(), String(error.stack)]);
        assert.ok(!seen.includes(secret), body);
        assert.equal(error.cause, undefined);
      }
    }
  });

  it("refuses bad options", () => {
    const body = Buffer.from('{"jsonrpc":"2.0","method":"m"}');
    for (const options of [
      { maxBatchSize: 0, allowBatch: true },
      { maxBatchSize: 1.5, allowBatch: true },
      { maxBatchSize: 1, allowBatch: "yes" },
      undefined,
    ]) {
      assert.throws(
        () => parseJsonRpcBody(body, options as never),
        (e) => isGateError(e, "ERR_ARGUMENT_INVALID"),
      );
    }
    assert.throws(
      () => parseJsonRpcBody("{}" as never, SINGLE),
      (e) => isGateError(e, "ERR_ARGUMENT_INVALID"),
    );
  });

  it("never throws anything but a GateError on arbitrary bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.boolean(), (bytes, allowBatch) => {
        try {
          parseJsonRpcBody(Buffer.from(bytes), { maxBatchSize: 4, allowBatch });
        } catch (error) {
          assert.ok(isGateError(error), String(error));
        }
      }),
      fastCheckParameters(1_000),
    );
  });

  it("handles deep nesting without overflowing the stack", () => {
    const depth = 100_000;
    const params = `${"[".repeat(depth)}${"]".repeat(depth)}`;
    const text = `{"jsonrpc":"2.0","method":"m","params":${params}}`;
    try {
      parse(text);
    } catch (error) {
      assert.ok(isGateError(error), String(error));
    }
  });
});

describe("firstRequestId", () => {
  it("is the id of the first request, or null when there is none", () => {
    assert.equal(firstRequestId(parse('{"jsonrpc":"2.0","id":"x","method":"m"}')), "x");
    assert.equal(firstRequestId(parse('{"jsonrpc":"2.0","method":"m"}')), null);
    assert.equal(firstRequestId(parse('{"jsonrpc":"2.0","id":3,"result":{}}')), null);
    assert.equal(
      firstRequestId(
        parse('[{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","id":0,"method":"m"}]', {
          maxBatchSize: 5,
          allowBatch: true,
        }),
      ),
      0,
    );
  });
});
