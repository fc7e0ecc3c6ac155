import { isIPv4, isIPv6 } from "node:net";
import { invalidArgument } from "../errors.ts";

/**
 * Which IP addresses a server-side fetch may connect to (safeFetch). The rules work on bytes, not on
 * text, so every spelling of an address (the URL parser's canonical form, a resolver's answer, an
 * IPv6 form that embeds an IPv4 address) meets the same check. The ranges and why each is refused
 * are in docs/decisions.md ("safeFetch: the refused address ranges").
 */

interface ParsedAddress {
  readonly family: 4 | 6;
  readonly bytes: Uint8Array;
}

interface AddressRange {
  readonly family: 4 | 6;
  readonly bytes: Uint8Array;
  readonly prefix: number;
}

interface NamedRange extends AddressRange {
  readonly reason: string;
}

/** What the policy decided for one address. */
export type AddressVerdict =
  | {
      readonly allowed: true;
      /** The address to dial: an IPv4-mapped IPv6 address is dialled as the IPv4 address it carries. */
      readonly address: string;
      readonly family: 4 | 6;
    }
  | { readonly allowed: false; readonly reason: string };

/** A parsed list of explicit allowances (`allowAddresses`), built once per policy. */
export interface AddressAllowances {
  readonly ranges: readonly AddressRange[];
}

export function parseIpAddress(text: string): ParsedAddress | undefined {
  if (isIPv4(text)) return { family: 4, bytes: Uint8Array.from(text.split(".").map(Number)) };
  // A zone id (`fe80::1%eth0`) names an interface, not a different address: drop it before parsing.
  const withoutZone = text.includes("%") ? text.slice(0, text.indexOf("%")) : text;
  if (!isIPv6(withoutZone)) return undefined;
  return { family: 6, bytes: parseIpv6(withoutZone) };
}

function parseIpv6(text: string): Uint8Array {
  const bytes = new Uint8Array(16);
  let body = text;
  const tail: number[] = [];
  const lastColon = body.lastIndexOf(":");
  if (body.slice(lastColon + 1).includes(".")) {
    tail.push(
      ...body
        .slice(lastColon + 1)
        .split(".")
        .map(Number),
    );
    body = `${body.slice(0, lastColon + 1)}0:0`;
  }
  const [head, rest] = body.includes("::") ? body.split("::") : [body, undefined];
  const headGroups = head ? head.split(":") : [];
  const restGroups = rest ? rest.split(":") : [];
  const zeros = 8 - headGroups.length - restGroups.length;
  const groups = [
    ...headGroups,
    ...Array.from({ length: rest === undefined ? 0 : zeros }, () => "0"),
    ...restGroups,
  ];
  for (const [index, group] of groups.entries()) {
    const value = Number.parseInt(group, 16);
    bytes[index * 2] = value >> 8;
    bytes[index * 2 + 1] = value & 0xff;
  }
  if (tail.length === 4) bytes.set(tail, 12);
  return bytes;
}

function formatIpv4(bytes: Uint8Array): string {
  return Array.from(bytes).join(".");
}

function range(text: string, reason = ""): NamedRange {
  const [addressText = "", prefixText] = text.split("/");
  const address = parseIpAddress(addressText);
  const max = address?.family === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : -1;
  if (!address || prefix < 0 || prefix > max || addressText.includes("%")) {
    throw invalidArgument("policy.allowAddresses", "must list IP addresses or CIDR ranges");
  }
  return { family: address.family, bytes: address.bytes, prefix, reason };
}

function inRange(address: ParsedAddress, candidate: AddressRange): boolean {
  if (address.family !== candidate.family) return false;
  let remaining = candidate.prefix;
  for (let index = 0; remaining > 0; index++, remaining -= 8) {
    const mask = remaining >= 8 ? 0xff : (0xff << (8 - remaining)) & 0xff;
    if (((address.bytes[index] ?? 0) & mask) !== ((candidate.bytes[index] ?? 0) & mask)) return false;
  }
  return true;
}

function firstRange(address: ParsedAddress, ranges: readonly NamedRange[]): NamedRange | undefined {
  return ranges.find((candidate) => inRange(address, candidate));
}

/**
 * Cloud metadata endpoints: refused even when `allowAddresses` covers them, because an intranet
 * allowance (10.0.0.0/8, 169.254.0.0/16 for a link-local service) must never open the instance's
 * credentials to a URL a user typed.
 */
const METADATA_RANGES: readonly NamedRange[] = [
  range("169.254.169.254", "metadata"), // AWS, GCP, Azure, OpenStack, DigitalOcean
  range("169.254.170.2", "metadata"), // AWS ECS task credentials
  range("169.254.170.23", "metadata"), // AWS EKS Pod Identity Agent (IAM credentials)
  range("169.254.0.23", "metadata"), // Tencent Cloud
  range("100.100.100.200", "metadata"), // Alibaba Cloud
  range("168.63.129.16", "metadata"), // Azure wire server (a public-range address)
  range("192.0.0.192", "metadata"), // Oracle Cloud
  range("fd00:ec2::254", "metadata"), // AWS over IPv6
  range("fd00:ec2::23", "metadata"), // AWS EKS Pod Identity Agent over IPv6
];

const IPV4_BLOCKED: readonly NamedRange[] = [
  range("0.0.0.0/8", "this-network"),
  range("10.0.0.0/8", "private"),
  range("100.64.0.0/10", "shared-cgnat"),
  range("127.0.0.0/8", "loopback"),
  range("169.254.0.0/16", "link-local"),
  range("172.16.0.0/12", "private"),
  range("192.0.0.0/24", "ietf-protocol"),
  range("192.0.2.0/24", "documentation"),
  range("192.88.99.0/24", "6to4-relay"),
  range("192.168.0.0/16", "private"),
  range("198.18.0.0/15", "benchmarking"),
  range("198.51.100.0/24", "documentation"),
  range("203.0.113.0/24", "documentation"),
  range("224.0.0.0/4", "multicast"),
  range("240.0.0.0/4", "reserved"), // includes 255.255.255.255, the limited broadcast address
];

const IPV4_MAPPED = range("::ffff:0:0/96");
const NAT64 = range("64:ff9b::/96");
const SIX_TO_FOUR = range("2002::/16");
const GLOBAL_UNICAST = range("2000::/3");

/**
 * IPv6 outside 2000::/3 is refused whole (below); these name the common cases for the operator's
 * detail, and the last ones refuse special-purpose blocks inside 2000::/3.
 */
const IPV6_BLOCKED: readonly NamedRange[] = [
  range("::/128", "unspecified"),
  range("::1/128", "loopback"),
  range("::/96", "ipv4-compatible"),
  range("::ffff:0:0:0/96", "ipv4-translated"),
  range("64:ff9b:1::/48", "nat64-local"),
  range("100::/64", "discard"),
  range("fc00::/7", "unique-local"),
  range("fe80::/10", "link-local"),
  range("fec0::/10", "site-local"),
  range("ff00::/8", "multicast"),
  range("2001:db8::/32", "documentation"),
  range("2001::/23", "ietf-protocol"), // Teredo, benchmarking, ORCHID: tunnels and non-destinations
  range("3fff::/20", "documentation"),
];

export function parseAllowances(entries: readonly string[] | undefined): AddressAllowances {
  if (entries !== undefined && !Array.isArray(entries)) {
    throw invalidArgument("policy.allowAddresses", "must be an array");
  }
  return { ranges: (entries ?? []).map((entry) => range(String(entry))) };
}

function blockedIpv4Reason(address: ParsedAddress): string | undefined {
  return firstRange(address, METADATA_RANGES)?.reason ?? firstRange(address, IPV4_BLOCKED)?.reason;
}

/** The IPv4 address an IPv6 form carries where traffic to it reaches that IPv4 host. */
function embeddedIpv4(address: ParsedAddress): ParsedAddress | undefined {
  if (address.family !== 6) return undefined;
  if (inRange(address, NAT64)) return { family: 4, bytes: address.bytes.slice(12, 16) };
  if (inRange(address, SIX_TO_FOUR)) return { family: 4, bytes: address.bytes.slice(2, 6) };
  return undefined;
}

/**
 * Decides one address. Order: metadata (never allowable), then explicit allowances, then the blocked
 * ranges. An IPv4-mapped IPv6 address is judged, allowed and dialled as its IPv4 address, so
 * `::ffff:127.0.0.1` is exactly as refused as `127.0.0.1`.
 */
export function vetAddress(text: string, allowances: AddressAllowances): AddressVerdict {
  const parsed = parseIpAddress(text);
  if (!parsed) return { allowed: false, reason: "not-an-address" };
  const address: ParsedAddress =
    parsed.family === 6 && inRange(parsed, IPV4_MAPPED)
      ? { family: 4, bytes: parsed.bytes.slice(12) }
      : parsed;
  const embedded = embeddedIpv4(address);

  const metadata =
    firstRange(address, METADATA_RANGES) ?? (embedded && firstRange(embedded, METADATA_RANGES));
  if (metadata) return { allowed: false, reason: metadata.reason };

  const dial = address.family === 4 ? formatIpv4(address.bytes) : (text.split("%")[0] ?? text);
  if (allowances.ranges.some((allowance) => inRange(address, allowance))) {
    return { allowed: true, address: dial, family: address.family };
  }

  if (address.family === 4) {
    const reason = blockedIpv4Reason(address);
    return reason ? { allowed: false, reason } : { allowed: true, address: dial, family: 4 };
  }
  if (embedded) {
    const reason = blockedIpv4Reason(embedded);
    if (reason) return { allowed: false, reason: `${inRange(address, NAT64) ? "nat64" : "6to4"}-${reason}` };
    return { allowed: true, address: dial, family: 6 };
  }
  const named = firstRange(address, IPV6_BLOCKED);
  if (named) return { allowed: false, reason: named.reason };
  // Everything routable on the IPv6 internet is in 2000::/3; the rest is reserved or local.
  if (!inRange(address, GLOBAL_UNICAST)) return { allowed: false, reason: "not-global-unicast" };
  return { allowed: true, address: dial, family: 6 };
}
