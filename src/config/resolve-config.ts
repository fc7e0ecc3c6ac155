import { isAbsolute, resolve } from "node:path";
import { type EnvironmentSource, environmentSourceOf } from "./environment.ts";
import {
  DEFAULT_MASTER_KEY_ID,
  type GatewayConfig,
  type StdioProcessSettings,
  type UpstreamConfig,
} from "./gateway-config.ts";
import { type ConfigIssue, type ConfigPath, issueAt } from "./issues.ts";
import { isLoopbackHost } from "./loopback.ts";
import { canonicalPublicUrl } from "./network-values.ts";
import type { ParsedConfig } from "./schema.ts";
import { isProcessLocalStore, resolveStoreUrl } from "./store-url.ts";

/**
 * From the schema's output to a GatewayConfig: defaults that depend on other settings, rules that
 * span sections, and relative paths made absolute.
 *
 * Relative paths written in the config file are relative to the file's folder (operator contract:
 * the file and what it names move together). Paths given through the environment are relative to
 * the working directory, like any path typed in a shell. Defaults count as written in the file.
 */

export interface ResolveContext {
  /** The config file's folder, or the working directory without a file. */
  readonly configDir: string;
  readonly cwd: string;
  readonly sources: readonly EnvironmentSource[];
}

const WILDCARD_HOSTS = new Set(["0.0.0.0", "::"]);

function hostInUrl(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

function defaultAllowedHosts(listenHost: string, port: number, publicUrl: URL): string[] {
  const hosts = isLoopbackHost(listenHost)
    ? ["localhost", "127.0.0.1", "[::1]"].flatMap((name) => [name, `${name}:${port}`])
    : [];
  // The public URL's own host is always allowed: behind a proxy on loopback it is the name clients use.
  hosts.push(publicUrl.host);
  return [...new Set(hosts)];
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

export function resolveConfig(
  parsed: ParsedConfig,
  context: ResolveContext,
): { config: GatewayConfig } | { issues: ConfigIssue[] } {
  const issues: ConfigIssue[] = [];
  const { listen } = parsed;

  if (parsed.publicUrl === undefined && WILDCARD_HOSTS.has(listen.host)) {
    issues.push(
      issueAt(
        ["publicUrl"],
        "must be set when listen.host is a wildcard address (no client uses it in a URL)",
      ),
    );
  }
  // The derived default goes through the same canonical form as a written one (`:80` dropped,
  // `[0:0:…:1]` shortened), so audiences and allowlists derived from it match what clients use.
  const derivedUrl = `http://${hostInUrl(listen.host)}:${listen.port}`;
  const publicUrl = parsed.publicUrl ?? canonicalPublicUrl(derivedUrl) ?? derivedUrl;
  const publicOrigin = new URL(publicUrl);

  // THREATS L3 at load time (the gateway checks the address it actually bound as well): anonymous
  // access with any sign of exposure (a listen host, a public URL that is not loopback, or trusted
  // proxies, i.e. a loopback gateway published by a reverse proxy) needs the explicit attestation.
  const exposed =
    !isLoopbackHost(listen.host) ||
    !isLoopbackHost(publicOrigin.hostname.replace(/^\[|\]$/g, "")) ||
    listen.trustedProxies.length > 0;
  if (parsed.auth.anonymous === true && exposed && listen.allowUnauthenticatedExposure !== true) {
    issues.push(
      issueAt(
        ["auth", "anonymous"],
        "is refused on an exposed gateway (listen.host, publicUrl or listen.trustedProxies beyond loopback) unless listen.allowUnauthenticatedExposure is true",
      ),
    );
  }

  if (parsed.limits.scope === "cluster" && isProcessLocalStore(parsed.store)) {
    issues.push(issueAt(["limits", "scope"], "must be local with a memory: store (it is not shared)"));
  }
  const admin = parsed.admin.listen;
  const sameHost =
    admin.host === listen.host || WILDCARD_HOSTS.has(admin.host) || WILDCARD_HOSTS.has(listen.host);
  if (parsed.admin.enabled && admin.port !== 0 && admin.port === listen.port && sameHost) {
    issues.push(issueAt(["admin", "listen", "port"], "must differ from listen.port"));
  }
  if (issues.length > 0) return { issues };

  const baseFor = (path: ConfigPath): string =>
    environmentSourceOf(context.sources, path) === undefined ? context.configDir : context.cwd;
  const absolutePath = (path: ConfigPath, value: string): string =>
    isAbsolute(value) ? value : resolve(baseFor(path), value);
  const reference = (path: ConfigPath, value: string): string =>
    value.startsWith("file:") ? `file:${absolutePath(path, value.slice("file:".length))}` : value;

  const { secrets } = parsed;
  const masterKeys =
    secrets.masterKey !== undefined
      ? [{ id: DEFAULT_MASTER_KEY_ID, key: reference(["secrets", "masterKey"], secrets.masterKey) }]
      : (secrets.masterKeys ?? []).map((entry, index) => ({
          id: entry.id,
          key: reference(["secrets", "masterKeys", index, "key"], entry.key),
        }));

  const upstreams = parsed.upstreams.map((upstream): UpstreamConfig => {
    const common = {
      name: upstream.name,
      path: upstream.path,
      audience: upstream.audience ?? `${publicUrl}${upstream.path}`,
      scopes: upstream.scopes,
      protocolVersions: upstream.protocolVersions,
      inject: upstream.inject ?? {},
    };
    return upstream.url !== undefined
      ? { ...common, transport: "http", url: upstream.url }
      : {
          ...common,
          transport: "stdio",
          command: upstream.command ?? "",
          args: upstream.args ?? [],
          env: upstream.env ?? {},
          stdio: stdioSettings(upstream.stdio),
        };
  });

  // A token is accepted only at the upstream its audience names (THREATS A1): two upstreams with one
  // audience would accept each other's tokens.
  const seenAudiences = new Map<string, number>();
  for (const [index, upstream] of upstreams.entries()) {
    const first = seenAudiences.get(upstream.audience);
    if (first !== undefined) {
      return {
        issues: [
          issueAt(["upstreams", index, "audience"], `must differ from upstreams[${first}]'s audience`),
        ],
      };
    }
    seenAudiences.set(upstream.audience, index);
  }

  const config: GatewayConfig = {
    configDir: context.configDir,
    publicUrl,
    listen: {
      host: listen.host,
      port: listen.port,
      trustedProxies: listen.trustedProxies,
      allowedHosts: listen.allowedHosts ?? defaultAllowedHosts(listen.host, listen.port, publicOrigin),
      allowedOrigins: listen.allowedOrigins ?? [publicOrigin.origin],
      allowUnauthenticatedExposure: listen.allowUnauthenticatedExposure,
    },
    store: resolveStoreUrl(parsed.store, baseFor(["store"])),
    secrets: {
      masterKeys,
      activeKeyId: secrets.activeKeyId ?? DEFAULT_MASTER_KEY_ID,
      tagKey: secrets.tagKey === undefined ? undefined : reference(["secrets", "tagKey"], secrets.tagKey),
    },
    auth: {
      issuers: parsed.auth.issuers.map((issuer, index) => ({
        issuer: issuer.issuer,
        jwksUrl: issuer.jwksUrl,
        jwksFile:
          issuer.jwksFile === undefined
            ? undefined
            : absolutePath(["auth", "issuers", index, "jwksFile"], issuer.jwksFile),
        algorithms: issuer.algorithms,
        clockSkewMs: issuer.clockSkew,
        tenantClaim: issuer.tenantClaim,
      })),
      apiKeys: parsed.auth.apiKeys,
      anonymous: parsed.auth.anonymous,
    },
    upstreams,
    sessions: {
      idleTimeoutMs: parsed.sessions.idleTimeout,
      absoluteTimeoutMs: parsed.sessions.absoluteTimeout,
      maxPerPrincipal: parsed.sessions.maxPerPrincipal,
      onLimit: parsed.sessions.onLimit,
      maxPerTenant: parsed.sessions.maxPerTenant,
      clientBinding: parsed.sessions.clientBinding,
    },
    limits: parsed.limits,
    audit: {
      file: parsed.audit.file === undefined ? undefined : absolutePath(["audit", "file"], parsed.audit.file),
      stdout: parsed.audit.stdout,
      maxFileBytes: parsed.audit.maxFileBytes,
    },
    log: {
      level: parsed.log.level,
      file: parsed.log.file === undefined ? undefined : absolutePath(["log", "file"], parsed.log.file),
    },
    admin: {
      enabled: parsed.admin.enabled,
      listen: { host: admin.host, port: admin.port },
      tokenDigest: parsed.admin.tokenDigest,
    },
  };
  return { config: deepFreeze(config) };
}

/** upstreams[].stdio with durations in ms; absent fields stay absent (the bridge's defaults apply). */
function stdioSettings(stdio: ParsedConfig["upstreams"][number]["stdio"]): StdioProcessSettings {
  if (stdio === undefined) return {};
  return {
    ...(stdio.runAs === undefined ? {} : { runAs: stdio.runAs }),
    ...(stdio.uidRange === undefined ? {} : { uidRange: stdio.uidRange }),
    ...(stdio.maxProcesses === undefined ? {} : { maxProcesses: stdio.maxProcesses }),
    ...(stdio.maxProcessesPerPrincipal === undefined
      ? {}
      : { maxProcessesPerPrincipal: stdio.maxProcessesPerPrincipal }),
    ...(stdio.maxProcessesPerTenant === undefined
      ? {}
      : { maxProcessesPerTenant: stdio.maxProcessesPerTenant }),
    ...(stdio.startTimeout === undefined ? {} : { startTimeoutMs: stdio.startTimeout }),
    ...(stdio.requestTimeout === undefined ? {} : { requestTimeoutMs: stdio.requestTimeout }),
    ...(stdio.workRoot === undefined ? {} : { workRoot: stdio.workRoot }),
    ...(stdio.modern === undefined ? {} : { modern: stdio.modern }),
  };
}
