#!/usr/bin/env node
/**
 * The `tenantgate` command. Each subcommand is a small function; errors print a message that names
 * the setting at fault (never a secret) and exit non-zero.
 */
import { writeFile } from "node:fs/promises";
import { resolve } from "node:path";
import { CHECKPOINT_SUFFIX, verifyAuditSeries } from "../audit/audit-chain.ts";
import { loadConfig } from "../config/load-config.ts";
import { digest, mintId } from "../crypto/ids.ts";
import { generateMasterKey, loadKeyring } from "../crypto/keyring.ts";
import { GateError, isGateError } from "../errors.ts";
import { ADMIN_TOKEN_PURPOSE } from "../gateway/admin-server.ts";
import { startGateway } from "../gateway/start-gateway.ts";
import { SESSIONS_USAGE, sessionsCommand, VAULT_USAGE, vaultCommand } from "./admin-commands.ts";
import { demoBanner, startDemo } from "./demo.ts";

const USAGE = `usage: tenantgate <command>

  keys generate [--out FILE]   print a new master key (base64url), or write it to FILE with mode 0600
  keys api-key                 print a new API key (256 bits) and the digest to put in auth.apiKeys[]
  keys digest                  read an API key on stdin and print its digest (keys under 32 characters refused)
  keys admin-token             print a new admin API token (256 bits) and the digest for admin.tokenDigest
  keys rotate --config FILE --out KEYFILE [--id ID]
                               a new master key in KEYFILE (0600) and the secrets section that adds it as
                               the active key (then: restart, tenantgate vault reseal, tenantgate vault keys)
  serve --config FILE          run the gateway a config file (JSON or YAML) describes; SIGTERM stops it gracefully
  demo [--port N]              the gateway on its embedded default: loopback (127.0.0.1:8787), SQLite
                               under ./.tenantgate/, a demo upstream, a development issuer and tokens
                               for two users
  audit verify FILE... --config CONFIG [--expect-head H]
                               check an audit file's chain with the master keys CONFIG names (several
                               files: a rotated series, oldest first, the current file last); prints
                               "ok: N lines, head H", or names the file and first bad line and exits 1
${SESSIONS_USAGE}${VAULT_USAGE}  help                         this text
`;

async function readStdin(maxBytes = 4096): Promise<string> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of process.stdin) {
    total += (chunk as Buffer).byteLength;
    if (total > maxBytes) throw new GateError("ERR_ARGUMENT_INVALID", "input is too large");
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8").trim();
}

async function keysCommand(args: string[]): Promise<number> {
  const [action, ...rest] = args;
  if (action === "generate") {
    const key = generateMasterKey();
    if (rest[0] === "--out" && rest[1]) {
      // `wx`: never overwrite an existing key file (that would orphan everything sealed under it).
      // Created with mode 0600 (umask only removes bits), so it is never readable by others.
      await writeFile(rest[1], `${key}\n`, { mode: 0o600, flag: "wx" });
      process.stderr.write(`wrote a new master key to ${rest[1]} (mode 0600)\n`);
      return 0;
    }
    if (rest.length > 0) throw new GateError("ERR_ARGUMENT_INVALID", "keys generate takes only --out FILE");
    process.stdout.write(`${key}\n`);
    return 0;
  }
  if (action === "rotate") {
    return rotateKeys(rest);
  }
  if (action === "api-key") {
    const apiKey = `tg_${mintId(32)}`;
    process.stdout.write(
      `api key (give to the client, store nowhere else): ${apiKey}\ndigest (auth.apiKeys[].digest): ${digest("api-key", apiKey)}\n`,
    );
    return 0;
  }
  if (action === "admin-token") {
    const token = `tga_${mintId(32)}`;
    process.stdout.write(
      `admin token (for TENANTGATE_ADMIN_TOKEN, store nowhere else): ${token}\ndigest (admin.tokenDigest): ${digest(ADMIN_TOKEN_PURPOSE, token)}\n`,
    );
    return 0;
  }
  if (action === "digest") {
    const apiKey = await readStdin();
    if (!apiKey) throw new GateError("ERR_ARGUMENT_INVALID", "keys digest reads an API key on stdin");
    // The digest is unkeyed (docs/decisions.md 3): a short, chosen key could be guessed from it.
    if (apiKey.length < 32) {
      throw new GateError(
        "ERR_ARGUMENT_INVALID",
        "an API key needs at least 32 characters; use keys api-key",
      );
    }
    process.stdout.write(`${digest("api-key", apiKey)}\n`);
    return 0;
  }
  process.stderr.write(USAGE);
  return 2;
}

/**
 * `keys rotate --config FILE --out KEYFILE [--id ID]`: a new master key in KEYFILE (0600, never
 * overwriting) and the `secrets` section that keeps every current key and makes the new one active.
 * The config is not edited: the operator applies the section, restarts the replicas, runs
 * `tenantgate vault reseal`, and removes an old key once `tenantgate vault keys` counts 0 for it.
 */
async function rotateKeys(args: string[]): Promise<number> {
  const values = new Map<string, string>();
  for (let index = 0; index < args.length; index += 2) {
    const flag = args[index] ?? "";
    const value = args[index + 1];
    if (!["--config", "--out", "--id"].includes(flag) || value === undefined || values.has(flag)) {
      throw new GateError("ERR_ARGUMENT_INVALID", "keys rotate takes --config FILE --out KEYFILE [--id ID]");
    }
    values.set(flag, value);
  }
  const file = values.get("--config");
  const out = values.get("--out");
  if (file === undefined || out === undefined) {
    throw new GateError("ERR_ARGUMENT_INVALID", "keys rotate takes --config FILE --out KEYFILE [--id ID]");
  }
  const { secrets } = await loadConfig({ file });
  const id = values.get("--id") ?? `k${new Date().toISOString().slice(0, 10).replaceAll("-", "")}`;
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(id) || secrets.masterKeys.some((key) => key.id === id)) {
    throw new GateError(
      "ERR_ARGUMENT_INVALID",
      "keys rotate: --id must be a new key id (A-Z a-z 0-9 _ -, at most 32)",
    );
  }
  await writeFile(out, `${generateMasterKey()}\n`, { mode: 0o600, flag: "wx" });
  const section = {
    secrets: {
      masterKeys: [
        ...secrets.masterKeys.map((key) => ({ id: key.id, key: key.key })),
        { id, key: `file:${resolve(out)}` },
      ],
      activeKeyId: id,
      ...(secrets.tagKey === undefined ? {} : { tagKey: secrets.tagKey }),
    },
  };
  process.stdout.write(`${JSON.stringify(section, null, 2)}\n`);
  process.stderr.write(
    `wrote a new master key to ${out} (mode 0600). Replace secrets in ${file} with the section above, restart every replica, run \`tenantgate vault reseal\`, and remove the old key once \`tenantgate vault keys\` counts 0 for it.\n`,
  );
  return 0;
}

async function serveCommand(args: string[]): Promise<number> {
  const file = args[0] === "--config" ? args[1] : undefined;
  if (file === undefined || args.length !== 2) {
    process.stderr.write(
      "tenantgate: serve needs --config FILE (see docs/operator-guide.md); `tenantgate demo` runs a ready-made local gateway\n",
    );
    return 2;
  }
  const config = await loadConfig({ file });
  const gateway = await startGateway(config);
  // Plain lines on the terminal as well as in the log (which may be a file nobody is watching yet).
  for (const warning of gateway.warnings) process.stderr.write(`${warning}\n`);
  process.stderr.write(`tenantgate: serving on ${gateway.url} (public URL ${gateway.config.publicUrl})\n`);
  if (gateway.adminUrl !== undefined) process.stderr.write(`tenantgate: admin API on ${gateway.adminUrl}\n`);
  return untilSignal(() => gateway.close());
}

async function demoCommand(args: string[]): Promise<number> {
  let port: number | undefined;
  if (
    args.length === 2 &&
    args[0] === "--port" &&
    /^\d{1,5}$/.test(args[1] ?? "") &&
    Number(args[1]) < 65536
  ) {
    port = Number(args[1]);
  } else if (args.length > 0) {
    throw new GateError("ERR_ARGUMENT_INVALID", "demo takes only --port N (default 8787)");
  }
  const demo = await startDemo(port === undefined ? {} : { port });
  process.stderr.write(`${demoBanner(demo)}\n`);
  return untilSignal(() => demo.close());
}

async function auditCommand(args: string[]): Promise<number> {
  const [action, ...rest] = args;
  if (action !== "verify") {
    process.stderr.write(USAGE);
    return 2;
  }
  const files: string[] = [];
  let configFile: string | undefined;
  let expectHead: string | undefined;
  for (let index = 0; index < rest.length; index += 1) {
    const argument = rest[index] as string;
    if (!argument.startsWith("--")) {
      files.push(argument);
      continue;
    }
    const value = rest[index + 1];
    index += 1;
    if (argument === "--config" && value !== undefined && configFile === undefined) configFile = value;
    else if (argument === "--expect-head" && value !== undefined && expectHead === undefined)
      expectHead = value;
    else {
      throw new GateError(
        "ERR_ARGUMENT_INVALID",
        "audit verify takes FILE..., --config CONFIG and optionally --expect-head SEQ:MAC",
      );
    }
  }
  if (files.length === 0) {
    process.stderr.write(USAGE);
    return 2;
  }
  if (configFile === undefined) {
    // The keys come from the gateway's own configuration, loaded the way serve loads them, so a
    // rotated file's every key id resolves exactly as it did when the lines were written.
    throw new GateError(
      "ERR_ARGUMENT_INVALID",
      "audit verify needs --config CONFIG (the gateway's config file)",
    );
  }
  const config = await loadConfig({ file: configFile });
  const keyring = await loadKeyring(config.secrets, { baseDir: config.configDir });
  const result = await verifyAuditSeries(files, {
    keyring,
    ...(expectHead === undefined ? {} : { expectHead }),
  });
  if (!result.ok) {
    process.stdout.write(`not ok: ${result.file}: line ${result.line}: ${result.reason}\n`);
    return 1;
  }
  const count = files.length === 1 ? "" : `${files.length} files, `;
  process.stdout.write(`ok: ${count}${result.lines} lines, head ${result.head}\n`);
  const last = files.at(-1) as string;
  if (result.checkedAgainst === "nothing") {
    process.stderr.write(
      `tenantgate: warning: ${last} has no checkpoint (${last}${CHECKPOINT_SUFFIX}) and no --expect-head was given: truncation was not checked\n`,
    );
  }
  if (result.sealed) {
    // Not truncated, but the lines written after this file was rotated out are in a file not given:
    // fine for an archive checked alone, a loss if this was meant to be the current file.
    process.stderr.write(
      `tenantgate: warning: ${last} ends with its audit.end record: it was rotated out, and the file that continues it was not checked\n`,
    );
  }
  if (result.lastKeyId !== keyring.activeKeyId) {
    // Not a verdict: a file last written before a key rotation ends under the old key. But a
    // retired key's holder could have appended that segment; the decision log (86) explains.
    process.stderr.write(
      `tenantgate: warning: the last segment of ${last} is under key id ${result.lastKeyId}, not the active key ${keyring.activeKeyId}\n`,
    );
  }
  return 0;
}

/** Waits for SIGTERM or SIGINT, then stops gracefully; exit 0 once everything has closed. */
function untilSignal(stop: () => Promise<void>): Promise<number> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
      process.stderr.write(`tenantgate: ${signal}, finishing in-flight requests\n`);
      stop().then(
        () => resolve(0),
        () => resolve(1),
      );
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  switch (command) {
    case "keys":
      return keysCommand(args);
    case "serve":
      return serveCommand(args);
    case "demo":
      return demoCommand(args);
    case "audit":
      return auditCommand(args);
    case "sessions":
      return sessionsCommand(args, process.env, (text) => process.stdout.write(text));
    case "vault":
      return vaultCommand(
        args,
        process.env,
        (text) => process.stdout.write(text),
        () => readStdin(16 * 1024),
      );
    case undefined:
    case "help":
    case "--help":
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      // The mistyped word is not echoed: it may be a secret pasted in the wrong place.
      process.stderr.write(`tenantgate: unknown command\n${USAGE}`);
      return 2;
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (error) {
  // System errors (EEXIST, EACCES) name a path the operator gave, never a secret: worth showing.
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const message = isGateError(error)
    ? `${error.code}: ${error.message}`
    : typeof code === "string" && /^E[A-Z]+$/.test(code)
      ? (error as Error).message
      : "unexpected error";
  process.stderr.write(`tenantgate: ${message}\n`);
  process.exitCode = 1;
}
// serve and demo leave timers and sockets of libraries behind once stopped; the exit is explicit.
if (process.argv[2] === "serve" || process.argv[2] === "demo") process.exit();
