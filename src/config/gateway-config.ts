import type { ApiKeyConfig } from "../identity/api-key-authenticator.ts";
import type { LogLevel } from "../log/log-level.ts";
import type { StdioUpstreamOptions } from "../upstreams/stdio-upstream.ts";
import type { JwtAlgorithm } from "./schema.ts";

/**
 * The gateway's configuration once loaded: every default applied, every relative path absolute,
 * durations in milliseconds (the `…Ms` names), and the whole object deeply frozen. Code reads this
 * type; operators write the file format described in DESIGN.md's operator contract.
 */
export interface GatewayConfig {
  /**
   * The folder relative paths were resolved against: the config file's folder, or the working
   * directory when there is no file. Paths below are already absolute; this is for diagnostics.
   */
  readonly configDir: string;
  /** Canonical: lower-case scheme and host, no default port, no trailing slash. */
  readonly publicUrl: string;
  readonly listen: ListenConfig;
  /** A store URL `openStore` accepts; a SQLite path is absolute. */
  readonly store: string;
  readonly secrets: SecretsConfig;
  readonly auth: AuthConfig;
  readonly upstreams: readonly UpstreamConfig[];
  readonly sessions: SessionsConfig;
  readonly limits: LimitsConfig;
  readonly audit: AuditConfig;
  readonly log: LogConfig;
  readonly admin: AdminConfig;
}

export interface ListenConfig {
  /** Lower-cased. */
  readonly host: string;
  /** 0 asks the OS for a free port (tests). */
  readonly port: number;
  /** CIDR blocks (`address/prefix`) whose `X-Forwarded-For` is believed. */
  readonly trustedProxies: readonly string[];
  /** Lower-cased `host` or `host:port` values a request's Host header must equal. */
  readonly allowedHosts: readonly string[];
  /** Origins (`scheme://host[:port]`) a request's Origin header, when present, must equal. */
  readonly allowedOrigins: readonly string[];
  readonly allowUnauthenticatedExposure: boolean;
}

export interface SecretsConfig {
  /**
   * Always a list: a single `secrets.masterKey` becomes one entry with id `default`
   * (DEFAULT_MASTER_KEY_ID), so sealed values name a stable key id from the first day.
   */
  readonly masterKeys: readonly { readonly id: string; readonly key: string }[];
  readonly activeKeyId: string;
  /** `env:NAME` or `file:PATH` (absolute) for the log-tag key; undefined: derived from the master key. */
  readonly tagKey: string | undefined;
}

export interface IssuerConfig {
  /** Exactly as configured: compared with `iss` character for character. */
  readonly issuer: string;
  /** Exactly one of jwksUrl and jwksFile is set. */
  readonly jwksUrl: string | undefined;
  /** Absolute. */
  readonly jwksFile: string | undefined;
  readonly algorithms: readonly JwtAlgorithm[];
  readonly clockSkewMs: number;
  /** The claim holding the tenant; undefined means tenant = issuer. */
  readonly tenantClaim: string | undefined;
}

/** The same shape the API key authenticator takes: the config passes it on unchanged. */
export type { ApiKeyConfig };

export interface AuthConfig {
  readonly issuers: readonly IssuerConfig[];
  readonly apiKeys: readonly ApiKeyConfig[];
  readonly anonymous: boolean;
}

interface UpstreamCommon {
  readonly name: string;
  /** Matched exactly. */
  readonly path: string;
  /** Defaults to publicUrl + path (RFC 8707 resource). */
  readonly audience: string;
  readonly scopes: readonly string[];
  /** undefined: the gateway discovers the upstream's versions at start. */
  readonly protocolVersions: readonly string[] | undefined;
  /** Header name (as written) -> template. */
  readonly inject: Readonly<Record<string, string>>;
}

export interface HttpUpstreamConfig extends UpstreamCommon {
  readonly transport: "http";
  readonly url: string;
}

export interface StdioUpstreamConfig extends UpstreamCommon {
  readonly transport: "stdio";
  readonly command: string;
  readonly args: readonly string[];
  /** Values as written; `vault:NAME` references are resolved by the gateway per principal. */
  readonly env: Readonly<Record<string, string>>;
  /** upstreams[].stdio: how its processes run; unset fields take the bridge's defaults. */
  readonly stdio: StdioProcessSettings;
}

/** upstreams[].stdio: the bridge's own options, durations in ms (documented there). */
export type StdioProcessSettings = Pick<
  StdioUpstreamOptions,
  | "runAs"
  | "uidRange"
  | "maxProcesses"
  | "maxProcessesPerPrincipal"
  | "maxProcessesPerTenant"
  | "startTimeoutMs"
  | "requestTimeoutMs"
  | "workRoot"
  | "modern"
>;

export type UpstreamConfig = HttpUpstreamConfig | StdioUpstreamConfig;

export interface SessionsConfig {
  readonly idleTimeoutMs: number;
  readonly absoluteTimeoutMs: number;
  readonly maxPerPrincipal: number;
  readonly onLimit: "evict-oldest" | "reject";
  /** Live sessions one tenant (issuer, tenant) may hold; undefined: no tenant cap. */
  readonly maxPerTenant: number | undefined;
  /** Defence in depth: compare a coarse client fingerprint on every session request. */
  readonly clientBinding: "off" | "audit" | "reject";
}

export interface LimitsConfig {
  readonly scope: "local" | "cluster";
  readonly maxBodyBytes: number;
  readonly maxHeaderBytes: number;
  readonly maxBatchSize: number;
  readonly streams: ConnectionCapsConfig;
  readonly inflight: ConnectionCapsConfig;
  readonly rate: RateLimitConfig;
}

/** Caps of one pool (open streams, or requests in flight), at each level. */
export interface ConnectionCapsConfig {
  readonly global: number;
  readonly perIp: number;
  readonly perPrincipal: number;
  readonly perSession: number;
}

/** The per-principal token bucket. */
export interface RateLimitConfig {
  readonly enabled: boolean;
  /** Refill rate, requests per second. */
  readonly perSecond: number;
  /** Bucket capacity: requests a principal may make at once after being idle. */
  readonly burst: number;
  /** Share of the rate each replica allows alone while the shared store does not answer. */
  readonly fallbackFactor: number;
}

export interface AuditConfig {
  /** Absolute. */
  readonly file: string | undefined;
  readonly stdout: boolean;
  /** The size at which `file` is rotated (sealed, moved beside it, continued in a fresh file). */
  readonly maxFileBytes: number;
}

export interface LogConfig {
  readonly level: LogLevel;
  /** Absolute; undefined: log lines go to stderr. */
  readonly file: string | undefined;
}

export interface AdminConfig {
  readonly enabled: boolean;
  readonly listen: { readonly host: string; readonly port: number };
  readonly tokenDigest: string | undefined;
}

export const DEFAULT_MASTER_KEY_ID = "default";
