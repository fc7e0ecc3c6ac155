/**
 * A tiny stdio MCP server for the stdio bridge's tests: raw JSON-RPC, one message per line on stdin
 * and stdout (no SDK, so it also runs as an unprivileged uid that can read nothing but this file and
 * Node). Its tools report what the process can see and do, so tests can check isolation from the
 * inside: `env`, `whoami`, `readfile`, `writefile`, `stderr`, `notify`, `ask` (a request to the
 * client), `sleep`, `crash`, `garbage` (stdout that is not a message), `orphan` (a grandchild in
 * a session of its own), `request` (the id and params of the `tools/call` that called it, as
 * the server received them), `progress` (`steps` progress notifications under the call's own token)
 * and `flood` (stops reading its input, then sends `count` requests of its own whose ids are `bytes`
 * long, and never answers). With `PROBE_REFUSE_INITIALIZE=1` it answers `initialize` with an error.
 *
 * Run as `node tests/support/stdio-probe-server.ts`; it exits when its stdin ends.
 */
import { spawn } from "node:child_process";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Message = Record<string, unknown>;

const TOOLS = [
  "env",
  "whoami",
  "readfile",
  "writefile",
  "stderr",
  "notify",
  "ask",
  "sleep",
  "crash",
  "garbage",
  "orphan",
  "request",
  "flood",
];

const waiting = new Map<string, (message: Message) => void>();
let asked = 0;

function send(message: Message): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function text(value: Json): Json {
  return { content: [{ type: "text", text: JSON.stringify(value) }] };
}

function modeOf(path: string): string {
  return (statSync(path).mode & 0o777).toString(8);
}

async function callTool(name: string, args: Record<string, unknown>, request: Message): Promise<Json> {
  switch (name) {
    case "request":
      return text({ id: request["id"] as Json, params: request["params"] as Json });
    case "progress": {
      // notifications/progress under the request's own token, `steps` of them, `ms` apart.
      const meta = ((request["params"] ?? {}) as { _meta?: { progressToken?: Json } })._meta;
      const steps = Number(args["steps"] ?? 3);
      for (let step = 1; step <= steps; step++) {
        await new Promise((done) => setTimeout(done, Number(args["ms"] ?? 20)));
        if (meta?.progressToken !== undefined) {
          send({
            jsonrpc: "2.0",
            method: "notifications/progress",
            params: {
              progressToken: meta.progressToken,
              progress: step,
              total: steps,
              message: `step ${step}`,
            },
          });
        }
      }
      return text({ steps, token: meta?.progressToken ?? null });
    }
    case "env":
      return text({ ...process.env } as Record<string, string>);
    case "whoami": {
      const home = process.env["HOME"] ?? "";
      const tmp = process.env["TMPDIR"] ?? "";
      return text({
        uid: process.getuid?.() ?? -1,
        gid: process.getgid?.() ?? -1,
        groups: process.getgroups?.() ?? [],
        pid: process.pid,
        cwd: process.cwd(),
        home,
        tmpdir: tmp,
        modes: { home: modeOf(home), tmpdir: modeOf(tmp), cwd: modeOf(process.cwd()) },
      });
    }
    case "readfile":
      try {
        return text({ ok: true, content: readFileSync(String(args["path"]), "utf8") });
      } catch (error) {
        return text({ ok: false, code: String((error as NodeJS.ErrnoException).code) });
      }
    case "writefile":
      writeFileSync(String(args["path"]), String(args["content"] ?? ""), { mode: 0o600 });
      return text({ ok: true });
    case "stderr": {
      const variable = args["variable"];
      const line = typeof variable === "string" ? `probe: ${variable}=${process.env[variable]}` : "";
      process.stderr.write(`${line}${String(args["text"] ?? "")}\n`);
      return text({ ok: true });
    }
    case "notify":
      send({
        jsonrpc: "2.0",
        method: "notifications/message",
        params: { level: "info", data: String(args["text"] ?? "") },
      });
      return text({ ok: true });
    case "ask": {
      const id = `probe-ask-${++asked}`;
      const answer = new Promise<Message>((resolve) => waiting.set(id, resolve));
      send({
        jsonrpc: "2.0",
        id,
        method: "elicitation/create",
        params: { message: "probe asks", requestedSchema: { type: "object", properties: {} } },
      });
      return text({ answer: (await answer) as Json as { [key: string]: Json } });
    }
    case "sleep":
      await new Promise((done) => setTimeout(done, Number(args["ms"] ?? 1000)));
      return text({ ok: true });
    case "crash":
      process.exit(1);
      return null;
    case "garbage":
      if (args["kind"] === "long") process.stdout.write(`"${"x".repeat(Number(args["bytes"] ?? 1024))}"\n`);
      else process.stdout.write("this is not a JSON-RPC message\n");
      return text({ ok: true });
    case "orphan": {
      const orphan = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], {
        detached: true,
        stdio: "ignore",
      });
      orphan.unref();
      return text({ pid: orphan.pid ?? -1 });
    }
    case "flood": {
      lines.pause();
      process.stdin.pause();
      const padding = "f".repeat(Number(args["bytes"] ?? 1024));
      for (let n = 0; n < Number(args["count"] ?? 1); n++) {
        send({ jsonrpc: "2.0", id: `${padding}-${n}`, method: "ping" });
      }
      return new Promise<Json>(() => undefined);
    }
    default:
      throw new Error(`unknown tool ${name}`);
  }
}

async function handle(message: Message): Promise<void> {
  const id = message["id"];
  const method = message["method"];
  if (typeof method !== "string") {
    // A response from the client, to a request this server sent.
    if (typeof id === "string") waiting.get(id)?.(message);
    waiting.delete(String(id));
    return;
  }
  if (id === undefined) {
    // Notifications need no answer; a cancellation is reported on stderr for the tests to see.
    if (method === "notifications/cancelled") {
      process.stderr.write(
        `probe: cancelled ${JSON.stringify((message["params"] as { requestId?: unknown })?.requestId)}\n`,
      );
    }
    return;
  }
  const params = (message["params"] ?? {}) as Record<string, unknown>;
  try {
    let result: Json;
    if (method === "initialize" && process.env["PROBE_REFUSE_INITIALIZE"] === "1") {
      send({ jsonrpc: "2.0", id, error: { code: -32602, message: "probe refuses to initialize" } });
      return;
    }
    if (method === "initialize") {
      result = {
        protocolVersion:
          typeof params["protocolVersion"] === "string" ? params["protocolVersion"] : "2025-11-25",
        capabilities: { tools: {} },
        serverInfo: { name: "stdio-probe", version: "1.0.0" },
      };
    } else if (method === "ping") {
      result = {};
    } else if (method === "tools/list") {
      result = { tools: TOOLS.map((name) => ({ name, inputSchema: { type: "object" } })) };
    } else if (method === "tools/call") {
      result = await callTool(
        String(params["name"]),
        (params["arguments"] ?? {}) as Record<string, unknown>,
        message,
      );
    } else {
      send({ jsonrpc: "2.0", id, error: { code: -32601, message: "Method not found" } });
      return;
    }
    send({ jsonrpc: "2.0", id, result });
  } catch (error) {
    send({ jsonrpc: "2.0", id, error: { code: -32603, message: String(error) } });
  }
}

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (line.trim() === "") return;
  void handle(JSON.parse(line) as Message);
});
lines.on("close", () => process.exit(0));
