import { isAbsolute, resolve } from "node:path";
import { type EnvironmentSource, environmentSourceOf } from "./environment.ts";
import { DEFAULT_MASTER_KEY_ID, type GatewayConfig, type UpstreamConfig } from "./gateway-config.ts";
import { type ConfigIssue, type ConfigPath, issueAt } from "./issues.ts";
import { isLoopbackHost } from "./loopback.ts";
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
  const publicUrl = parsed.publicUrl ?? `http://${hostInUrl(listen.host)}:${listen.port}`;
  const publicOrigin = new URL(publicUrl);

  if (parsed.limits.scope === "cluster" && isProcessLocalStore(parsed.store)) {
    issues.push(issueAt(["limits", "scope"], "must be local with a memory: store (it is not shared)"));
  }
  const admin = parsed.admin.listen;
  const sameHost =
    admin.host === listen.host || WILDCARD_HOSTS.has(admin.host) || WILDCARD_HOSTS.has(listen.host);
  if (admin.port !== 0 && admin.port === listen.port && sameHost) {
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
        };
  });

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
    },
    limits: parsed.limits,
    audit: {
      file: parsed.audit.file === undefined ? undefined : absolutePath(["audit", "file"], parsed.audit.file),
      stdout: parsed.audit.stdout,
    },
    admin: { listen: { host: admin.host, port: admin.port }, tokenDigest: parsed.admin.tokenDigest },
  };
  return { config: deepFreeze(config) };
}
