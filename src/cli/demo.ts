/**
 * `tenantgate demo`: the gateway on its embedded default, for a first look on one machine.
 *
 * Loopback only; SQLite and a master key under `./.tenantgate/` (created on first run, 0700 folder,
 * 0600 key); a local development issuer whose key pair is made fresh at every start (its tokens die
 * with the process); and the bundled demo upstream (`examples/demo-upstream/`), a multi-user notes
 * server that keys everything by the verified `Tenantgate-Assertion`. Nothing here is for production:
 * `serve --config` is.
 */
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { startDemoUpstream } from "../../examples/demo-upstream/server.ts";
import type { SecurityEventSink } from "../audit/security-events.ts";
import { parseConfig } from "../config/load-config.ts";
import { generateMasterKey } from "../crypto/keyring.ts";
import { type RunningGateway, startGateway } from "../gateway/start-gateway.ts";

export const DEMO_PORT = 8787;
export const DEMO_HOST = "127.0.0.1";
const DEMO_ISSUER = "https://dev-issuer.tenantgate.invalid";
const TOKEN_LIFETIME = "8h";

export interface DemoOptions {
  /** Folder for state; default `./.tenantgate`. */
  readonly dir?: string;
  /** Default 8787; 0 for any free port (the walkthrough and tests). */
  readonly port?: number;
  readonly log?: (line: string) => void;
  readonly sinks?: readonly SecurityEventSink[];
  /** Where the security events' JSON lines go. Default: stdout. */
  readonly eventsOut?: NodeJS.WritableStream;
}

export interface RunningDemo {
  readonly gateway: RunningGateway;
  /** The MCP endpoint clients connect to. */
  readonly mcpUrl: string;
  readonly tokens: { readonly alice: string; readonly bob: string };
  close(): Promise<void>;
}

export async function startDemo(options: DemoOptions = {}): Promise<RunningDemo> {
  const dir = resolve(options.dir ?? ".tenantgate");
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const keyFile = join(dir, "master.key");
  // `wx`: an existing key is kept (the SQLite file's sealed values depend on it), never overwritten.
  await writeFile(keyFile, `${generateMasterKey()}\n`, { mode: 0o600, flag: "wx" }).catch((error) => {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  });

  // The development issuer: a fresh Ed25519 pair; the public half is the JWKS file the gateway reads.
  const { privateKey, publicKey } = await generateKeyPair("EdDSA", { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: "demo", alg: "EdDSA", use: "sig" };
  const jwksFile = join(dir, "dev-issuer-jwks.json");
  await writeFile(jwksFile, JSON.stringify({ keys: [jwk] }), { mode: 0o600 });

  const port = options.port ?? DEMO_PORT;
  const upstream = await startDemoUpstream({ host: DEMO_HOST, port: 0 });
  try {
    const config = parseConfig(
      {
        listen: { host: DEMO_HOST, port },
        store: `sqlite:${join(dir, "demo.sqlite")}`,
        secrets: { masterKey: `file:${keyFile}` },
        auth: {
          issuers: [{ issuer: DEMO_ISSUER, jwksFile, algorithms: ["EdDSA"], tenantClaim: "tenant" }],
        },
        upstreams: [{ name: "notes", path: "/mcp", url: upstream.url, protocolVersions: LEGACY_VERSIONS }],
        audit: { stdout: true },
        // An ephemeral port: a second demo, or anything else on 8788, does not stop this one.
        admin: { listen: { port: 0 } },
      },
      { env: {} },
    );
    const gateway = await startGateway(config, {
      ...(options.log ? { log: options.log } : {}),
      ...(options.sinks ? { sinks: options.sinks } : {}),
      ...(options.eventsOut ? { eventsOut: options.eventsOut } : {}),
    });
    // The upstream learns who may sign assertions only now that the gateway's address is known.
    const publicUrl = gateway.config.publicUrl;
    upstream.trustGateway({
      issuer: publicUrl,
      jwksUrl: `${gateway.url}/.well-known/jwks.json`,
    });
    const mcpUrl = `${publicUrl}/mcp`;
    const token = (subject: string, tenant: string) =>
      new SignJWT({ tenant, scope: "" })
        .setProtectedHeader({ alg: "EdDSA", kid: "demo", typ: "JWT" })
        .setIssuer(DEMO_ISSUER)
        .setSubject(subject)
        .setAudience(`${publicUrl}/mcp`)
        .setIssuedAt()
        .setExpirationTime(TOKEN_LIFETIME)
        .sign(privateKey);
    const tokens = { alice: await token("alice", "acme"), bob: await token("bob", "globex") };
    return {
      gateway,
      mcpUrl,
      tokens,
      async close() {
        await gateway.close({ graceMs: 2_000 });
        await upstream.close();
      },
    };
  } catch (error) {
    await upstream.close();
    throw error;
  }
}

const LEGACY_VERSIONS = ["2025-03-26", "2025-06-18", "2025-11-25"];

/** What `tenantgate demo` prints once it is up. */
export function demoBanner(demo: RunningDemo): string {
  const { mcpUrl, tokens } = demo;
  const initialize = JSON.stringify({
    jsonrpc: "2.0",
    id: 1,
    method: "initialize",
    params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "curl", version: "1" } },
  });
  return [
    `tenantgate demo: gateway on ${mcpUrl} (loopback only; state in ./.tenantgate/)`,
    "",
    "Two users of the development issuer (tokens valid 8 hours, for this run only):",
    `  alice (tenant acme):   ${tokens.alice}`,
    `  bob   (tenant globex): ${tokens.bob}`,
    "",
    "Connect as alice (any MCP client with a bearer token works; with curl):",
    `  curl -si ${mcpUrl} -H "Authorization: Bearer ${tokens.alice}" \\`,
    `    -H "Content-Type: application/json" -H "Accept: application/json, text/event-stream" \\`,
    `    -d '${initialize}'`,
    "",
    "The answer's Mcp-Session-Id is alice's; presented with bob's token it is an unknown session (404).",
    ...(demo.gateway.adminUrl === undefined
      ? []
      : [
          `Admin API (loopback, no token): ${demo.gateway.adminUrl}/metrics, /readyz; alice's sessions:`,
          `  TENANTGATE_ADMIN_URL=${demo.gateway.adminUrl} ./run tenantgate sessions list --issuer ${DEMO_ISSUER} --subject alice --tenant acme`,
        ]),
    "A guided tour that tries exactly that: npm run demo. Security events are printed below as JSON lines.",
    "Ctrl-C stops the gateway.",
  ].join("\n");
}
