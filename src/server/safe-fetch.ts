import { lookup } from "node:dns/promises";
import type { Readable } from "node:stream";
import { buildConnector, Client } from "undici";
import { GateError, invalidArgument } from "../errors.ts";
import { type AddressAllowances, parseAllowances, vetAddress } from "./address-policy.ts";

/**
 * SSRF-safe fetch for server code that fetches a URL a user supplied (an MCP tool "fetch this
 * page"). Every hop is checked before any connection: scheme, credentials, port, then every address
 * the host name resolves to. The name is resolved once per hop and the socket is opened to the
 * vetted address itself, so nothing resolves the name a second time (no DNS-rebinding window).
 */

export type SafeFetchScheme = "http" | "https";

/** Resolves a host name to IP addresses (text). The default asks the system resolver once. */
export type SafeFetchResolver = (hostname: string) => Promise<readonly string[]>;

export interface SafeFetchPolicy {
  /** Default both. Nothing else (file:, gopher:, ftp:, data:) is ever fetched. */
  readonly schemes?: readonly SafeFetchScheme[];
  /** Default [80, 443]. A URL without a port uses its scheme's default. */
  readonly allowedPorts?: readonly number[];
  /** Redirects followed, each re-checked like the first URL. Default 3; one more is refused. */
  readonly maxRedirects?: number;
  /** Most body bytes read (as sent, never decompressed). Default 5 MiB. */
  readonly maxBytes?: number;
  /** Bound on everything: resolution, connection, every hop, the body. Default 10 s. */
  readonly timeoutMs?: number;
  /** Injectable name resolution (tests, a deployment's own resolver). */
  readonly resolve?: SafeFetchResolver;
  /**
   * Addresses or CIDR ranges allowed although a blocked range covers them: a test's loopback server,
   * an intranet deployment's 10.0.0.0/8. Cloud metadata addresses stay refused whatever this says.
   */
  readonly allowAddresses?: readonly string[];
  /** Certificate authorities trusted for https (an intranet CA); default Node's bundled roots. */
  readonly ca?: string | Buffer | readonly (string | Buffer)[];
}

export interface SafeFetchInit {
  readonly method?: "GET" | "HEAD";
  /** Request headers. Authorization and Cookie are dropped when a redirect leaves the origin. */
  readonly headers?: Readonly<Record<string, string>>;
  /** The caller's own cancellation; the policy's timeout applies as well. */
  readonly signal?: AbortSignal;
}

export interface SafeFetchResponse {
  readonly status: number;
  /** The URL that answered, after redirects. */
  readonly url: string;
  readonly redirects: number;
  /** The vetted address the answer came from. */
  readonly address: string;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: Uint8Array;
  /** The body decoded as UTF-8 (malformed bytes become U+FFFD). */
  text(): string;
}

const DEFAULTS = {
  schemes: ["http", "https"] as readonly SafeFetchScheme[],
  allowedPorts: [80, 443] as readonly number[],
  maxRedirects: 3,
  maxBytes: 5 * 1024 * 1024,
  timeoutMs: 10_000,
};

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

/** Dropped from the caller's headers when a redirect goes to another origin (scheme, host, port). */
const ORIGIN_BOUND_HEADERS = new Set(["authorization", "cookie"]);

/** Headers safeFetch owns: the Host is the URL's, framing and connection handling are undici's. */
const FORBIDDEN_HEADERS = new Set([
  "host",
  "connection",
  "keep-alive",
  "transfer-encoding",
  "content-length",
  "te",
  "trailer",
  "upgrade",
  "expect",
]);

interface Settings {
  readonly schemes: ReadonlySet<string>;
  readonly allowedPorts: ReadonlySet<number>;
  readonly maxRedirects: number;
  readonly maxBytes: number;
  readonly timeoutMs: number;
  readonly resolve: SafeFetchResolver;
  readonly allowances: AddressAllowances;
  readonly ca: SafeFetchPolicy["ca"];
}

function positiveInteger(value: number | undefined, fallback: number, name: string, min = 1): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < min)
    throw invalidArgument(name, `must be an integer >= ${min}`);
  return value;
}

function settle(policy: SafeFetchPolicy): Settings {
  const schemes = policy.schemes ?? DEFAULTS.schemes;
  if (!Array.isArray(schemes) || schemes.some((scheme) => scheme !== "http" && scheme !== "https")) {
    throw invalidArgument("policy.schemes", "may name only http and https");
  }
  const ports = policy.allowedPorts ?? DEFAULTS.allowedPorts;
  if (!Array.isArray(ports) || ports.some((port) => !Number.isInteger(port) || port < 1 || port > 65535)) {
    throw invalidArgument("policy.allowedPorts", "must be TCP port numbers");
  }
  if (policy.resolve !== undefined && typeof policy.resolve !== "function") {
    throw invalidArgument("policy.resolve", "must be a function");
  }
  return {
    schemes: new Set(schemes.map((scheme) => `${scheme}:`)),
    allowedPorts: new Set(ports),
    maxRedirects: positiveInteger(policy.maxRedirects, DEFAULTS.maxRedirects, "policy.maxRedirects", 0),
    maxBytes: positiveInteger(policy.maxBytes, DEFAULTS.maxBytes, "policy.maxBytes"),
    timeoutMs: positiveInteger(policy.timeoutMs, DEFAULTS.timeoutMs, "policy.timeoutMs"),
    resolve: policy.resolve ?? systemResolve,
    allowances: parseAllowances(policy.allowAddresses),
    ca: policy.ca,
  };
}

async function systemResolve(hostname: string): Promise<readonly string[]> {
  const answers = await lookup(hostname, { all: true, order: "verbatim" });
  return answers.map((answer) => answer.address);
}

/** A refusal by policy. The detail names the rule, never the URL (it may carry a secret). */
function refused(detail: string): GateError {
  return new GateError("ERR_FETCH_REFUSED", "url refused", { detail });
}

function checkUrl(input: string | URL, base: URL | undefined, settings: Settings): URL {
  const url = URL.parse(String(input), base?.href);
  if (!url) throw refused("invalid-url");
  if (!settings.schemes.has(url.protocol)) throw refused("scheme");
  if (url.username !== "" || url.password !== "") throw refused("credentials");
  const port = url.port === "" ? (url.protocol === "https:" ? 443 : 80) : Number(url.port);
  if (!settings.allowedPorts.has(port)) throw refused("port");
  if (url.hostname === "") throw refused("invalid-url");
  return url;
}

/** The URL parser's host as an IP literal (its canonical form, whatever spelling the URL used). */
function ipLiteral(url: URL): string | undefined {
  const host = url.hostname;
  if (host.startsWith("[")) return host.slice(1, -1);
  return /^\d+\.\d+\.\d+\.\d+$/.test(host) ? host : undefined;
}

function isLocalhostName(hostname: string): boolean {
  const name = hostname.endsWith(".") ? hostname.slice(0, -1) : hostname;
  return name === "localhost" || name.endsWith(".localhost");
}

function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * Every address the host stands for, each vetted; the hop is refused if any one is blocked. A name
 * that answers with both a public and an internal address is what a rebinding attack looks like,
 * and a refusal does not depend on which answer a connection would have used.
 */
async function vettedAddresses(url: URL, settings: Settings, signal: AbortSignal): Promise<string[]> {
  const literal = ipLiteral(url);
  let answers: readonly string[];
  if (literal !== undefined) answers = [literal];
  // RFC 6761 section 6.3: localhost names are loopback without asking a resolver.
  else if (isLocalhostName(url.hostname)) answers = ["127.0.0.1", "::1"];
  else {
    try {
      answers = await untilAborted(settings.resolve(url.hostname), signal);
    } catch (cause) {
      if (signal.aborted) throw cause;
      throw new GateError("ERR_FETCH_FAILED", "fetch failed", { detail: "resolve-failed", cause });
    }
    if (!Array.isArray(answers) || answers.length === 0) {
      throw new GateError("ERR_FETCH_FAILED", "fetch failed", { detail: "no-address" });
    }
  }
  const dial: string[] = [];
  for (const answer of answers) {
    const verdict = vetAddress(String(answer), settings.allowances);
    if (!verdict.allowed) throw refused(`address-${verdict.reason}`);
    if (!dial.includes(verdict.address)) dial.push(verdict.address);
  }
  return dial;
}

type Connector = ReturnType<typeof buildConnector>;

/**
 * A connector that dials only the vetted addresses, in order, moving to the next one only when a
 * connection cannot be opened (before any request byte is written). undici passes the URL's host
 * name; it is never handed to a resolver. TLS keeps the host name for SNI and certificate checks.
 */
function pinnedConnector(url: URL, addresses: readonly string[], settings: Settings, connected: string[]) {
  const base: Connector = buildConnector({
    timeout: settings.timeoutMs,
    allowH2: false,
    maxCachedSessions: 0,
    ...(settings.ca === undefined ? {} : { ca: settings.ca as string | Buffer | (string | Buffer)[] }),
  });
  const servername =
    url.protocol === "https:" && ipLiteral(url) === undefined ? url.hostname.replace(/\.$/, "") : undefined;
  const connect: Connector = (options, callback) => {
    const attempt = (index: number): void => {
      const address = addresses[index] as string;
      base({ ...options, hostname: address, ...(servername ? { servername } : {}) }, (error, socket) => {
        if (error && index + 1 < addresses.length) {
          attempt(index + 1);
          return;
        }
        if (!error) connected.push(address);
        (callback as (error: Error | null, socket: unknown) => void)(error, socket);
      });
    };
    attempt(0);
  };
  return connect;
}

interface HopOutcome {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly address: string;
  readonly location: string | undefined;
  readonly body: Uint8Array;
}

async function readBounded(body: Readable, maxBytes: number): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > maxBytes) {
      discard(body);
      throw new GateError("ERR_FETCH_TOO_LARGE", "response too large", { detail: "max-bytes" });
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, total);
}

/** Stops reading a body nobody will use; the error destroy() raises on it has no one to tell. */
function discard(body: Readable): void {
  body.on("error", () => undefined);
  body.destroy();
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

async function exchange(
  url: URL,
  addresses: readonly string[],
  method: "GET" | "HEAD",
  headers: Readonly<Record<string, string>>,
  settings: Settings,
  signal: AbortSignal,
): Promise<HopOutcome> {
  const connected: string[] = [];
  const client = new Client(url.origin, {
    connect: pinnedConnector(url, addresses, settings, connected),
    headersTimeout: settings.timeoutMs,
    bodyTimeout: settings.timeoutMs,
    pipelining: 1,
    allowH2: false,
  });
  try {
    const response = await client.request({
      path: `${url.pathname}${url.search}`,
      method,
      headers,
      signal,
    });
    const location = headerValue(response.headers["location"]);
    const address = connected[0] ?? "";
    if (REDIRECT_STATUSES.has(response.statusCode) && location !== undefined) {
      // A redirect's own body is never wanted: drop it rather than read it.
      discard(response.body);
      return {
        status: response.statusCode,
        headers: response.headers,
        address,
        location,
        body: new Uint8Array(),
      };
    }
    // A HEAD answer declares the length of the body a GET would get and carries none: no bound to apply.
    const declared = method === "HEAD" ? 0 : Number(headerValue(response.headers["content-length"]));
    if (Number.isFinite(declared) && declared > settings.maxBytes) {
      discard(response.body);
      throw new GateError("ERR_FETCH_TOO_LARGE", "response too large", { detail: "content-length" });
    }
    const body = await readBounded(response.body, settings.maxBytes);
    return { status: response.statusCode, headers: response.headers, address, location, body };
  } finally {
    // One request per client: nothing is pooled, so no later hop can reuse a socket opened for
    // another host's vetted address.
    await client.destroy().catch(() => undefined);
  }
}

function requestHeaders(init: SafeFetchInit): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(init.headers ?? {})) {
    const lower = name.toLowerCase();
    // There is no proxy: a proxy-* header could only leak to the target.
    if (FORBIDDEN_HEADERS.has(lower) || lower.startsWith("proxy-")) {
      throw invalidArgument("init.headers", "may not set host, framing, proxy or connection headers");
    }
    headers[lower] = String(value);
  }
  // Bytes are counted as sent and never decompressed, so ask for them uncompressed.
  headers["accept-encoding"] ??= "identity";
  return headers;
}

function transportFailure(cause: unknown): string {
  const code = (cause as { code?: unknown })?.code;
  return typeof code === "string" && /^[A-Z_]{1,64}$/.test(code) ? code : "request-failed";
}

/**
 * Fetches `url` under `policy`: GET (or HEAD), redirects followed by hand and re-checked, body read
 * up to `maxBytes`, all within `timeoutMs`. Refusals are ERR_FETCH_REFUSED; a transport failure is
 * ERR_FETCH_FAILED; ERR_FETCH_TIMEOUT and ERR_FETCH_TOO_LARGE name the bound that was hit.
 */
export async function safeFetch(
  url: string | URL,
  policy: SafeFetchPolicy = {},
  init: SafeFetchInit = {},
): Promise<SafeFetchResponse> {
  const settings = settle(policy);
  const method = init.method ?? "GET";
  if (method !== "GET" && method !== "HEAD") throw invalidArgument("init.method", "must be GET or HEAD");
  let headers = requestHeaders(init);
  const deadline = AbortSignal.timeout(settings.timeoutMs);
  const signal = init.signal ? AbortSignal.any([deadline, init.signal]) : deadline;

  try {
    let current = checkUrl(url, undefined, settings);
    for (let redirects = 0; ; redirects++) {
      const addresses = await vettedAddresses(current, settings, signal);
      const hop = await exchange(current, addresses, method, headers, settings, signal);
      if (hop.location === undefined || !REDIRECT_STATUSES.has(hop.status)) {
        return response(hop, current, redirects);
      }
      if (redirects >= settings.maxRedirects) throw refused("redirect-limit");
      // Re-checked from the start: a redirect is a new user-chosen URL as far as the policy goes.
      const next = checkUrl(hop.location, current, settings);
      if (next.origin !== current.origin) {
        headers = Object.fromEntries(
          Object.entries(headers).filter(([name]) => !ORIGIN_BOUND_HEADERS.has(name)),
        );
      }
      current = next;
    }
  } catch (cause) {
    if (deadline.aborted) {
      throw new GateError("ERR_FETCH_TIMEOUT", "fetch timed out", { detail: "timeout", cause });
    }
    if (cause instanceof GateError) throw cause;
    throw new GateError("ERR_FETCH_FAILED", "fetch failed", {
      detail: init.signal?.aborted ? "aborted" : transportFailure(cause),
      cause,
    });
  }
}

function response(hop: HopOutcome, url: URL, redirects: number): SafeFetchResponse {
  const body = hop.body;
  return {
    status: hop.status,
    url: url.href,
    redirects,
    address: hop.address,
    headers: hop.headers,
    body,
    text: () => new TextDecoder("utf-8").decode(body),
  };
}
