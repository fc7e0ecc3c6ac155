/**
 * `tenantgate sessions list | revoke`: the operator's side of the admin API (src/gateway/admin-server.ts).
 * The API's address and token come from TENANTGATE_ADMIN_URL (default http://127.0.0.1:8788) and
 * TENANTGATE_ADMIN_TOKEN (DESIGN operator contract), never from arguments, so a token does not land
 * in shell history or a process listing.
 */

import { GateError } from "../errors.ts";
import { KILL_SWITCH_CONFIRMATION } from "../gateway/admin-server.ts";
import { ANONYMOUS_ISSUER, API_KEY_ISSUER } from "../identity/principal.ts";

const DEFAULT_ADMIN_URL = "http://127.0.0.1:8788";
const ADMIN_TIMEOUT_MS = 15_000;

export const SESSIONS_USAGE = `  sessions list --issuer I --subject S [--tenant T] [--json]
                               a principal's live sessions (digest, upstream, version, created, expires)
  sessions revoke --session DIGEST
  sessions revoke --issuer I --subject S [--tenant T]
                               end one session, or every session and task a principal owns, on every replica
  sessions revoke --all --yes  the kill switch: every session ends, every client must initialize again
                               (--issuer api-key / anonymous name tenantgate's own issuers; the tenant
                               defaults to the issuer; the admin API is TENANTGATE_ADMIN_URL, default
                               ${DEFAULT_ADMIN_URL}, with TENANTGATE_ADMIN_TOKEN when it needs one)
`;

interface Flags {
  readonly values: ReadonlyMap<string, string>;
  readonly switches: ReadonlySet<string>;
}

function parseFlags(
  args: readonly string[],
  valued: readonly string[],
  switches: readonly string[],
  command = "sessions",
): Flags {
  const values = new Map<string, string>();
  const on = new Set<string>();
  for (let index = 0; index < args.length; index++) {
    const flag = args[index] ?? "";
    const name = flag.replace(/^--/, "");
    if (flag.startsWith("--") && switches.includes(name) && !on.has(name)) {
      on.add(name);
    } else if (
      flag.startsWith("--") &&
      valued.includes(name) &&
      !values.has(name) &&
      index + 1 < args.length
    ) {
      values.set(name, args[index + 1] ?? "");
      index++;
    } else {
      // Not echoed: a mistyped argument may be a secret pasted in the wrong place.
      throw new GateError("ERR_ARGUMENT_INVALID", `${command}: unexpected argument at position ${index + 2}`);
    }
  }
  return { values, switches: on };
}

function principalFrom(
  flags: Flags,
  command = "sessions",
): { issuer: string; subject: string; tenant?: string } {
  const issuer = flags.values.get("issuer");
  const subject = flags.values.get("subject");
  if (issuer === undefined || subject === undefined) {
    throw new GateError("ERR_ARGUMENT_INVALID", `${command}: --issuer and --subject name the principal`);
  }
  const named = issuer === "api-key" ? API_KEY_ISSUER : issuer === "anonymous" ? ANONYMOUS_ISSUER : issuer;
  const tenant = flags.values.get("tenant");
  return { issuer: named, subject, ...(tenant === undefined ? {} : { tenant }) };
}

export async function sessionsCommand(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  out: (text: string) => void,
): Promise<number> {
  const [action, ...rest] = args;
  if (action === "list") {
    const flags = parseFlags(rest, ["issuer", "subject", "tenant"], ["json"]);
    const answer = (await callAdmin(env, "/admin/sessions/list", { principal: principalFrom(flags) })) as {
      sessions: Array<Record<string, string>>;
    };
    if (flags.switches.has("json")) {
      out(`${JSON.stringify(answer)}\n`);
      return 0;
    }
    if (answer.sessions.length === 0) {
      out("no live sessions\n");
      return 0;
    }
    for (const session of answer.sessions) {
      out(
        `${session["session"]}  ${session["upstream"]}  ${session["protocolVersion"]}  created ${session["createdAt"]}  expires ${session["expiresAt"]}\n`,
      );
    }
    return 0;
  }
  if (action === "revoke") {
    const flags = parseFlags(rest, ["session", "issuer", "subject", "tenant"], ["all", "yes"]);
    if (flags.switches.has("all")) {
      if (!flags.switches.has("yes") || flags.values.size > 0) {
        throw new GateError(
          "ERR_ARGUMENT_INVALID",
          "sessions: revoke --all ends every session; confirm with --yes",
        );
      }
      await callAdmin(env, "/admin/kill-switch", { confirm: KILL_SWITCH_CONFIRMATION });
      out("every session revoked; clients must initialize again\n");
      return 0;
    }
    const session = flags.values.get("session");
    if (session !== undefined) {
      if (flags.values.size > 1 || flags.switches.size > 0) {
        throw new GateError("ERR_ARGUMENT_INVALID", "sessions: --session takes no other flag");
      }
      const answer = (await callAdmin(env, "/admin/sessions/revoke", { session })) as { sessions: number };
      out(answer.sessions === 1 ? "session revoked\n" : "no such live session\n");
      return answer.sessions === 1 ? 0 : 1;
    }
    if (flags.switches.size > 0)
      throw new GateError("ERR_ARGUMENT_INVALID", "sessions: --yes goes with --all");
    const answer = (await callAdmin(env, "/admin/sessions/revoke", { principal: principalFrom(flags) })) as {
      sessions: number;
      tasks: number;
    };
    out(`revoked ${answer.sessions} session(s) and ${answer.tasks} task(s)\n`);
    return 0;
  }
  throw new GateError("ERR_ARGUMENT_INVALID", "sessions: list or revoke (tenantgate help)");
}

export const VAULT_USAGE = `  vault list --issuer I --subject S [--tenant T] [--json]
                               a principal's vault entries: names, when written, key id (never values)
  vault put --issuer I --subject S [--tenant T] --name NAME
                               store the value read on stdin as the principal's entry NAME
  vault delete --issuer I --subject S [--tenant T] --name NAME
  vault delete --issuer I --subject S [--tenant T] --all --yes
  vault keys                   how many entries each master key id seals
  vault reseal                 re-seal every entry under the active key (after secrets.activeKeyId
                               changes); a key id at 0 in vault keys can then be removed
`;

/** `tenantgate vault …`: an operator enrolls, lists and removes a principal's entries; values go in on stdin only. */
export async function vaultCommand(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  out: (text: string) => void,
  readValue: () => Promise<string>,
): Promise<number> {
  const [action, ...rest] = args;
  const principalFlags = ["issuer", "subject", "tenant"];
  if (action === "list") {
    const flags = parseFlags(rest, principalFlags, ["json"], "vault");
    const answer = (await callAdmin(env, "/admin/vault/list", {
      principal: principalFrom(flags, "vault"),
    })) as {
      entries: Array<Record<string, string>>;
    };
    if (flags.switches.has("json")) out(`${JSON.stringify(answer)}\n`);
    else if (answer.entries.length === 0) out("no entries\n");
    else
      for (const entry of answer.entries)
        out(`${entry["name"]}  written ${entry["updatedAt"]}  key ${entry["keyId"]}\n`);
    return 0;
  }
  if (action === "put") {
    const flags = parseFlags(rest, [...principalFlags, "name"], [], "vault");
    const name = flags.values.get("name");
    if (name === undefined) throw new GateError("ERR_ARGUMENT_INVALID", "vault: put needs --name");
    // The value comes on stdin, never as an argument: arguments show in process listings and history.
    const value = await readValue();
    if (value.length === 0)
      throw new GateError("ERR_ARGUMENT_INVALID", "vault: put reads the value on stdin");
    const answer = (await callAdmin(env, "/admin/vault/put", {
      principal: principalFrom(flags, "vault"),
      name,
      value,
    })) as { created: boolean };
    out(answer.created ? "entry stored\n" : "entry replaced\n");
    return 0;
  }
  if (action === "delete") {
    const flags = parseFlags(rest, [...principalFlags, "name"], ["all", "yes"], "vault");
    const principal = principalFrom(flags, "vault");
    const name = flags.values.get("name");
    if (flags.switches.has("all")) {
      if (!flags.switches.has("yes") || name !== undefined) {
        throw new GateError(
          "ERR_ARGUMENT_INVALID",
          "vault: delete --all removes every entry; confirm with --yes",
        );
      }
      const answer = (await callAdmin(env, "/admin/vault/delete", { principal, all: true })) as {
        removed: number;
      };
      out(`removed ${answer.removed} entr${answer.removed === 1 ? "y" : "ies"}\n`);
      return 0;
    }
    if (name === undefined || flags.switches.size > 0) {
      throw new GateError("ERR_ARGUMENT_INVALID", "vault: delete needs --name, or --all --yes");
    }
    const answer = (await callAdmin(env, "/admin/vault/delete", { principal, name })) as { removed: number };
    out(answer.removed === 1 ? "entry removed\n" : "no such entry\n");
    return answer.removed === 1 ? 0 : 1;
  }
  if (action === "keys" || action === "reseal") {
    parseFlags(rest, [], [], "vault");
    if (action === "keys") {
      const answer = (await callAdmin(env, "/admin/vault/keys", {})) as { usage: Record<string, number> };
      for (const [keyId, count] of Object.entries(answer.usage))
        out(`${keyId}  ${count} entr${count === 1 ? "y" : "ies"}\n`);
      return 0;
    }
    const report = (await callAdmin(env, "/admin/vault/reseal", {})) as {
      resealed: number;
      unreadable: number;
    };
    out(`resealed ${report.resealed}; unreadable ${report.unreadable}\n`);
    return report.unreadable === 0 ? 0 : 1;
  }
  throw new GateError("ERR_ARGUMENT_INVALID", "vault: list, put, delete, keys or reseal (tenantgate help)");
}

async function callAdmin(env: NodeJS.ProcessEnv, path: string, body: unknown): Promise<unknown> {
  const base = env["TENANTGATE_ADMIN_URL"] ?? DEFAULT_ADMIN_URL;
  let url: URL;
  try {
    url = new URL(path, base.endsWith("/") ? base : `${base}/`);
  } catch {
    throw new GateError("ERR_ARGUMENT_INVALID", "TENANTGATE_ADMIN_URL must be an http(s) URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new GateError("ERR_ARGUMENT_INVALID", "TENANTGATE_ADMIN_URL must be an http(s) URL");
  }
  const token = env["TENANTGATE_ADMIN_TOKEN"];
  let response: Response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: JSON.stringify(body),
      redirect: "error",
      signal: AbortSignal.timeout(ADMIN_TIMEOUT_MS),
    });
  } catch {
    throw new GateError("ERR_ARGUMENT_INVALID", `the admin API at ${url.origin} did not answer`);
  }
  const text = await response.text();
  if (response.status === 401) {
    throw new GateError(
      "ERR_ARGUMENT_INVALID",
      `the admin API at ${url.origin} refused the request: set TENANTGATE_ADMIN_TOKEN`,
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (!response.ok) {
    const code = (parsed as { error?: { code?: unknown } } | undefined)?.error?.code;
    throw new GateError(
      "ERR_ARGUMENT_INVALID",
      `the admin API answered ${response.status}${typeof code === "string" ? ` ${code}` : ""}`,
    );
  }
  return parsed;
}
