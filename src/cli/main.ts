#!/usr/bin/env node
/**
 * The `tenantgate` command. Each subcommand is a small function; errors print a message that names
 * the setting at fault (never a secret) and exit non-zero.
 */
import { writeFile } from "node:fs/promises";
import { digest, mintId } from "../crypto/ids.ts";
import { generateMasterKey } from "../crypto/keyring.ts";
import { GateError, isGateError } from "../errors.ts";

const USAGE = `usage: tenantgate <command>

  keys generate [--out FILE]   print a new master key (base64url), or write it to FILE with mode 0600
  keys api-key                 print a new API key (256 bits) and the digest to put in auth.apiKeys[]
  keys digest                  read an API key on stdin and print its digest (keys under 32 characters refused)
  demo                         the gateway on its embedded default (not built yet: see the README)
  help                         this text
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
  if (action === "api-key") {
    const apiKey = `tg_${mintId(32)}`;
    process.stdout.write(
      `api key (give to the client, store nowhere else): ${apiKey}\ndigest (auth.apiKeys[].digest): ${digest("api-key", apiKey)}\n`,
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

export async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  switch (command) {
    case "keys":
      return keysCommand(args);
    case "demo":
    case "serve":
      process.stderr.write(
        `tenantgate: the gateway's HTTP edge (${command}) is not built yet; see the README's status\n`,
      );
      return 1;
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
