import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type RequestListener, type Server } from "node:http";
import { createServer as createTlsServer } from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { TLSSocket } from "node:tls";
import { GateError, isGateError } from "../../src/errors.ts";
import { type SafeFetchPolicy, type SafeFetchResolver, safeFetch } from "../../src/server/safe-fetch.ts";

interface RecordedRequest {
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  /** The address the client dialled (this socket's local end). */
  readonly dialled: string;
  readonly servername: string | undefined;
}

interface LocalServer {
  readonly host: string;
  readonly port: number;
  /** The local address of every accepted connection: which address the client actually dialled. */
  readonly connections: string[];
  readonly requests: RecordedRequest[];
  close(): Promise<void>;
}

const answerOk: RequestListener = (_request, response) => response.end("ok");

async function listen(server: Server, host: string, port = 0): Promise<LocalServer> {
  const connections: string[] = [];
  const requests: RecordedRequest[] = [];
  const sockets = new Set<Socket>();
  const onConnection = (socket: Socket) => {
    connections.push(socket.localAddress ?? "");
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  };
  server.on("connection", onConnection);
  server.prependListener("request", (request) => {
    requests.push({
      path: request.url ?? "",
      headers: request.headers,
      dialled: request.socket.localAddress ?? "",
      servername: (request.socket as TLSSocket).servername || undefined,
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return {
    host,
    port: (server.address() as AddressInfo).port,
    connections,
    requests,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function startServer(host: string, handler: RequestListener = answerOk, port = 0): Promise<LocalServer> {
  return listen(createServer(handler), host, port);
}

/** A resolver from a fixed table that records every name it was asked for. */
function tableResolver(table: Record<string, readonly string[]>): SafeFetchResolver & { asked: string[] } {
  const asked: string[] = [];
  const resolve = async (hostname: string) => {
    asked.push(hostname);
    const answer = table[hostname];
    if (!answer) throw Object.assign(new Error("not found"), { code: "ENOTFOUND" });
    return answer;
  };
  return Object.assign(resolve, { asked });
}

async function refusal(promise: Promise<unknown>): Promise<GateError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof GateError) return error;
    throw error;
  }
  assert.fail("expected a refusal");
}

let ipv6Loopback = true;
before(async () => {
  const probe = await startServer("::1").catch(() => undefined);
  ipv6Loopback = probe !== undefined;
  await probe?.close();
});

describe("safeFetch refuses hostile URLs without connecting", () => {
  let v4: LocalServer;
  let v6: LocalServer | undefined;
  before(async () => {
    v4 = await startServer("127.0.0.1");
    // The same port on ::1, so every hostile spelling below names a listening socket.
    if (ipv6Loopback) v6 = await startServer("::1", answerOk, v4.port).catch(() => undefined);
  });
  after(async () => {
    await v4.close();
    await v6?.close();
  });

  it("the table: every URL is ERR_FETCH_REFUSED, no resolver is asked for a literal, no socket is opened", async () => {
    const p = () => v4.port;
    // [url, the rule that refuses it]
    const table: readonly (readonly [string, string])[] = [
      [`http://127.0.0.1:${p()}/`, "address-loopback"],
      [`http://127.1:${p()}/`, "address-loopback"],
      [`http://0x7f.1:${p()}/`, "address-loopback"],
      [`http://0x7f000001:${p()}/`, "address-loopback"],
      [`http://2130706433:${p()}/`, "address-loopback"],
      [`http://0177.0.0.1:${p()}/`, "address-loopback"],
      [`http://127.000.000.001:${p()}/`, "address-loopback"],
      [`http://[::ffff:127.0.0.1]:${p()}/`, "address-loopback"],
      [`http://[::ffff:7f00:1]:${p()}/`, "address-loopback"],
      [`http://[0:0:0:0:0:ffff:127.0.0.1]:${p()}/`, "address-loopback"],
      [`http://[::127.0.0.1]:${p()}/`, "address-ipv4-compatible"],
      [`http://[64:ff9b::127.0.0.1]:${p()}/`, "address-nat64-loopback"],
      [`http://[2002:7f00:1::]:${p()}/`, "address-6to4-loopback"],
      [`http://[::1]:${p()}/`, "address-loopback"],
      [`http://[::]:${p()}/`, "address-unspecified"],
      [`http://0.0.0.0:${p()}/`, "address-this-network"],
      [`http://0:${p()}/`, "address-this-network"],
      [`http://localhost:${p()}/`, "address-loopback"],
      [`http://LOCALHOST.:${p()}/`, "address-loopback"],
      [`http://api.localhost:${p()}/`, "address-loopback"],
      ["http://10.0.0.1/", "address-private"],
      ["http://167772161/", "address-private"],
      ["http://172.16.0.1/", "address-private"],
      ["http://172.31.255.254/", "address-private"],
      ["http://192.168.1.1/", "address-private"],
      ["http://0xc0.0xa8.1.1/", "address-private"],
      ["http://169.254.1.1/", "address-link-local"],
      ["http://169.254.169.254/latest/meta-data/", "address-metadata"],
      ["http://2852039166/", "address-metadata"],
      ["http://[::ffff:169.254.169.254]/", "address-metadata"],
      ["http://[fd00:ec2::254]/", "address-metadata"],
      ["http://100.100.100.200/", "address-metadata"],
      ["http://100.64.0.1/", "address-shared-cgnat"],
      ["http://100.127.255.254/", "address-shared-cgnat"],
      ["http://224.0.0.1/", "address-multicast"],
      ["http://255.255.255.255/", "address-reserved"],
      ["http://[ff02::1]/", "address-multicast"],
      ["http://[fe80::1]/", "address-link-local"],
      ["http://[fc00::1]/", "address-unique-local"],
      ["http://[fd12:3456::1]/", "address-unique-local"],
      ["http://[2001:db8::1]/", "address-documentation"],
      ["http://internal.example/", "address-private"],
      ["http://metadata.example/", "address-metadata"],
      ["http://mapped.example/", "address-loopback"],
      ["http://ula.example/", "address-unique-local"],
      ["http://mixed.example/", "address-loopback"],
      ["http://garbage.example/", "address-not-an-address"],
      [`http://user:pass@127.0.0.1:${p()}/`, "credentials"],
      ["http://user:pass@public.example/", "credentials"],
      ["http://user@public.example/", "credentials"],
      ["http://:secret@public.example/", "credentials"],
      ["file:///etc/passwd", "scheme"],
      ["gopher://public.example:70/_GET", "scheme"],
      ["ftp://public.example/", "scheme"],
      ["data:text/plain,hello", "scheme"],
      ["javascript:alert(1)", "scheme"],
      ["ws://public.example/", "scheme"],
      ["dict://public.example:11211/", "scheme"],
      ["http://public.example:22/", "port"],
      ["http://public.example:6379/", "port"],
      ["https://public.example:8443/", "port"],
      ["http://public.example:0/", "port"],
      ["http://[fe80::1%25eth0]/", "invalid-url"],
      ["not a url", "invalid-url"],
      ["http://", "invalid-url"],
    ];
    const resolve = tableResolver({
      "internal.example": ["10.1.2.3"],
      "metadata.example": ["169.254.169.254"],
      "mapped.example": ["::ffff:127.0.0.1"],
      "ula.example": ["fd00::1"],
      // A public address first: refused all the same, because any blocked answer refuses the name.
      "mixed.example": ["93.184.216.34", "127.0.0.1"],
      "garbage.example": ["not-an-address"],
      "public.example": ["93.184.216.34"],
    });
    const policy: SafeFetchPolicy = { allowedPorts: [80, 443, v4.port], resolve, timeoutMs: 5_000 };
    const outcomes: string[] = [];
    for (const [url, detail] of table) {
      const error = await refusal(safeFetch(url, policy));
      outcomes.push(`${url} -> ${error.code} ${error.detail}`);
      assert.equal(error.code, "ERR_FETCH_REFUSED", url);
      assert.equal(error.detail, detail, url);
      // Neither the message nor the detail repeats the URL or a credential in it.
      assert.ok(!`${error.message} ${error.detail}`.includes("pass"), url);
      assert.ok(!`${error.message} ${error.detail}`.includes("example"), url);
    }
    assert.equal(outcomes.length, table.length);
    // Only the names were resolved; literals, localhost names and refusals before resolution never were.
    assert.deepEqual([...new Set(resolve.asked)].sort(), [
      "garbage.example",
      "internal.example",
      "mapped.example",
      "metadata.example",
      "mixed.example",
      "ula.example",
    ]);
    assert.deepEqual(v4.connections, []);
    assert.deepEqual(v6?.connections ?? [], []);
  });

  it("metadata addresses stay refused under an allowance that covers everything", async () => {
    const policy: SafeFetchPolicy = { allowAddresses: ["0.0.0.0/0", "::/0"] };
    for (const url of [
      "http://169.254.169.254/",
      "http://[fd00:ec2::254]/",
      "http://[64:ff9b::a9fe:a9fe]/",
    ]) {
      const error = await refusal(safeFetch(url, policy));
      assert.equal(error.code, "ERR_FETCH_REFUSED", url);
      assert.equal(error.detail, "address-metadata", url);
    }
  });

  it("a policy that would allow more than http and https, or a bad allowance, is an argument error", async () => {
    const bad: readonly SafeFetchPolicy[] = [
      { schemes: ["file" as "http"] },
      { allowedPorts: [0] },
      { allowedPorts: [70000] },
      { maxRedirects: -1 },
      { maxBytes: 0 },
      { timeoutMs: 1.5 },
      { allowAddresses: ["localhost"] },
    ];
    for (const policy of bad) {
      const error = await refusal(safeFetch("http://public.example/", policy));
      assert.equal(error.code, "ERR_ARGUMENT_INVALID", JSON.stringify(policy));
    }
    const header = await refusal(safeFetch("http://public.example/", {}, { headers: { Host: "internal" } }));
    assert.equal(header.code, "ERR_ARGUMENT_INVALID");
  });
});

describe("safeFetch connects only to the vetted address", () => {
  it("a fake host name resolved once to an allowed address: one connection to it, Host is the URL's", async () => {
    const server = await startServer("127.0.0.1", (_request, response) => {
      response.setHeader("content-type", "text/plain; charset=utf-8");
      response.end("hello from the tool server");
    });
    try {
      const resolve = tableResolver({ "tool.example": ["127.0.0.1"] });
      const response = await safeFetch(`http://tool.example:${server.port}/page?q=1`, {
        allowAddresses: ["127.0.0.1/32"],
        allowedPorts: [server.port],
        resolve,
      });
      assert.equal(response.status, 200);
      assert.equal(response.text(), "hello from the tool server");
      assert.equal(response.url, `http://tool.example:${server.port}/page?q=1`);
      assert.equal(response.address, "127.0.0.1");
      assert.equal(response.redirects, 0);
      assert.deepEqual(resolve.asked, ["tool.example"]);
      // `tool.example` cannot resolve on this machine: the connection reached the server only
      // because the socket was opened to the vetted address itself.
      assert.deepEqual(server.connections, ["127.0.0.1"]);
      assert.equal(server.requests.length, 1);
      assert.equal(server.requests[0]?.headers.host, `tool.example:${server.port}`);
      assert.equal(server.requests[0]?.path, "/page?q=1");
      assert.equal(server.requests[0]?.headers["accept-encoding"], "identity");
    } finally {
      await server.close();
    }
  });

  it("HEAD reads no body", async () => {
    const server = await startServer("127.0.0.1");
    try {
      const response = await safeFetch(
        `http://127.0.0.1:${server.port}/`,
        { allowAddresses: ["127.0.0.1"], allowedPorts: [server.port] },
        { method: "HEAD" },
      );
      assert.equal(response.status, 200);
      assert.equal(response.body.length, 0);
      assert.equal(server.connections.length, 1);
    } finally {
      await server.close();
    }
  });

  it("when the first vetted address refuses the connection, the next vetted one is dialled", async (t) => {
    if (!ipv6Loopback) return t.skip("no IPv6 loopback");
    const server = await startServer("127.0.0.1");
    try {
      const response = await safeFetch(`http://both.example:${server.port}/`, {
        allowAddresses: ["127.0.0.1/32", "::1"],
        allowedPorts: [server.port],
        // Nothing listens on ::1 at this port.
        resolve: tableResolver({ "both.example": ["::1", "127.0.0.1"] }),
      });
      assert.equal(response.status, 200);
      assert.equal(response.address, "127.0.0.1");
      assert.deepEqual(server.connections, ["127.0.0.1"]);
    } finally {
      await server.close();
    }
  });

  it("DNS rebinding: a resolver that answers public then private is asked once per hop and pinned", async (t) => {
    if (!ipv6Loopback) return t.skip("no IPv6 loopback");
    // 127.0.0.1 plays the public address (explicitly allowed); ::1 the internal one, on the same port.
    const server = await startServer("127.0.0.1");
    const victim = await startServer("::1", answerOk, server.port).catch(() => undefined);
    if (!victim) {
      await server.close();
      return t.skip("port taken on ::1");
    }
    try {
      let calls = 0;
      const rebinding: SafeFetchResolver = async () => (++calls === 1 ? ["127.0.0.1"] : ["::1"]);
      const policy: SafeFetchPolicy = {
        allowAddresses: ["127.0.0.1/32"],
        allowedPorts: [server.port],
        resolve: rebinding,
      };
      const response = await safeFetch(`http://rebind.example:${server.port}/`, policy);
      assert.equal(response.status, 200);
      assert.equal(calls, 1, "resolved once");
      assert.deepEqual(server.connections, ["127.0.0.1"]);
      assert.deepEqual(victim.connections, []);

      // A second fetch gets the private answer: refused before connecting.
      const error = await refusal(safeFetch(`http://rebind.example:${server.port}/`, policy));
      assert.equal(error.code, "ERR_FETCH_REFUSED");
      assert.equal(error.detail, "address-loopback");

      // One answer that mixes both is refused whole, without dialling the allowed one.
      const mixed = await refusal(
        safeFetch(`http://mixed.example:${server.port}/`, {
          ...policy,
          resolve: async () => ["127.0.0.1", "::1"],
        }),
      );
      assert.equal(mixed.detail, "address-loopback");
      assert.deepEqual(server.connections, ["127.0.0.1"]);
      assert.deepEqual(victim.connections, []);
    } finally {
      await server.close();
      await victim.close();
    }
  });
});

describe("safeFetch redirects", () => {
  let victim: LocalServer | undefined;
  let target: string;
  before(async () => {
    victim = ipv6Loopback ? await startServer("::1").catch(() => undefined) : undefined;
    target = victim ? `http://[::1]:${victim.port}/` : "http://[::1]/";
  });
  after(async () => {
    await victim?.close();
  });

  it("a redirect from an allowed server to loopback, metadata, another scheme or credentials is refused", async () => {
    let location = "";
    const server = await startServer("127.0.0.1", (_request, response) => {
      response.writeHead(302, { location }).end();
    });
    try {
      const victimPort = victim?.port ?? 80;
      const cases: readonly (readonly [string, string])[] = [
        [target, "address-loopback"],
        [`http://localhost:${victimPort}/`, "address-loopback"],
        [`http://0x7f.2:${server.port}/`, "address-loopback"],
        [`http://[::ffff:127.0.0.2]:${server.port}/`, "address-loopback"],
        [`http://169.254.169.254:${server.port}/latest/meta-data/`, "address-metadata"],
        [`http://10.0.0.1:${server.port}/`, "address-private"],
        ["file:///etc/passwd", "scheme"],
        ["gopher://127.0.0.1:70/", "scheme"],
        [`http://user:pass@tool.example:${server.port}/`, "credentials"],
        ["http://[::1", "invalid-url"],
      ];
      const policy: SafeFetchPolicy = {
        allowAddresses: ["127.0.0.1/32"],
        allowedPorts: [server.port, victimPort],
        resolve: tableResolver({ "tool.example": ["127.0.0.1"] }),
      };
      for (const [next, detail] of cases) {
        location = next;
        const before = server.requests.length;
        const error = await refusal(safeFetch(`http://tool.example:${server.port}/start`, policy));
        assert.equal(error.code, "ERR_FETCH_REFUSED", next);
        assert.equal(error.detail, detail, next);
        assert.equal(server.requests.length, before + 1, next);
      }
      assert.deepEqual(victim?.connections ?? [], []);
    } finally {
      await server.close();
    }
  });

  it("follows an allowed redirect, re-resolving the new host, and drops Authorization and Cookie across origins", async () => {
    const other = await startServer("127.0.0.1");
    const server = await startServer("127.0.0.1", (request, response) => {
      if (request.url === "/start") response.writeHead(301, { location: "/same" }).end();
      else response.writeHead(307, { location: `http://other.example:${other.port}/end` }).end();
    });
    try {
      const resolve = tableResolver({ "tool.example": ["127.0.0.1"], "other.example": ["127.0.0.1"] });
      const response = await safeFetch(
        `http://tool.example:${server.port}/start`,
        { allowAddresses: ["127.0.0.1/32"], allowedPorts: [server.port, other.port], resolve },
        { headers: { Authorization: "Bearer secret", Cookie: "sid=1", Accept: "text/plain" } },
      );
      assert.equal(response.status, 200);
      assert.equal(response.redirects, 2);
      assert.equal(response.url, `http://other.example:${other.port}/end`);
      assert.deepEqual(resolve.asked, ["tool.example", "tool.example", "other.example"]);
      const [first, same] = server.requests;
      assert.equal(first?.headers.authorization, "Bearer secret");
      assert.equal(same?.headers.cookie, "sid=1", "same origin keeps them");
      const [crossed] = other.requests;
      assert.equal(crossed?.headers.authorization, undefined);
      assert.equal(crossed?.headers.cookie, undefined);
      assert.equal(crossed?.headers.accept, "text/plain");
      assert.equal(crossed?.headers.host, `other.example:${other.port}`);
    } finally {
      await server.close();
      await other.close();
    }
  });

  it("redirects are bounded: one past maxRedirects is refused", async () => {
    const server = await startServer("127.0.0.1", (_request, response) => {
      response.writeHead(302, { location: "/again" }).end("a body nobody reads");
    });
    try {
      const policy: SafeFetchPolicy = {
        allowAddresses: ["127.0.0.1"],
        allowedPorts: [server.port],
        maxRedirects: 2,
      };
      const error = await refusal(safeFetch(`http://127.0.0.1:${server.port}/`, policy));
      assert.equal(error.code, "ERR_FETCH_REFUSED");
      assert.equal(error.detail, "redirect-limit");
      assert.equal(server.requests.length, 3);
      const none = await refusal(
        safeFetch(`http://127.0.0.1:${server.port}/`, { ...policy, maxRedirects: 0 }),
      );
      assert.equal(none.detail, "redirect-limit");
    } finally {
      await server.close();
    }
  });
});

describe("safeFetch bounds size and time", () => {
  const allowLoopback = (port: number): SafeFetchPolicy => ({
    allowAddresses: ["127.0.0.1/32"],
    allowedPorts: [port],
  });

  it("a declared length past maxBytes is refused before reading; a stream past it is cut off", async () => {
    let streamClosed: Promise<void> = Promise.resolve();
    const server = await startServer("127.0.0.1", (request, response) => {
      if (request.url === "/declared") {
        response.end(Buffer.alloc(64 * 1024, 0x61));
        return;
      }
      // An endless chunked body: the client must stop reading and close the connection.
      streamClosed = new Promise((resolve) => response.on("close", () => resolve()));
      const timer = setInterval(() => response.write(Buffer.alloc(4096, 0x62)), 5);
      response.on("close", () => clearInterval(timer));
    });
    try {
      const policy = { ...allowLoopback(server.port), maxBytes: 1024 };
      const declared = await refusal(safeFetch(`http://127.0.0.1:${server.port}/declared`, policy));
      assert.equal(declared.code, "ERR_FETCH_TOO_LARGE");
      assert.equal(declared.detail, "content-length");
      const streamed = await refusal(safeFetch(`http://127.0.0.1:${server.port}/stream`, policy));
      assert.equal(streamed.code, "ERR_FETCH_TOO_LARGE");
      assert.equal(streamed.detail, "max-bytes");
      await streamClosed;
      // Exactly maxBytes is fine.
      const exact = await safeFetch(`http://127.0.0.1:${server.port}/declared`, {
        ...policy,
        maxBytes: 64 * 1024,
      });
      assert.equal(exact.body.length, 64 * 1024);
    } finally {
      await server.close();
    }
  });

  it("a server that never answers, one that trickles, and a resolver that hangs all end at timeoutMs", async () => {
    const server = await startServer("127.0.0.1", (request, response) => {
      if (request.url === "/silent") return;
      response.writeHead(200);
      const timer = setInterval(() => response.write("."), 50);
      response.on("close", () => clearInterval(timer));
    });
    try {
      const policy = { ...allowLoopback(server.port), timeoutMs: 300 };
      for (const path of ["/silent", "/trickle"]) {
        const started = performance.now();
        const error = await refusal(safeFetch(`http://127.0.0.1:${server.port}${path}`, policy));
        assert.equal(error.code, "ERR_FETCH_TIMEOUT", path);
        assert.ok(performance.now() - started < 3_000, path);
      }
      const hanging: SafeFetchResolver = () => new Promise(() => undefined);
      const error = await refusal(
        safeFetch(`http://slow.example:${server.port}/`, { ...policy, resolve: hanging }),
      );
      assert.equal(error.code, "ERR_FETCH_TIMEOUT");
    } finally {
      await server.close();
    }
  });

  it("the caller's own signal cancels; an unknown name and a refused connection are ERR_FETCH_FAILED", async () => {
    const server = await startServer("127.0.0.1", () => undefined);
    try {
      const controller = new AbortController();
      const pending = safeFetch(`http://127.0.0.1:${server.port}/`, allowLoopback(server.port), {
        signal: controller.signal,
      });
      setTimeout(() => controller.abort(), 50);
      const aborted = await refusal(pending);
      assert.equal(aborted.code, "ERR_FETCH_FAILED");
      assert.equal(aborted.detail, "aborted");
    } finally {
      await server.close();
    }
    const unknown = await refusal(safeFetch("http://nowhere.example/", { resolve: tableResolver({}) }));
    assert.equal(unknown.code, "ERR_FETCH_FAILED");
    assert.equal(unknown.detail, "resolve-failed");
    const closed = await startServer("127.0.0.1");
    const port = closed.port;
    await closed.close();
    const refusedConnection = await refusal(safeFetch(`http://127.0.0.1:${port}/`, allowLoopback(port)));
    assert.equal(refusedConnection.code, "ERR_FETCH_FAILED");
    assert.equal(refusedConnection.detail, "ECONNREFUSED");
  });
});

describe("safeFetch over TLS", () => {
  let dir: string | undefined;
  let key: Buffer;
  let cert: Buffer;
  before(() => {
    // A throwaway certificate for tool.example, made for this run; without openssl the test skips.
    try {
      dir = mkdtempSync(join(tmpdir(), "tenantgate-safe-fetch-"));
      execFileSync(
        "openssl",
        [
          "req",
          "-x509",
          "-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:P-256",
          "-nodes",
          "-days",
          "1",
          "-subj",
          "/CN=tool.example",
          "-addext",
          "subjectAltName=DNS:tool.example",
          "-keyout",
          join(dir, "key.pem"),
          "-out",
          join(dir, "cert.pem"),
        ],
        { stdio: "ignore", timeout: 30_000 },
      );
      key = readFileSync(join(dir, "key.pem"));
      cert = readFileSync(join(dir, "cert.pem"));
    } catch {
      if (dir) rmSync(dir, { recursive: true, force: true });
      dir = undefined;
    }
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("dials the vetted address but sends the host name as SNI and checks the certificate against it", async (t) => {
    if (!dir) return t.skip("openssl unavailable");
    const server = await listen(createTlsServer({ key, cert }, answerOk), "127.0.0.1");
    try {
      const policy: SafeFetchPolicy = {
        allowAddresses: ["127.0.0.1/32"],
        allowedPorts: [server.port],
        ca: cert,
        resolve: tableResolver({ "tool.example": ["127.0.0.1"], "other.example": ["127.0.0.1"] }),
      };
      const response = await safeFetch(`https://tool.example:${server.port}/`, policy);
      assert.equal(response.text(), "ok");
      assert.deepEqual(server.connections, ["127.0.0.1"]);
      assert.equal(server.requests[0]?.servername, "tool.example");
      assert.equal(server.requests[0]?.headers.host, `tool.example:${server.port}`);

      // The same address under another name: the certificate does not match, nothing is sent.
      const mismatch = await refusal(safeFetch(`https://other.example:${server.port}/`, policy));
      assert.equal(mismatch.code, "ERR_FETCH_FAILED");
      assert.equal(server.requests.length, 1);
      assert.ok(isGateError(mismatch));
    } finally {
      await server.close();
    }
  });
});
