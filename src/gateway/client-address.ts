import { BlockList, isIPv4, isIPv6 } from "node:net";
import { canonicalCidr } from "../config/network-values.ts";
import { invalidArgument } from "../errors.ts";

/** The most `X-Forwarded-For` entries read, from the right; real proxy chains are a few hops long. */
export const MAX_FORWARDED_HOPS = 32;

/**
 * Resolves the address per-IP limits and the audit trail attribute a request to. Answers a
 * normalised IP (an IPv4-mapped IPv6 address as dotted IPv4, IPv6 in its RFC 5952 form, no zone
 * index) so one client has one address whichever form a hop wrote it in, or undefined when the
 * socket has no IP address (it closed before the address was read).
 */
export type ClientAddressResolver = (
  socketAddress: string | undefined,
  /** `request.headersDistinct["x-forwarded-for"]`: every header line, in order. */
  forwardedFor: readonly string[] | undefined,
) => string | undefined;

/**
 * The client's address, trusting `X-Forwarded-For` only as far as `listen.trustedProxies` vouch for
 * it (DESIGN: the client IP comes from trusted proxies only).
 *
 * Each proxy appends the address of whoever connected to it, so an entry is only as good as the hop
 * that wrote it: the socket peer wrote the rightmost entry, and the address in an entry wrote the one
 * on its left. Walking from the right, every entry written by a trusted hop is a real peer; the first
 * one that is not itself a trusted proxy is the client. Anything further left was written by that
 * client and is ignored, so a spoofed header from an untrusted peer changes nothing.
 *
 * A malformed entry (not a bare IP: a port, `unknown`, an obfuscated name) stops the walk at the last
 * trusted address seen: the hop that wrote the garbage. That is the nearest address anything vouches
 * for. Skipping the entry would take the next one on the left, which nobody trusted wrote; failing
 * with no address would let a client drop itself out of per-IP limits. Attributing to the proxy is
 * coarser (its clients share a bucket) but cannot be steered by the client.
 *
 * `trustedProxies` must list proxies only: an address in a trusted block is believed about whatever
 * it puts on its left, so a client inside one could name any address it likes.
 *
 * The walk reads at most MAX_FORWARDED_HOPS entries; a chain still all trusted after that answers
 * its leftmost address read, as does a chain whose every entry is trusted.
 */
export function createClientAddressResolver(trustedProxies: readonly string[]): ClientAddressResolver {
  if (!Array.isArray(trustedProxies) || !trustedProxies.every((entry) => typeof entry === "string")) {
    throw invalidArgument("trustedProxies", "must be a list of CIDR blocks");
  }
  const trusted = new BlockList();
  for (const entry of trustedProxies as readonly string[]) {
    const cidr = canonicalCidr(entry);
    if (cidr === undefined) throw invalidArgument("trustedProxies", "must be a list of CIDR blocks");
    const slash = cidr.indexOf("/");
    const address = cidr.slice(0, slash);
    // BlockList matches IPv4 against IPv4-mapped rules and the reverse, so a rule written either way
    // covers the client however the socket reports it.
    trusted.addSubnet(address, Number(cidr.slice(slash + 1)), isIPv4(address) ? "ipv4" : "ipv6");
  }
  const isTrusted = (address: string): boolean => trusted.check(address, isIPv4(address) ? "ipv4" : "ipv6");

  // Nothing trusted: headers are never read, not even parsed.
  if (trustedProxies.length === 0) {
    return (socketAddress) => normaliseAddress(socketAddress);
  }

  return (socketAddress, forwardedFor) => {
    const peer = normaliseAddress(socketAddress);
    if (peer === undefined || !isTrusted(peer) || forwardedFor === undefined) return peer;
    const entries = Array.isArray(forwardedFor) ? forwardedFor.join(",").split(",") : [];
    let nearest = peer;
    let read = 0;
    for (let index = entries.length - 1; index >= 0 && read < MAX_FORWARDED_HOPS; index -= 1) {
      const text = trimWhitespace(entries[index]!);
      // RFC 9110 section 5.6.1: empty list elements are ignored (they still count towards the cap).
      read += 1;
      if (text === "") continue;
      const address = normaliseAddress(text);
      if (address === undefined) return nearest;
      if (!isTrusted(address)) return address;
      nearest = address;
    }
    return nearest;
  };
}

/** Optional whitespace around a list element (RFC 9110 OWS: spaces and horizontal tabs). */
function trimWhitespace(text: string): string {
  return text.replace(/^[ \t]+|[ \t]+$/g, "");
}

/**
 * A bare IP address in one form per address, or undefined for anything else. Node's own checks
 * refuse leading zeros, octal, hex and shortened IPv4 forms, which some parsers read as another
 * address: what is not unambiguous is not an address here.
 */
function normaliseAddress(text: string | undefined): string | undefined {
  if (typeof text !== "string") return undefined;
  if (isIPv4(text)) return text;
  // A zone index (fe80::1%eth0) names an interface on the host that wrote it, not a host.
  const zone = text.indexOf("%");
  const bare = zone === -1 ? text : text.slice(0, zone);
  if (!isIPv6(bare)) return undefined;
  let canonical: string;
  try {
    // The WHATWG host serialiser writes IPv6 in RFC 5952 form (lower case, longest zero run elided).
    canonical = new URL(`http://[${bare}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical);
  if (mapped === null) return canonical;
  const high = Number.parseInt(mapped[1]!, 16);
  const low = Number.parseInt(mapped[2]!, 16);
  return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`;
}
