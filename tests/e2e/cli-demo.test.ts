/**
 * The README's promises, as real processes: `tenantgate demo` starts on loopback with state in
 * ./.tenantgate/ (a 0700 folder, a 0600 master key) and prints working tokens; SIGTERM stops it
 * gracefully (an in-flight call finishes, exit 0); `npm run demo` walks through bob's attempts and
 * exits 0 only when every one of them is refused.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const ROOT = resolve(import.meta.dirname, "../..");
const CLI = join(ROOT, "src/cli/main.ts");

interface Started {
  readonly child: ChildProcess;
  readonly url: string;
  readonly alice: string;
  readonly bob: string;
  stderr(): string;
}

/** Starts `tenantgate demo --port 0` in `cwd` and reads the URL and tokens from its banner. */
async function startDemoProcess(cwd: string): Promise<Started> {
  const child = spawn(process.execPath, [CLI, "demo", "--port", "0"], {
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stdout?.resume();
  const banner = await new Promise<string>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`demo did not start: ${stderr}`)), 30_000);
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
      if (stderr.includes("Ctrl-C")) {
        clearTimeout(timer);
        resolvePromise(stderr);
      }
    });
    child.once("exit", (code) => reject(new Error(`demo exited with ${code}: ${stderr}`)));
  });
  const url = /gateway on (http:\/\/127\.0\.0\.1:\d+\/mcp)/.exec(banner)?.[1];
  const alice = /alice \(tenant acme\):\s+(\S+)/.exec(banner)?.[1];
  const bob = /bob {3}\(tenant globex\):\s+(\S+)/.exec(banner)?.[1];
  assert.ok(url && alice && bob, `banner lacks the URL or tokens:\n${banner}`);
  return { child, url, alice, bob, stderr: () => stderr };
}

function textOf(result: unknown): string {
  const content = (result as { content?: Array<{ text?: string }> }).content ?? [];
  return content.map((part) => part.text ?? "").join("");
}

describe("tenantgate demo (a real process)", () => {
  let cwd: string;
  let demo: Started;
  before(async () => {
    cwd = await mkdtemp(join(tmpdir(), "tenantgate-demo-test-"));
    demo = await startDemoProcess(cwd);
  });
  after(async () => {
    if (demo.child.exitCode === null) demo.child.kill("SIGKILL");
    await rm(cwd, { recursive: true, force: true });
  });

  it("keeps its state under ./.tenantgate/: a 0700 folder and a 0600 master key", async () => {
    assert.equal((await stat(join(cwd, ".tenantgate"))).mode & 0o777, 0o700);
    assert.equal((await stat(join(cwd, ".tenantgate/master.key"))).mode & 0o777, 0o600);
    assert.ok((await stat(join(cwd, ".tenantgate/demo.sqlite"))).isFile());
  });

  it("the printed tokens work, and bob cannot use alice's session", async () => {
    const transport = new StreamableHTTPClientTransport(new URL(demo.url), {
      requestInit: { headers: { authorization: `Bearer ${demo.alice}` } },
    });
    const client = new Client({ name: "demo-test", version: "1.0.0" });
    await client.connect(transport);
    await client.callTool({ name: "add_note", arguments: { text: "printed tokens work" } });
    assert.match(textOf(await client.callTool({ name: "list_notes", arguments: {} })), /printed tokens work/);
    const stolen = await fetch(demo.url, {
      method: "POST",
      headers: {
        authorization: `Bearer ${demo.bob}`,
        "mcp-session-id": transport.sessionId ?? "",
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
      },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
    });
    assert.equal(stolen.status, 404);
    await client.close();
  });

  it("SIGTERM lets an in-flight call finish, then exits 0", async () => {
    const transport = new StreamableHTTPClientTransport(new URL(demo.url), {
      requestInit: { headers: { authorization: `Bearer ${demo.alice}` } },
    });
    const client = new Client({ name: "demo-test", version: "1.0.0" });
    await client.connect(transport);
    const progress: number[] = [];
    const call = client.callTool({ name: "count_slowly", arguments: { steps: 4, delayMs: 150 } }, undefined, {
      onprogress: (update) => progress.push(update.progress),
    });
    await new Promise((r) => setTimeout(r, 100));
    const exited = once(demo.child, "exit");
    demo.child.kill("SIGTERM");
    assert.equal(textOf(await call), "done 4");
    assert.deepEqual(progress, [1, 2, 3, 4]);
    const [code] = await exited;
    assert.equal(code, 0, demo.stderr());
    await client.close().catch(() => undefined);
  });
});

describe("npm run demo (the walkthrough)", () => {
  it("exits 0 with every one of bob's attempts refused and its security event shown", async () => {
    const child = spawn(process.execPath, [join(ROOT, "examples/demo-walkthrough.ts")], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    const [code] = await once(child, "exit");
    assert.equal(code, 0, output);
    assert.doesNotMatch(output, /BREACH/);
    assert.match(output, /refused {2}alice's session id with bob's token: HTTP 404/);
    assert.match(output, /"type":"session.denied","reason":"foreign-principal"/);
  });
});
