import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { Keyring } from "../../src/crypto/keyring.ts";
import { isGateError } from "../../src/errors.ts";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";
import {
  createUploadSigner,
  MAX_STORED_UPLOAD_BYTES,
  type ReceivedUpload,
  type UploadOutcome,
  type UploadSigner,
  type UploadSignerOptions,
} from "../../src/server/signed-uploads.ts";
import type { Store } from "../../src/store/contract.ts";
import { MemoryStore } from "../../src/store/memory-store.ts";
import { openRacingStores } from "../support/racing-stores.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const principal = (subject: string, tenant = `t-${subject}`): Principal =>
  makePrincipal({ kind: "jwt", issuer: "https://issuer.test", subject, tenant, scopes: [], expiresAt: null });
const alice = principal("alice");
const bob = principal("bob");
// Same tenant as alice, another subject: still someone else.
const carol = principal("carol", "t-alice");
const principals: Record<string, Principal> = { alice, bob, carol };

const MAX_BYTES = 1024;
const TYPES = ["text/plain", "image/png"];

interface UploadServer {
  readonly port: number;
  readonly outcomes: UploadOutcome[];
  close(): Promise<void>;
}

/**
 * A server author's upload endpoint: it authenticates the caller (here a test header naming a
 * principal stands in for a verified token) and hands the request to the signer.
 */
async function startUploadServer(signer: UploadSigner): Promise<UploadServer> {
  const outcomes: UploadOutcome[] = [];
  const server: Server = createServer((request, response) => {
    const caller = principals[String(request.headers["x-test-principal"])];
    if (caller === undefined) {
      response.writeHead(401).end();
      return;
    }
    void signer.handle(request, response, caller).then((outcome) => outcomes.push(outcome));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as AddressInfo).port,
    outcomes,
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
}

interface Answer {
  readonly status: number;
  readonly body: string;
  readonly headers: IncomingHttpHeaders;
}

interface SendOptions {
  readonly as?: string;
  readonly method?: string;
  readonly contentType?: string | null;
  /** Sent whole, with its Content-Length. */
  readonly body?: string | Buffer;
  /** Chunked, one chunk every few ms, until the answer arrives or `count` chunks went out. */
  readonly stream?: { readonly chunk: Buffer; readonly count: number };
  /** Declares `declared` bytes, sends `send`, then waits for the answer (or aborts if `abort`). */
  readonly partial?: { readonly declared: number; readonly send: Buffer; readonly abort?: boolean };
}

/** One request on a connection of its own (no agent), so concurrent calls really are concurrent. */
function send(port: number, url: string, options: SendOptions = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { "x-test-principal": options.as ?? "alice" };
    const contentType = options.contentType === undefined ? "text/plain" : options.contentType;
    if (contentType !== null) headers["content-type"] = contentType;
    if (options.body !== undefined) headers["content-length"] = String(Buffer.byteLength(options.body));
    if (options.partial) headers["content-length"] = String(options.partial.declared);
    if (options.stream) headers["transfer-encoding"] = "chunked";
    const request = httpRequest({
      host: "127.0.0.1",
      port,
      path: url,
      method: options.method ?? "PUT",
      headers,
      agent: false,
    });
    let answered = false;
    request.setTimeout(20_000, () => request.destroy(new Error("timed out")));
    request.on("error", (error) => {
      if (!answered) reject(error);
    });
    request.on("response", (response) => {
      answered = true;
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => {
        body += chunk;
      });
      response.on("end", () =>
        resolve({ status: response.statusCode ?? 0, body, headers: response.headers }),
      );
      response.on("error", reject);
    });
    if (options.body !== undefined) {
      request.end(options.body);
    } else if (options.stream) {
      const { chunk, count } = options.stream;
      let sent = 0;
      const next = (): void => {
        if (answered || request.destroyed) return;
        if (sent++ >= count) {
          request.end();
          return;
        }
        request.write(chunk, () => setTimeout(next, 5));
      };
      next();
    } else if (options.partial) {
      request.write(options.partial.send);
      if (options.partial.abort) {
        setTimeout(() => {
          answered = true;
          request.destroy();
          resolve({ status: 0, body: "", headers: {} });
        }, 100);
      }
    } else {
      request.end();
    }
  });
}

/** The URL with one query field replaced (or removed, for `null`). */
function withField(url: string, name: string, value: string | null): string {
  const [path, query = ""] = url.split("?");
  const params = new URLSearchParams(query);
  if (value === null) params.delete(name);
  else params.set(name, value);
  return `${path}?${params.toString()}`;
}

function fieldOf(url: string, name: string): string {
  return new URLSearchParams(url.split("?")[1]).get(name) ?? "";
}

/** Waits until the server has recorded `count` outcomes (a client abort gets no answer to wait on). */
async function outcomesReach(server: UploadServer, count: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (server.outcomes.length < count) {
    if (Date.now() > deadline) assert.fail(`expected ${count} outcomes, saw ${server.outcomes.length}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const refusalBody = JSON.stringify({ error: { code: "ERR_UPLOAD_REFUSED", message: "upload refused" } });

for (const backend of await storeBackendCases("uploads")) {
  describe(`signed uploads on ${backend.name}`, { skip: backend.skip }, () => {
    const keyring = Keyring.ephemeral();
    let stores: readonly [Store, Store];
    let closeStores: () => Promise<void>;
    // Two servers, each with its own signer and store handle (the second in another process where the
    // backend allows it): uploads spread over both race across connections, as replicas would.
    let signers: [UploadSigner, UploadSigner];
    let servers: [UploadServer, UploadServer];
    let shortLived: UploadSigner;
    let shortLivedServer: UploadServer;
    const options = (store: Store): UploadSignerOptions => ({
      keyring,
      store,
      ttlMs: 60_000,
      maxBytes: MAX_BYTES,
      contentTypes: TYPES,
    });

    before(async () => {
      const racing = await openRacingStores(backend);
      stores = racing.stores;
      closeStores = racing.close;
      signers = [createUploadSigner(options(stores[0])), createUploadSigner(options(stores[1]))];
      servers = [await startUploadServer(signers[0]), await startUploadServer(signers[1])];
      shortLived = createUploadSigner({ ...options(stores[0]), ttlMs: 300 });
      shortLivedServer = await startUploadServer(shortLived);
    });
    after(async () => {
      await Promise.all([...servers, shortLivedServer].map((server) => server.close()));
      await closeStores();
    });

    it("T5 an upload by its principal is accepted once and kept under that principal's scope only", async () => {
      const issued = await signers[0].issue(alice, { name: "notes.txt" });
      assert.match(issued.url, /^\/uploads\?/);
      // The URL names neither the principal nor the tenant: the MAC binds them without saying whom.
      for (const secret of ["alice", "t-alice", "issuer.test"])
        assert.ok(!issued.url.includes(secret), secret);

      const answer = await send(servers[1].port, issued.url, { body: "hello, tenantgate" });
      assert.equal(answer.status, 201);
      assert.deepEqual(JSON.parse(answer.body), {
        uploadId: issued.uploadId,
        size: 17,
        contentType: "text/plain",
        name: "notes.txt",
      });
      const stored = await signers[0].read(alice, issued.uploadId);
      assert.equal(stored?.bytes.toString("utf8"), "hello, tenantgate");
      assert.equal(stored?.name, "notes.txt");
      assert.equal(stored?.contentType, "text/plain");
      // Nobody else reads it: not another tenant, not another subject in alice's tenant.
      assert.equal(await signers[0].read(bob, issued.uploadId), null);
      assert.equal(await signers[0].read(carol, issued.uploadId), null);

      const again = await send(servers[0].port, issued.url, { body: "second" });
      assert.equal(again.status, 403);
      assert.equal(again.body, refusalBody);
      assert.equal(
        (await signers[0].read(alice, issued.uploadId))?.bytes.toString("utf8"),
        "hello, tenantgate",
      );
    });

    it("T5 a bad signature, a tampered field or an expired URL is 403, and the genuine URL still works", async () => {
      const issued = await signers[0].issue(alice, {
        maxBytes: 16,
        contentType: "text/plain",
        name: "a.txt",
      });
      const signature = fieldOf(issued.url, "sig");
      const flipped = `${signature[0] === "A" ? "B" : "A"}${signature.slice(1)}`;
      const forged = [
        withField(issued.url, "sig", flipped),
        withField(issued.url, "sig", null),
        withField(issued.url, "sig", "A".repeat(43)),
        withField(issued.url, "max", String(MAX_BYTES)),
        withField(issued.url, "exp", String(issued.expiresAt + 3_600_000)),
        withField(issued.url, "types", "text/plain,image/png"),
        withField(issued.url, "name", "b.txt"),
        withField(issued.url, "name", null),
        withField(issued.url, "kid", "other"),
        withField(
          issued.url,
          "id",
          `${issued.uploadId.slice(0, -1)}${issued.uploadId.endsWith("A") ? "B" : "A"}`,
        ),
        `${issued.url}&sig=${signature}`, // a repeated field is refused, not resolved
        `${issued.url}&extra=1`,
        issued.url.split("?")[0] ?? "",
      ];
      for (const url of forged) {
        const answer = await send(servers[0].port, url, { body: "tiny" });
        assert.equal(answer.status, 403, url);
        assert.equal(answer.body, refusalBody, url);
      }
      const reasons = servers[0].outcomes.slice(-forged.length).map((o) => !o.accepted && o.reason);
      assert.deepEqual(new Set(reasons), new Set(["url-invalid"]));

      // Nothing forged consumed the URL.
      assert.equal((await send(servers[0].port, issued.url, { body: "tiny" })).status, 201);

      const expiring = await shortLived.issue(alice);
      await new Promise((resolve) => setTimeout(resolve, 400));
      const expired = await send(shortLivedServer.port, expiring.url, { body: "late" });
      assert.equal(expired.status, 403);
      assert.equal(expired.body, refusalBody);
      assert.deepEqual(shortLivedServer.outcomes.at(-1), {
        accepted: false,
        status: 403,
        code: "ERR_UPLOAD_REFUSED",
        reason: "expired",
      });
    });

    it("T5 a URL is bound to its principal: anyone else is refused and cannot burn it", async () => {
      const issued = await signers[0].issue(alice);
      const unknown = await send(servers[0].port, withField(issued.url, "sig", "A".repeat(43)), {
        body: "x",
      });
      for (const other of ["bob", "carol"]) {
        const answer = await send(servers[0].port, issued.url, { as: other, body: "not yours" });
        // Exactly what a forged URL gets: status, headers that matter and body.
        assert.equal(answer.status, unknown.status);
        assert.equal(answer.body, unknown.body);
        assert.equal(answer.headers["content-type"], unknown.headers["content-type"]);
        assert.equal(answer.headers["cache-control"], "no-store");
      }
      assert.equal(await signers[0].read(bob, issued.uploadId), null);
      const owner = await send(servers[1].port, issued.url, { body: "mine" });
      assert.equal(owner.status, 201);
    });

    it("T5 50 concurrent uploads to one URL over separate connections: exactly one succeeds", async () => {
      const issued = await signers[0].issue(alice);
      const answers = await Promise.all(
        Array.from({ length: 50 }, (_, index) =>
          send(servers[index % 2]!.port, issued.url, { body: `upload number ${index}` }),
        ),
      );
      const accepted = answers.filter((answer) => answer.status >= 200 && answer.status < 300);
      assert.equal(accepted.length, 1);
      assert.deepEqual(
        answers.filter((answer) => answer.status === 403).length,
        49,
        "every other attempt is refused as a spent URL",
      );
      const winner = (await signers[1].read(alice, issued.uploadId))?.bytes.toString("utf8");
      assert.match(winner ?? "", /^upload number \d+$/);
      assert.equal(
        answers.find((answer) => answer.status === 201)?.body.includes(`"size":${winner?.length}`),
        true,
      );
    });

    it("T5 a URL cannot be replayed after a failed upload: 413 declared or streamed, 415, an aborted body", async () => {
      // Declared too large: refused before a byte of the body is read, and the connection closes.
      const declared = await signers[0].issue(alice);
      const tooLarge = await send(servers[0].port, declared.url, {
        partial: { declared: MAX_BYTES + 1, send: Buffer.alloc(64, 1) },
      });
      assert.equal(tooLarge.status, 413);
      assert.equal(tooLarge.headers.connection, "close");
      assert.equal(JSON.parse(tooLarge.body).error.code, "ERR_BODY_TOO_LARGE");
      assert.equal((await send(servers[1].port, declared.url, { body: "small" })).status, 403);

      // Streamed past the limit: refused at the chunk that crosses it.
      const streamed = await signers[0].issue(alice);
      const crossing = await send(servers[0].port, streamed.url, {
        stream: { chunk: Buffer.alloc(256, 2), count: 64 },
      });
      assert.equal(crossing.status, 413);
      assert.equal((await send(servers[0].port, streamed.url, { body: "small" })).status, 403);
      assert.equal(await signers[0].read(alice, streamed.uploadId), null);

      // A media type the URL does not allow: 415, and the URL is spent.
      const typed = await signers[0].issue(alice, { contentType: "image/png" });
      const wrongType = await send(servers[0].port, typed.url, {
        body: "plain text",
        contentType: "text/plain",
      });
      assert.equal(wrongType.status, 415);
      assert.equal(JSON.parse(wrongType.body).error.code, "ERR_MEDIA_TYPE_UNSUPPORTED");
      const replay = await send(servers[0].port, typed.url, { body: "png", contentType: "image/png" });
      assert.equal(replay.status, 403);
      assert.equal(replay.body, refusalBody);

      // The client gives up halfway: the attempt still spent the URL.
      const aborted = await signers[0].issue(alice);
      const seen = servers[0].outcomes.length;
      await send(servers[0].port, aborted.url, {
        partial: { declared: 512, send: Buffer.alloc(10), abort: true },
      });
      await outcomesReach(servers[0], seen + 1);
      assert.equal(servers[0].outcomes.at(-1)?.accepted, false);
      assert.equal((await send(servers[0].port, aborted.url, { body: "retry" })).status, 403);
      assert.deepEqual(
        servers[0].outcomes.slice(-1).map((o) => !o.accepted && o.reason),
        ["spent"],
      );
    });

    it("T5 415 for a missing or disallowed media type; parameters and case do not matter", async () => {
      for (const contentType of [null, "application/pdf", "text"]) {
        const issued = await signers[0].issue(alice);
        const answer = await send(servers[0].port, issued.url, { body: "x", contentType });
        assert.equal(answer.status, 415, String(contentType));
      }
      const issued = await signers[0].issue(alice);
      const answer = await send(servers[0].port, issued.url, {
        body: "x",
        contentType: "Text/Plain; charset=utf-8",
      });
      assert.equal(answer.status, 201);
      assert.equal(JSON.parse(answer.body).contentType, "text/plain");
    });
  });
}

describe("signed uploads: arguments and sinks", () => {
  const keyring = Keyring.ephemeral();
  const base = { keyring, ttlMs: 60_000, maxBytes: 1024, contentTypes: ["text/plain"] };

  it("refuses limits it cannot honour, naming the argument", () => {
    const store = new MemoryStore();
    const refusals: [string, Partial<UploadSignerOptions>][] = [
      ["maxBytes", { maxBytes: MAX_STORED_UPLOAD_BYTES + 1 }],
      ["maxBytes", { maxBytes: 0 }],
      ["ttlMs", { ttlMs: 0 }],
      ["contentTypes", { contentTypes: [] }],
      ["contentTypes", { contentTypes: ["Text/Plain"] }],
      ["contentTypes", { contentTypes: ["text/plain", "text/plain"] }],
      ["path", { path: "/uploads?x=1" }],
    ];
    for (const [name, override] of refusals) {
      assert.throws(
        () => createUploadSigner({ ...base, store, ...override }),
        (error: unknown) => isGateError(error, "ERR_ARGUMENT_INVALID") && error.message.startsWith(name),
        name,
      );
    }
    // With a sink of its own, the store's value bound no longer applies.
    assert.ok(
      createUploadSigner({ ...base, store, maxBytes: MAX_STORED_UPLOAD_BYTES + 1, sink: async () => {} }),
    );
  });

  it("issue narrows, never widens, what the signer allows", async () => {
    const signer = createUploadSigner({ ...base, store: new MemoryStore() });
    await assert.rejects(signer.issue(alice, { maxBytes: 2048 }), /maxBytes/);
    await assert.rejects(signer.issue(alice, { contentType: "image/png" }), /contentType/);
    await assert.rejects(signer.issue(alice, { name: "a\nb" }), /name/);
    const issued = await signer.issue(alice, { maxBytes: 10 });
    assert.equal(issued.maxBytes, 10);
    assert.deepEqual(issued.contentTypes, ["text/plain"]);
  });

  it("a sink of its own receives the whole upload once, with its owner; a failing sink is a generic 500", async () => {
    const received: ReceivedUpload[] = [];
    let fail = false;
    const signer = createUploadSigner({
      ...base,
      store: new MemoryStore(),
      path: "/files/in",
      sink: async (upload) => {
        if (fail) throw new Error("disk full at /secret/path");
        received.push(upload);
      },
    });
    const server = await startUploadServer(signer);
    try {
      const issued = await signer.issue(bob, { name: "b.txt" });
      assert.match(issued.url, /^\/files\/in\?/);
      const answer = await send(server.port, issued.url, { as: "bob", body: "bytes for bob" });
      assert.equal(answer.status, 201);
      assert.equal(received.length, 1);
      assert.equal(received[0]?.owner, bob);
      assert.equal(received[0]?.bytes.toString("utf8"), "bytes for bob");
      // The built-in store is not used when a sink is given.
      assert.equal(await signer.read(bob, issued.uploadId), null);

      fail = true;
      const failing = await signer.issue(bob);
      const refused = await send(server.port, failing.url, { as: "bob", body: "x" });
      assert.equal(refused.status, 500);
      assert.ok(!refused.body.includes("secret"));
      assert.deepEqual(JSON.parse(refused.body), {
        error: { code: "ERR_INTERNAL", message: "internal error" },
      });
    } finally {
      await server.close();
    }
  });

  it("a URL over 4 KiB (32 media types, a name of 255 units) is accepted as issued", async () => {
    const contentTypes = Array.from(
      { length: 32 },
      (_, i) => `application/${"x".repeat(63 - `+v${i}`.length)}+v${i}`,
    );
    const signer = createUploadSigner({ ...base, store: new MemoryStore(), contentTypes });
    const server = await startUploadServer(signer);
    try {
      const name = "\u{1F4C4}".repeat(127) + "é";
      const issued = await signer.issue(alice, { name });
      assert.ok(issued.url.length > 4_096);
      const answer = await send(server.port, issued.url, { body: "x", contentType: contentTypes[31] ?? "" });
      assert.equal(answer.status, 201);
      assert.equal(JSON.parse(answer.body).name, name);
    } finally {
      await server.close();
    }
  });

  it("T5 signers sharing a keyring and a store refuse each other's URLs, and do not spend them", async () => {
    const store = new MemoryStore();
    const avatars = createUploadSigner({ ...base, store, path: "/avatars" });
    const datasets = createUploadSigner({ ...base, store, path: "/datasets", sink: async () => {} });
    const avatarServer = await startUploadServer(avatars);
    const datasetServer = await startUploadServer(datasets);
    try {
      const issued = await avatars.issue(alice);
      const moved = issued.url.replace(/^\/avatars/, "/datasets");
      assert.equal((await send(datasetServer.port, moved, { body: "x" })).status, 403);
      assert.equal((await send(datasetServer.port, issued.url, { body: "x" })).status, 403);
      assert.equal((await send(avatarServer.port, issued.url, { body: "x" })).status, 201);
    } finally {
      await Promise.all([avatarServer.close(), datasetServer.close()]);
    }
  });

  it("T5 a URL survives a master-key rotation while its key is loaded, and no longer", async () => {
    const k1 = { id: "k1", key: Buffer.alloc(32, 1) };
    const k2 = { id: "k2", key: Buffer.alloc(32, 2) };
    const store = new MemoryStore();
    const original = createUploadSigner({ ...base, store, keyring: Keyring.fromKeys([k1], "k1") });
    const rotated = createUploadSigner({ ...base, store, keyring: Keyring.fromKeys([k1, k2], "k2") });
    const retired = createUploadSigner({ ...base, store, keyring: Keyring.fromKeys([k2], "k2") });
    const servers = await Promise.all([rotated, retired].map(startUploadServer));
    try {
      const kept = await original.issue(alice);
      const dropped = await original.issue(alice);
      assert.equal((await send(servers[1]!.port, dropped.url, { body: "x" })).status, 403);
      assert.equal((await send(servers[0]!.port, kept.url, { body: "x" })).status, 201);
      // Refused by the retired keyring without being spent: a keyring that still has k1 accepts it.
      assert.equal((await send(servers[0]!.port, dropped.url, { body: "x" })).status, 201);
    } finally {
      await Promise.all(servers.map((server) => server.close()));
    }
  });

  it("only PUT and POST upload; a store that cannot answer is 503", async () => {
    const store = new MemoryStore();
    const signer = createUploadSigner({ ...base, store });
    const server = await startUploadServer(signer);
    try {
      const issued = await signer.issue(alice);
      const get = await send(server.port, issued.url, { method: "GET" });
      assert.equal(get.status, 405);
      assert.equal(get.headers.allow, "PUT, POST");
      assert.equal((await send(server.port, issued.url, { method: "POST", body: "posted" })).status, 201);

      const later = await signer.issue(alice);
      await store.close();
      const down = await send(server.port, later.url, { body: "x" });
      assert.equal(down.status, 503);
      assert.equal(JSON.parse(down.body).error.code, "ERR_STORE_UNAVAILABLE");
    } finally {
      await server.close();
    }
  });
});
