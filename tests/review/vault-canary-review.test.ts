/**
 * Review of issue 6, THREATS E1 for the vault: a real `tenantgate serve` process with every output
 * on, driven through enrollment (good and refused values), injection (accepted, refused by the
 * upstream, failing), a missing entry, the admin vault routes, and a stdio upstream whose process
 * prints its injected value on stderr. No vault value appears in any output, raw or cheaply encoded.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { INITIALIZE, mcpHeaders } from "../support/gateway-harness.ts";
import { type GatewayProcess, spawnGateway } from "../support/processes.ts";
import { type RecordingUpstream, startRecordingUpstream } from "../support/recording-upstream.ts";
import {
  makeSigningKey,
  nowSeconds,
  type SigningKey,
  signToken,
  writeJwksFile,
} from "../support/token-issuer.ts";

const ISSUER = "https://issuer.test";
const MASTER_KEY_VARIABLE = "TG_VAULT_CANARY_MASTER_KEY";
const PROBE = new URL("../support/stdio-probe-server.ts", import.meta.url).pathname;

function encodedForms(value: string): string[] {
  const bytes = Buffer.from(value, "utf8");
  return [
    ...new Set([
      value,
      encodeURIComponent(value),
      bytes.toString("base64"),
      bytes.toString("base64url"),
      bytes.toString("hex"),
      JSON.stringify(value).slice(1, -1),
    ]),
  ];
}

describe("E1 review: vault values never reach a log or audit line", () => {
  let dir: string;
  let key: SigningKey;
  let jwks: Awaited<ReturnType<typeof writeJwksFile>>;
  let upstream: RecordingUpstream;
  let gateway: GatewayProcess | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "tenantgate-vault-e1-"));
    key = await makeSigningKey("EdDSA", "main");
    jwks = await writeJwksFile({ keys: [key.publicJwk] });
    upstream = await startRecordingUpstream();
  });
  after(async () => {
    await gateway?.close();
    await upstream?.close();
    await jwks?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it("E1 enrollment, injection, refusals, admin routes and stdio stderr write no vault value anywhere", async () => {
    const logFile = join(dir, "gateway.log");
    const auditFile = join(dir, "audit.jsonl");
    gateway = await spawnGateway({
      config: {
        listen: { host: "127.0.0.1", port: 0 },
        store: "memory:",
        secrets: { masterKey: `env:${MASTER_KEY_VARIABLE}` },
        auth: {
          issuers: [{ issuer: ISSUER, jwksFile: jwks.path, algorithms: ["EdDSA"], tenantClaim: "tenant" }],
        },
        upstreams: [
          {
            name: "recorder",
            path: "/mcp",
            url: upstream.url,
            protocolVersions: ["2025-06-18", "2025-11-25"],
            inject: { Authorization: "Bearer {vault:api_token}", "X-Extra": "k={vault:extra_token}" },
          },
          {
            name: "probe",
            path: "/probe",
            command: process.execPath,
            args: [PROBE],
            env: { API_TOKEN: "vault:api_token" },
            stdio: { startTimeout: "20s" },
          },
        ],
        audit: { stdout: true, file: auditFile },
        log: { level: "info", file: logFile },
        admin: { listen: { port: 0 } },
      },
      env: { [MASTER_KEY_VARIABLE]: randomBytes(32).toString("base64url") },
    });
    const hex = () => randomBytes(12).toString("hex");
    const secret = `canary-vault-${hex()}`;
    const extra = `canary-extra-${hex()}`;
    const refused = `canary-refused-${hex()}`;
    const adminSecret = `canary-admin-${hex()}`;
    const token = (audiencePath: string) =>
      signToken(key, {
        iss: ISSUER,
        sub: "alice",
        tenant: "acme",
        aud: `${gateway?.url}${audiencePath}`,
        iat: nowSeconds(),
        exp: nowSeconds() + 600,
      });
    const mcpToken = await token("/mcp");
    const probeToken = await token("/probe");
    const put = async (path: string, bearer: string, value: unknown): Promise<number> => {
      const answer = await fetch(`${gateway?.url}/.tenantgate/vault${path}`, {
        method: "PUT",
        headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json" },
        body: JSON.stringify({ value }),
      });
      await answer.arrayBuffer();
      return answer.status;
    };

    assert.equal(await put("/mcp/api_token", mcpToken, secret), 201);
    // Missing extra_token first: 403 naming it.
    const missing = await fetch(`${gateway.url}/mcp`, {
      method: "POST",
      headers: mcpHeaders({ authorization: `Bearer ${mcpToken}` }),
      body: JSON.stringify(INITIALIZE),
    });
    assert.equal(missing.status, 403);
    await missing.arrayBuffer();
    assert.equal(await put("/mcp/extra_token", mcpToken, extra), 201);
    // Refused values carrying a canary.
    assert.equal(await put("/mcp/api_token", mcpToken, `${refused}\r\nX-Evil: 1`), 400);
    assert.equal(await put("/mcp/api_token", mcpToken, ` ${refused}`), 400);
    assert.equal(await put("/mcp/api_token", mcpToken, `${refused}${"x".repeat(9000)}`), 400);

    const initialized = await fetch(`${gateway.url}/mcp`, {
      method: "POST",
      headers: mcpHeaders({ authorization: `Bearer ${mcpToken}` }),
      body: JSON.stringify(INITIALIZE),
    });
    assert.equal(initialized.status, 200, await initialized.text());
    const session = {
      "mcp-session-id": initialized.headers.get("mcp-session-id") ?? "",
      "mcp-protocol-version": "2025-11-25",
    };
    const list = () =>
      fetch(`${gateway?.url}/mcp`, {
        method: "POST",
        headers: mcpHeaders({ authorization: `Bearer ${mcpToken}`, ...session }),
        body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }),
      });
    const ok = await list();
    assert.equal(ok.status, 200);
    await ok.arrayBuffer();
    for (const status of [401, 403, 500]) {
      upstream.failWith(status);
      const failed = await list();
      await failed.arrayBuffer();
    }
    upstream.failWith(null);
    assert.ok(
      upstream.requests.some((request) => request.headers["authorization"] === `Bearer ${secret}`),
      "injected",
    );
    assert.ok(upstream.requests.some((request) => request.headers["x-extra"] === `k=${extra}`));

    // The stdio process prints its injected value on stderr.
    const init = await fetch(`${gateway.url}/probe`, {
      method: "POST",
      headers: mcpHeaders({ authorization: `Bearer ${probeToken}` }),
      body: JSON.stringify(INITIALIZE),
    });
    assert.equal(init.status, 200, await init.text());
    const probeSession = {
      "mcp-session-id": init.headers.get("mcp-session-id") ?? "",
      "mcp-protocol-version": "2025-11-25",
    };
    const printed = await fetch(`${gateway.url}/probe`, {
      method: "POST",
      headers: mcpHeaders({ authorization: `Bearer ${probeToken}`, ...probeSession }),
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: 3,
        method: "tools/call",
        params: { name: "stderr", arguments: { variable: "API_TOKEN" } },
      }),
    });
    assert.equal(printed.status, 200, await printed.text());

    // Admin routes: put (value on the wire), list, keys, reseal.
    const admin = (path: string, body: unknown) =>
      fetch(`${gateway?.adminUrl}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      }).then(async (answer) => ({ status: answer.status, text: await answer.text() }));
    const principal = { issuer: ISSUER, subject: "bob", tenant: "acme" };
    assert.equal(
      (await admin("/admin/vault/put", { principal, name: "api_token", value: adminSecret })).status,
      200,
    );
    assert.equal(
      (await admin("/admin/vault/put", { principal, name: "api_token", value: `${refused}\n` })).status,
      400,
    );
    const listed = await admin("/admin/vault/list", { principal });
    assert.equal(listed.status, 200);
    assert.ok(!listed.text.includes(adminSecret));
    assert.equal((await admin("/admin/vault/keys", {})).status, 200);
    assert.equal((await admin("/admin/vault/reseal", {})).status, 200);

    await new Promise((resolve) => setTimeout(resolve, 500));
    const running = gateway;
    gateway = undefined;
    const output = running.output;
    await running.close();
    const { stdout, stderr } = output();
    const outputs: Record<string, string> = {
      stdout,
      stderr,
      "log.file": await readFile(logFile, "utf8"),
      "audit.file": await readFile(auditFile, "utf8"),
    };
    assert.match(outputs["log.file"] ?? "", /probe: API_TOKEN=\[redacted\]/, "the stderr line was logged");
    for (const [what, value] of Object.entries({ secret, extra, refused, adminSecret })) {
      for (const form of encodedForms(value)) {
        for (const [where, text] of Object.entries(outputs)) {
          assert.ok(!text.includes(form), `${what} (${form.slice(0, 12)}…) in ${where}`);
        }
      }
    }
  });
});
