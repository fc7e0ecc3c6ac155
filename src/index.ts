/**
 * tenantgate's public API, listed by name. No database driver is loaded from here: the SQLite,
 * Redis and PostgreSQL adapters are on their own subpaths and are loaded by `openStore` on demand.
 */

export {
  type AuditVerification,
  type ChainedFileSink,
  type ChainedFileSinkOptions,
  type ChainedFileSinkStats,
  type ChainHead,
  createChainedFileSink,
  formatHead,
  parseHead,
  type VerifyAuditFileOptions,
  verifyAuditFile,
  verifyAuditSeries,
} from "./audit/audit-chain.ts";
export {
  type AuthDenialReason,
  createSecurityEvents,
  jsonLinesSink,
  type RequestRefusalReason,
  type SecurityEvent,
  type SecurityEventRecord,
  type SecurityEventSink,
  type SecurityEvents,
  type SecurityEventsOptions,
} from "./audit/security-events.ts";
export {
  type GatewayConfig,
  isLoopbackHost,
  type LoadConfigOptions,
  loadConfig,
  type ParseConfigOptions,
  parseConfig,
  parseDuration,
} from "./config/index.ts";
export {
  ASSERTION_TYPE,
  type AssertionJwks,
  type AssertionSigner,
  type AssertionSignerOptions,
  createAssertionSigner,
} from "./crypto/assertion-signer.ts";
export { createIdentifierTagger, type IdentifierTagger, TAG_HEX_LENGTH } from "./crypto/identifier-tag.ts";
export { digest, ID_BYTES, looksLikeMintedId, mintId } from "./crypto/ids.ts";
export {
  generateMasterKey,
  Keyring,
  loadKeyring,
  loadMasterKey,
  MASTER_KEY_BYTES,
  type MasterKeyInput,
  parseMasterKey,
} from "./crypto/keyring.ts";
export { open, openToString, type SealContext, seal, sealedKeyId } from "./crypto/seal.ts";
export {
  GateError,
  type GateErrorCode,
  gateErrorCodes,
  isGateError,
  toWire,
  type WireError,
} from "./errors.ts";
export { type ClientAddressResolver, createClientAddressResolver } from "./gateway/client-address.ts";
export { type RunningGateway, type StartGatewayOptions, startGateway } from "./gateway/start-gateway.ts";
export {
  ANONYMOUS_ISSUER,
  API_KEY_ISSUER,
  type ApiKeyAuthenticator,
  type ApiKeyConfig,
  ASYMMETRIC_JWT_ALGORITHMS,
  type AuthenticateOptions,
  type Authenticator,
  type AuthenticatorOptions,
  anonymousPrincipal,
  type CredentialFailure,
  createApiKeyAuthenticator,
  createAuthenticator,
  createFailedAuthLimiter,
  createJwtAuthenticator,
  credentialFailureOf,
  extractBearerToken,
  type FailedAuthLimiter,
  findBearerToken,
  type JwtAuthenticator,
  type JwtIssuerConfig,
  ownerScope,
  type Principal,
  samePrincipal,
} from "./identity/index.ts";
export {
  type AssertionVerifier,
  type AssertionVerifierOptions,
  createAssertionVerifier,
} from "./server/assertion-verifier.ts";
export {
  createDownloadTokens,
  DEFAULT_DOWNLOAD_TOKEN_TTL_MS,
  type DownloadTokens,
  type DownloadTokensOptions,
} from "./server/download-tokens.ts";
export {
  createNodeMcpListener,
  fromAssertion,
  fromBearer,
  type McpAuthInfo,
  type NodeMcpListenerOptions,
  principalOf,
  type RequestAuthenticator,
  type WebMcpHandler,
} from "./server/mcp-node-listener.ts";
export {
  type CreateTaskInit,
  createOwnedTasks,
  isTerminalTaskStatus,
  type OwnedTask,
  type OwnedTaskStatus,
  type OwnedTasks,
  type OwnedTasksOptions,
  type TaskChange,
} from "./server/owned-tasks.ts";
export {
  createPollTokens,
  DEFAULT_POLL_TOKEN_TTL_MS,
  type PollTokens,
  type PollTokensOptions,
} from "./server/poll-tokens.ts";
export { type ReadRequestTokenOptions, readRequestToken, type TokenRequest } from "./server/request-token.ts";
export {
  type SafeFetchInit,
  type SafeFetchPolicy,
  type SafeFetchResolver,
  type SafeFetchResponse,
  type SafeFetchScheme,
  safeFetch,
} from "./server/safe-fetch.ts";
export { createSessionPrincipals, type SessionPrincipals } from "./server/session-principals.ts";
export {
  createUploadSigner,
  type IssuedUpload,
  type IssueUploadOptions,
  MAX_STORED_UPLOAD_BYTES,
  MAX_UPLOAD_BYTES,
  MAX_UPLOAD_URL_TTL_MS,
  type ReceivedUpload,
  type StoredUpload,
  type UploadOutcome,
  type UploadRefusalReason,
  type UploadSigner,
  type UploadSignerOptions,
} from "./server/signed-uploads.ts";
export {
  createSingleUseCodes,
  MAX_CODE_TTL_MS,
  MAX_CODE_VALUE_LENGTH,
  type SingleUseCodes,
  type SingleUseCodesOptions,
} from "./server/single-use-codes.ts";
export { createStateHandles, type StateHandles, type StateHandlesOptions } from "./server/state-handles.ts";
export type { IssuedTaskToken } from "./server/task-tokens.ts";
export { type OpenRevocationBusOptions, openRevocationBus } from "./sessions/open-revocation-bus.ts";
export { createRevocation, type Revocation, type RevocationOptions } from "./sessions/revocation.ts";
export {
  decodeNotice,
  encodeNotice,
  openInProcessRevocationBus,
  principalDigest,
  type RevocationBus,
  type RevocationHandler,
  type RevocationNotice,
  type RevocationSignal,
} from "./sessions/revocation-bus.ts";
export {
  type CreateSessionInput,
  createSessionRegistry,
  type ResolvedSession,
  type Session,
  type SessionDenial,
  type SessionDenialReason,
  type SessionRegistry,
  type SessionRegistryOptions,
} from "./sessions/session-registry.ts";
export type {
  ClaimOutcome,
  CounterOptions,
  CounterOutcome,
  Store,
  StoreBackend,
  TtlOptions,
} from "./store/contract.ts";
export {
  type CounterKey,
  counterKey,
  type IndexKey,
  type OwnerScope,
  ownedKey,
  ownerIndexKey,
  ownershipKey,
  type RecordKey,
} from "./store/keys.ts";
export { MemoryStore, type MemoryStoreOptions } from "./store/memory-store.ts";
export { type OpenStoreOptions, openStore } from "./store/open-store.ts";
export {
  type InjectionPlan,
  parseInjectTemplate,
  planInjection,
  renderInjection,
} from "./vault/injection.ts";
export {
  createVault,
  MAX_VAULT_ENTRIES_PER_PRINCIPAL,
  MAX_VAULT_VALUE_LENGTH,
  type ResealReport,
  type RevealedEntries,
  VAULT_ENTRY_NAME,
  type Vault,
  type VaultEntryInfo,
  type VaultOptions,
} from "./vault/vault.ts";
