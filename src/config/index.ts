/** The gateway's configuration: loading, the resulting type, and the helpers other modules share. */

export { DURATION_PATTERN, parseDuration } from "./duration.ts";
export { ENVIRONMENT_PREFIX } from "./environment.ts";
export {
  type AdminConfig,
  type ApiKeyConfig,
  type AuditConfig,
  type AuthConfig,
  DEFAULT_MASTER_KEY_ID,
  type GatewayConfig,
  type HttpUpstreamConfig,
  type IssuerConfig,
  type LimitsConfig,
  type ListenConfig,
  type LogConfig,
  type SecretsConfig,
  type SessionsConfig,
  type StdioUpstreamConfig,
  type UpstreamConfig,
} from "./gateway-config.ts";
export { type LoadConfigOptions, loadConfig, type ParseConfigOptions, parseConfig } from "./load-config.ts";
export { isLoopbackHost } from "./loopback.ts";
