import { createHmac, createSecretKey, type KeyObject, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";

/**
 * Optional client binding (sessions.clientBinding): a coarse fingerprint of the client that created
 * a session (its User-Agent and its address's network prefix), kept with the session and compared on
 * every later request. Defence in depth only: a thief on the same network with the same client
 * software matches, and a legitimate client that roams (a phone changing networks, an updated agent)
 * does not. It never replaces the owner check, which is what isolates principals.
 *
 * - `off`: nothing recorded or compared.
 * - `audit`: a mismatch is recorded as `session.binding-mismatch` and the request goes on.
 * - `reject`: a mismatch is answered like an unknown session (404) and recorded as a denial.
 *
 * The fingerprint is a keyed MAC, so a storage dump reveals neither the agent nor the address.
 */
export type ClientBindingPolicy = "off" | "audit" | "reject";

/** IPv4 addresses are compared by their /24, IPv6 by their /48: a NAT pool or a privacy address
 * rotation inside one network stays bound; another network does not. */
const IPV4_PREFIX_OCTETS = 3;
const IPV6_PREFIX_GROUPS = 3;
const MAX_USER_AGENT_LENGTH = 512;

export interface ClientFingerprinter {
  /** The fingerprint to record at creation: `<keyId>.<mac>` under the active master key. */
  fingerprint(userAgent: string | undefined, clientAddress: string | undefined): string;
  /** Whether a request's client matches a recorded fingerprint (under the key it names). */
  matches(recorded: string, userAgent: string | undefined, clientAddress: string | undefined): boolean;
}

/** The keyring surface the fingerprint needs: a purpose key per master key id. */
export interface FingerprintKeys {
  readonly activeKeyId: string;
  hasKey(keyId: string): boolean;
  purposeKey(purpose: string, keyId?: string): Uint8Array;
}

const PURPOSE = "client-binding";

export function createClientFingerprinter(keys: FingerprintKeys): ClientFingerprinter {
  const secrets = new Map<string, KeyObject>();
  const secretFor = (keyId: string): KeyObject => {
    let secret = secrets.get(keyId);
    if (secret === undefined) {
      secret = createSecretKey(keys.purposeKey(PURPOSE, keyId));
      secrets.set(keyId, secret);
    }
    return secret;
  };
  const mac = (keyId: string, userAgent: string | undefined, clientAddress: string | undefined): string =>
    createHmac("sha256", secretFor(keyId))
      .update("tenantgate/client-binding/v1\n")
      .update(addressPrefix(clientAddress))
      .update("\n")
      .update((userAgent ?? "").slice(0, MAX_USER_AGENT_LENGTH))
      .digest("base64url")
      .slice(0, 22);
  return {
    // The key id travels with the fingerprint, so a master-key rotation does not unbind every session.
    fingerprint: (userAgent, clientAddress) =>
      `${keys.activeKeyId}.${mac(keys.activeKeyId, userAgent, clientAddress)}`,
    matches(recorded, userAgent, clientAddress) {
      const dot = recorded.lastIndexOf(".");
      const keyId = recorded.slice(0, dot);
      if (dot <= 0 || !keys.hasKey(keyId)) return false;
      const expected = Buffer.from(mac(keyId, userAgent, clientAddress));
      const given = Buffer.from(recorded.slice(dot + 1));
      return expected.length === given.length && timingSafeEqual(expected, given);
    },
  };
}

/** The network an address belongs to, at the binding's granularity; "unknown" when there is none. */
export function addressPrefix(address: string | undefined): string {
  if (address === undefined) return "unknown";
  let text = address.trim().toLowerCase();
  // An IPv4 client seen through a dual-stack socket is the same client.
  if (text.startsWith("::ffff:") && isIP(text.slice(7)) === 4) text = text.slice(7);
  const family = isIP(text);
  if (family === 4) return `v4:${text.split(".").slice(0, IPV4_PREFIX_OCTETS).join(".")}`;
  if (family === 6) {
    const groups = expandIpv6(text);
    // An IPv4-mapped address in any spelling (::ffff:cb00:710a, 0:0:0:0:0:ffff:…) is its IPv4 client.
    if (groups.length === 8 && groups.slice(0, 5).every((g) => /^0+$/.test(g)) && groups[5] === "ffff") {
      const high = Number.parseInt(groups[6] ?? "0", 16);
      return `v4:${high >> 8}.${high & 0xff}.${Number.parseInt(groups[7] ?? "0", 16) >> 8}`;
    }
    return `v6:${groups.slice(0, IPV6_PREFIX_GROUPS).join(":")}`;
  }
  return "unknown";
}

/** The eight groups of an IPv6 address, each as 4 hex digits (a zone index dropped). */
function expandIpv6(address: string): string[] {
  const withoutZone = address.split("%")[0] ?? "";
  const [head = "", tail] = withoutZone.split("::");
  const parse = (part: string) => (part === "" ? [] : part.split(":"));
  let groups = parse(head);
  if (tail !== undefined) {
    const rest = parse(tail);
    groups = [
      ...groups,
      ...new Array<string>(Math.max(0, 8 - groups.length - rest.length)).fill("0"),
      ...rest,
    ];
  }
  return groups.map((group) => (group.includes(".") ? group : group.padStart(4, "0")));
}
