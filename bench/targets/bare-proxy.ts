/**
 * The benchmark's baseline proxy: a bare node:http pass-through with no checks at all (no auth, no
 * parsing, no store): what any Node proxy costs before it does anything useful. Requests and answers
 * are streamed through a keep-alive agent.
 *
 *   node bench/targets/bare-proxy.ts TARGET_URL     prints "listening on PORT"
 */
import { Agent, createServer, request as forward } from "node:http";
import type { AddressInfo } from "node:net";

const target = new URL(process.argv[2] ?? "");
const agent = new Agent({ keepAlive: true, maxSockets: 256 });

const server = createServer((request, response) => {
  const outgoing = forward(
    {
      host: target.hostname,
      port: target.port,
      path: target.pathname,
      method: request.method,
      headers: { ...request.headers, host: target.host },
      agent,
    },
    (answer) => {
      response.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(response);
    },
  );
  outgoing.on("error", () => {
    if (!response.headersSent) response.writeHead(502);
    response.end();
  });
  request.pipe(outgoing);
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`listening on ${(server.address() as AddressInfo).port}\n`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
