/**
 * The benchmark's upstream: a minimal JSON-RPC responder on node:http that keeps no sessions, so the
 * gateway (not the upstream) is what a benchmark measures. It answers every request at once:
 * `initialize` with a result naming the requested version, `server/discover` with the versions it
 * speaks, notifications with 202, anything else with a small result echoing the request's id.
 *
 *   node bench/targets/responder.ts [PORT]     prints "listening on PORT"
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

const VERSIONS = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"];

const server = createServer((request, response) => {
  const chunks: Buffer[] = [];
  request.on("data", (chunk: Buffer) => chunks.push(chunk));
  request.on("end", () => {
    if (request.method === "GET") {
      // A session's stream: held open (a comment line now and then) until the client leaves.
      response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store" });
      response.write(": open\n\n");
      const beat = setInterval(() => response.write(": beat\n\n"), 15_000);
      response.on("close", () => clearInterval(beat));
      return;
    }
    if (request.method === "DELETE") {
      response.writeHead(200).end();
      return;
    }
    if (request.method !== "POST") {
      response.writeHead(405).end();
      return;
    }
    let message: { id?: unknown; method?: string; params?: { protocolVersion?: string } };
    try {
      message = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      response.writeHead(400).end();
      return;
    }
    if (message.id === undefined) {
      response.writeHead(202).end();
      return;
    }
    let result: unknown;
    if (message.method === "initialize") {
      result = {
        protocolVersion: message.params?.protocolVersion ?? "2025-11-25",
        capabilities: { tools: {} },
        serverInfo: { name: "bench-responder", version: "0" },
      };
    } else if (message.method === "server/discover") {
      result = {
        supportedVersions: VERSIONS,
        capabilities: { tools: {} },
        serverInfo: { name: "bench-responder", version: "0" },
      };
    } else {
      result = { content: [{ type: "text", text: "ok" }] };
    }
    const body = JSON.stringify({ jsonrpc: "2.0", id: message.id, result });
    response.writeHead(200, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
    });
    response.end(body);
  });
});
server.keepAliveTimeout = 60_000;
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  process.stdout.write(`listening on ${(server.address() as AddressInfo).port}\n`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
