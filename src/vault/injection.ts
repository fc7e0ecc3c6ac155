import { GateError, invalidArgument } from "../errors.ts";
import { VAULT_ENTRY_NAME } from "./vault.ts";

/**
 * `upstreams[].inject`: request headers built from the caller's own vault entries, e.g.
 * `Authorization: Bearer {vault:github_token}`. A template is literal text with `{vault:NAME}`
 * placeholders and nothing else: any other brace is refused when the config is read, so a template
 * can never pick its entry from anything but the operator's text, and the owner of the entries is
 * always the verified principal of the request (THREATS C1).
 */

export type TemplatePart = { readonly literal: string } | { readonly entry: string };

export interface InjectedHeader {
  /** Lower-cased header name. */
  readonly name: string;
  readonly parts: readonly TemplatePart[];
}

export interface InjectionPlan {
  readonly headers: readonly InjectedHeader[];
  /** Every entry the headers name, once each, in the order first named. */
  readonly entries: readonly string[];
}

const PLACEHOLDER = /\{vault:([^{}]*)\}/g;

/**
 * A command upstream's `env` value `vault:NAME` names the caller's vault entry NAME: the name as
 * written (the caller checks it against VAULT_ENTRY_NAME), or undefined for a literal value.
 */
export function environmentVaultReference(value: string): string | undefined {
  return value.startsWith("vault:") ? value.slice("vault:".length) : undefined;
}

/** The template's parts, or why it is not a template (for the config error; never the value). */
export function parseInjectTemplate(template: string): TemplatePart[] | string {
  const parts: TemplatePart[] = [];
  let at = 0;
  for (const match of template.matchAll(PLACEHOLDER)) {
    const before = template.slice(at, match.index);
    if (/[{}]/.test(before)) return "has a brace that is not a {vault:NAME} placeholder";
    if (before.length > 0) parts.push({ literal: before });
    const name = match[1] ?? "";
    if (!VAULT_ENTRY_NAME.test(name)) {
      return "names a vault entry that is not 1-64 characters of a-z 0-9 _ starting with a letter";
    }
    parts.push({ entry: name });
    at = match.index + match[0].length;
  }
  const rest = template.slice(at);
  if (/[{}]/.test(rest)) return "has a brace that is not a {vault:NAME} placeholder";
  if (rest.length > 0) parts.push({ literal: rest });
  if (!parts.some((part) => "entry" in part)) return "names no {vault:NAME} entry";
  return parts;
}

/** The plan for one upstream's `inject` (already validated by the config schema). */
export function planInjection(inject: Readonly<Record<string, string>>): InjectionPlan {
  const headers: InjectedHeader[] = [];
  const entries: string[] = [];
  for (const [name, template] of Object.entries(inject)) {
    const parts = parseInjectTemplate(template);
    if (typeof parts === "string") throw invalidArgument(`inject["${name}"]`, parts);
    headers.push({ name: name.toLowerCase(), parts });
    for (const part of parts) {
      if ("entry" in part && !entries.includes(part.entry)) entries.push(part.entry);
    }
  }
  return { headers, entries };
}

/**
 * The headers with the caller's values in place. Every entry must be in `values` (the caller checked
 * `missing` first): a gap here is the gateway's own mistake, never a header with a hole in it.
 */
export function renderInjection(
  plan: InjectionPlan,
  values: ReadonlyMap<string, string>,
): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const header of plan.headers) {
    let value = "";
    for (const part of header.parts) {
      if ("literal" in part) {
        value += part.literal;
        continue;
      }
      const entry = values.get(part.entry);
      if (entry === undefined) throw new GateError("ERR_INTERNAL", "injection without its entry");
      value += entry;
    }
    headers[header.name] = value;
  }
  return headers;
}
