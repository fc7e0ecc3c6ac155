import { isIP } from "node:net";
import { isLoopbackHost } from "./loopback.ts";
import { hasControlCharacter } from "./value-checks.ts";

/**
 * Checks for the network-shaped values in the config: listen hosts, CIDRs, Host and Origin
 * allowlists and URLs. Each returns the canonical value, or undefined when the text is refused; the
 * schema turns a refusal into a message that names the setting (never the text: a URL may carry a
 * password).
 */

const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * A host to bind or to expect: an IP address or a DNS name, lower-cased. A name whose last label is
 * all digits (`127.1`, `0x7f.0.0.1`) is refused: URL parsers and `getaddrinfo` read those as IPv4 in
 * ways that differ, and the plain dotted form is always available. IPv6 zone ids are refused too.
 */
export function canonicalHost(text: string): string | undefined {
  if (isIP(text) !== 0) return text.includes("%") ? undefined : text.toLowerCase();
  const host = text.toLowerCase();
  if (host.length === 0 || host.length > 253) return undefined;
  const labels = host.split(".");
  if (!labels.every((label) => DNS_LABEL.test(label))) return undefined;
  const last = labels.at(-1) ?? "";
  if (/^(?:\d+|0x[0-9a-f]*)$/.test(last)) return undefined;
  return host;
}

/** The host part of a Host header value (`name`, `v4`, `[v6]`) followed by an optional port. */
export function canonicalHostHeader(text: string): string | undefined {
  const lower = text.toLowerCase();
  const match = /^(\[[0-9a-f:.]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(lower);
  if (!match) return undefined;
  const [, hostPart = "", port] = match;
  if (port !== undefined && (Number(port) > 65535 || (port.length > 1 && port.startsWith("0")))) {
    return undefined;
  }
  if (hostPart.startsWith("[")) {
    if (isIP(hostPart.slice(1, -1)) !== 6) return undefined;
  } else if (canonicalHost(hostPart) === undefined) {
    return undefined;
  }
  return lower;
}

/**
 * A CIDR block, `address/prefix`. The address must be the block's first address (no host bits set):
 * `10.0.0.1/8` is more often a typo for `/32` than a wish to trust 16 million addresses. A bare
 * address is accepted as a single-host block. `/0` is refused: trusting every peer's
 * `X-Forwarded-For` lets any client choose its own IP for the per-IP limits.
 */
export function canonicalCidr(text: string): string | undefined {
  const [address = "", prefixText, extra] = text.split("/");
  if (extra !== undefined || address.includes("%")) return undefined;
  const family = isIP(address);
  if (family === 0) return undefined;
  const bits = family === 4 ? 32 : 128;
  if (prefixText !== undefined && !/^(?:0|[1-9]\d{0,2})$/.test(prefixText)) return undefined;
  const prefix = prefixText === undefined ? bits : Number(prefixText);
  if (prefix < 1 || prefix > bits) return undefined;
  const value = family === 4 ? ipv4ToBigInt(address) : ipv6ToBigInt(address);
  if (value === undefined) return undefined;
  const hostMask = (1n << BigInt(bits - prefix)) - 1n;
  if ((value & hostMask) !== 0n) return undefined;
  return `${address.toLowerCase()}/${prefix}`;
}

function ipv4ToBigInt(address: string): bigint {
  return address.split(".").reduce((value, part) => (value << 8n) | BigInt(Number(part)), 0n);
}

function ipv6ToBigInt(address: string): bigint | undefined {
  let text = address.toLowerCase();
  // An embedded IPv4 tail (`::ffff:10.0.0.0`) becomes two hex groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4?.[1]) {
    const value = ipv4ToBigInt(v4[1]);
    text = `${text.slice(0, -v4[1].length)}${(value >> 16n).toString(16)}:${(value & 0xffffn).toString(16)}`;
  }
  const [head = "", tail, extra] = text.split("::");
  if (extra !== undefined) return undefined;
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === undefined || tail === "" ? [] : tail.split(":");
  const missing = 8 - headGroups.length - tailGroups.length;
  if (tail === undefined ? missing !== 0 : missing < 1) return undefined;
  const groups = [...headGroups, ...Array<string>(tail === undefined ? 0 : missing).fill("0"), ...tailGroups];
  return groups.reduce((value, group) => (value << 16n) | BigInt(Number.parseInt(group, 16)), 0n);
}

export interface HttpUrlRules {
  /** `https` only, `http` also for a loopback host, or either. */
  readonly http: "never" | "loopback" | "always";
  readonly allowQuery: boolean;
}

/**
 * An absolute http(s) URL, parsed with the WHATWG parser and also read literally: the text must
 * start with the scheme and `//`, contain no whitespace, backslash or control character, and carry
 * no credentials or fragment. Reading it literally keeps the URL parser from repairing a form the
 * operator did not mean (`http:\\host`, `http://127.1`) before the loopback rule looks at it.
 */
export function parseHttpUrl(text: string, rules: HttpUrlRules): URL | undefined {
  if (!/^https?:\/\/[^\s\\]+$/i.test(text) || hasControlCharacter(text)) return undefined;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return undefined;
  }
  const authority = text.slice(text.indexOf("//") + 2).split(/[/?#]/, 1)[0] ?? "";
  if (authority.includes("@") || url.username !== "" || url.password !== "") return undefined;
  if (text.includes("#")) return undefined;
  if (!rules.allowQuery && text.includes("?")) return undefined;
  if (url.protocol === "http:") {
    if (rules.http === "never") return undefined;
    if (rules.http === "loopback") {
      const literalHost = authority.replace(/:\d*$/, "");
      if (!isLoopbackHost(literalHost)) return undefined;
    }
  } else if (url.protocol !== "https:") {
    return undefined;
  }
  return url;
}

/**
 * `publicUrl` in canonical form: scheme and host lower-cased, default port dropped, no trailing
 * slash, so that `publicUrl + path` is the audience clients are told (RFC 9728) and tokens carry.
 */
export function canonicalPublicUrl(text: string): string | undefined {
  const url = parseHttpUrl(text, { http: "always", allowQuery: false });
  if (!url) return undefined;
  return `${url.origin}${url.pathname.replace(/\/+$/, "")}`;
}

/** An origin (`scheme://host[:port]`, nothing after it but an optional `/`), canonical form. */
export function canonicalOrigin(text: string): string | undefined {
  const url = parseHttpUrl(text, { http: "always", allowQuery: false });
  if (url?.pathname !== "/" || /^https?:\/\/[^/]+\/./i.test(text)) return undefined;
  return url.origin;
}
