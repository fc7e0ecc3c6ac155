import { z } from "zod";
import { GATEWAY_PROTOCOL_VERSIONS } from "../gateway/protocol-era.ts";
import { ASYMMETRIC_JWT_ALGORITHMS, type JwtAlgorithm } from "../identity/jwt-authenticator.ts";
import { DEFAULT_LOG_LEVEL, LOG_LEVELS } from "../log/log-level.ts";
import { environmentVaultReference, parseInjectTemplate } from "../vault/injection.ts";
import { VAULT_ENTRY_NAME } from "../vault/vault.ts";
import { durationToMs } from "./duration.ts";
import { isLoopbackHost } from "./loopback.ts";
import {
  canonicalCidr,
  canonicalHost,
  canonicalHostHeader,
  canonicalOrigin,
  canonicalPublicUrl,
  type HttpUrlRules,
  parseHttpUrl,
} from "./network-values.ts";
import { storeUrlProblem } from "./store-url.ts";
import {
  hasControlCharacter,
  isDigest,
  isEnvironmentVariableName,
  isFilePath,
  isGatewayOwnedHeader,
  isHeaderName,
  isPlainText,
  isProtocolVersion,
  isScopeToken,
  isSecretReference,
  upstreamPathProblem,
} from "./value-checks.ts";

/**
 * The config file's shape (operator contract in DESIGN.md): strict objects, so an unknown or
 * misspelt key is refused rather than ignored, and the rules each object can check on its own.
 * Defaults that depend on other settings (publicUrl, allowedHosts, allowedOrigins, audiences) and
 * rules that span sections are applied afterwards in resolve-config.ts.
 *
 * Every message is written here or in issues.ts and names the expected form, never the value.
 */

// --- building blocks -------------------------------------------------------------------------

function checked(valid: (value: string) => boolean, problem: string) {
  return z.string().superRefine((value, ctx) => {
    if (!valid(value)) ctx.addIssue({ code: "custom", message: problem });
  });
}

function canonical(canon: (value: string) => string | undefined, problem: string) {
  return z.string().transform((value, ctx) => {
    const result = canon(value);
    if (result === undefined) {
      ctx.addIssue({ code: "custom", message: problem });
      return z.NEVER;
    }
    return result;
  });
}

function integer(min: number, max: number) {
  return z.number().superRefine((value, ctx) => {
    if (!Number.isInteger(value) || value < min || value > max) {
      ctx.addIssue({ code: "custom", message: `must be a whole number from ${min} to ${max}` });
    }
  });
}

/** A duration string in, milliseconds out. */
function duration(minMs: number, maxMs: number, bounds: string) {
  return z.string().transform((value, ctx) => {
    const ms = durationToMs(value);
    if (ms === undefined) {
      ctx.addIssue({ code: "custom", message: "must be a whole number followed by ms, s, m or h (30s, 5m)" });
      return z.NEVER;
    }
    if (ms < minMs || ms > maxMs) {
      ctx.addIssue({ code: "custom", message: `must be ${bounds}` });
      return z.NEVER;
    }
    return ms;
  });
}

function httpUrl(rules: HttpUrlRules, problem: string) {
  return checked((value) => parseHttpUrl(value, rules) !== undefined, problem);
}

/** A list whose entries must be unique; `key` gives the comparison form. */
function uniqueList<T extends z.ZodType>(item: T, key: (value: z.output<T>) => string = String) {
  return z.array(item).superRefine((values, ctx) => {
    const seen = new Set<string>();
    values.forEach((value, index) => {
      const k = key(value);
      if (seen.has(k)) ctx.addIssue({ code: "custom", message: "repeats an earlier entry", path: [index] });
      seen.add(k);
    });
  });
}

/** Reports every entry after the first whose `field` repeats an earlier one. */
function refuseDuplicates<T>(
  ctx: z.core.$RefinementCtx<T[]>,
  items: readonly T[],
  field: string,
  key: (item: T) => string | undefined,
): void {
  const seen = new Set<string>();
  items.forEach((item, index) => {
    const k = key(item);
    if (k === undefined) return;
    if (seen.has(k)) {
      ctx.addIssue({ code: "custom", message: "repeats an earlier entry's value", path: [index, field] });
    }
    seen.add(k);
  });
}

const secretReference = checked(
  isSecretReference,
  "must be env:NAME or file:PATH (the key itself never goes in the config)",
);
const filePath = checked(isFilePath, "must be a file path");
const host = canonical(canonicalHost, "must be an IP address or a host name");
const port = integer(0, 65535);
const scopes = uniqueList(checked(isScopeToken, "must be an OAuth scope token")).default([]);
const keyId = checked(
  (value) => /^[A-Za-z0-9_-]{1,32}$/.test(value),
  "must be 1-32 characters of A-Z a-z 0-9 _ -",
);
const digest = checked(isDigest, "must be a 43-character base64url digest");

/** The identity layer decides which algorithms exist; the config only accepts those. */
export type { JwtAlgorithm };

// --- sections --------------------------------------------------------------------------------

const listenSchema = z
  .strictObject({
    host: host.prefault("127.0.0.1"),
    port: port.default(8787),
    trustedProxies: uniqueList(
      canonical(canonicalCidr, "must be an IP address or CIDR block with no host bits set, prefix 1 or more"),
    ).default([]),
    allowedHosts: uniqueList(
      canonical(canonicalHostHeader, "must be a host name or address with an optional :port"),
    )
      .min(1)
      .optional(),
    allowedOrigins: uniqueList(
      canonical(canonicalOrigin, "must be an origin: http(s)://host[:port] with nothing after it"),
    ).optional(),
    allowUnauthenticatedExposure: z.boolean().default(false),
  })
  .prefault({});

const secretsSchema = z
  .strictObject({
    masterKey: secretReference.optional(),
    masterKeys: z
      .array(z.strictObject({ id: keyId, key: secretReference }))
      .min(1)
      .superRefine((keys, ctx) => refuseDuplicates(ctx, keys, "id", (key) => key.id))
      .optional(),
    activeKeyId: keyId.optional(),
    tagKey: secretReference.optional(),
  })
  .prefault({})
  .superRefine((secrets, ctx) => {
    if (secrets.masterKey !== undefined) {
      if (secrets.masterKeys !== undefined) {
        ctx.addIssue({
          code: "custom",
          message: "cannot be set together with secrets.masterKey: use one form",
          path: ["masterKeys"],
        });
      }
      if (secrets.activeKeyId !== undefined) {
        ctx.addIssue({
          code: "custom",
          message: "belongs with secrets.masterKeys, not secrets.masterKey",
          path: ["activeKeyId"],
        });
      }
      return;
    }
    if (secrets.masterKeys === undefined) {
      ctx.addIssue({
        code: "custom",
        message: "must set secrets.masterKey, or secrets.masterKeys with secrets.activeKeyId",
      });
      return;
    }
    if (secrets.activeKeyId === undefined) {
      ctx.addIssue({ code: "custom", message: "is required with secrets.masterKeys", path: ["activeKeyId"] });
    } else if (!secrets.masterKeys.some((key) => key.id === secrets.activeKeyId)) {
      ctx.addIssue({
        code: "custom",
        message: "must be the id of one of secrets.masterKeys",
        path: ["activeKeyId"],
      });
    }
  });

const issuerSchema = z
  .strictObject({
    // Kept exactly as written: it is compared with the token's `iss` character for character.
    issuer: httpUrl(
      { http: "loopback", allowQuery: false },
      "must be an https URL (http only for a loopback host) without credentials, query or fragment",
    ),
    jwksUrl: httpUrl(
      { http: "loopback", allowQuery: true },
      "must be an https URL (http only for a loopback host) without credentials or fragment",
    ).optional(),
    jwksFile: filePath.optional(),
    algorithms: uniqueList(z.enum(ASYMMETRIC_JWT_ALGORITHMS)).min(1).default(["RS256", "ES256", "EdDSA"]),
    clockSkew: duration(0, 300_000, "at most 5m").prefault("30s"),
    tenantClaim: checked(
      (value) => isPlainText(value, 200) && !/\s/.test(value),
      "must be a claim name",
    ).optional(),
  })
  .superRefine((issuer, ctx) => {
    if ((issuer.jwksUrl === undefined) === (issuer.jwksFile === undefined)) {
      ctx.addIssue({ code: "custom", message: "must set exactly one of jwksUrl and jwksFile" });
    }
  });

const apiKeySchema = z.strictObject({
  id: checked(
    (value) => /^[A-Za-z0-9_.-]{1,64}$/.test(value),
    "must be 1-64 characters of A-Z a-z 0-9 _ . -",
  ),
  digest: checked(isDigest, "must be a 43-character base64url digest (tenantgate keys api-key prints one)"),
  subject: checked(isPlainText, "must be 1-256 printable characters"),
  tenant: checked(isPlainText, "must be 1-256 printable characters"),
  scopes,
});

const authSchema = z
  .strictObject({
    issuers: z
      .array(issuerSchema)
      .superRefine((issuers, ctx) => refuseDuplicates(ctx, issuers, "issuer", (issuer) => issuer.issuer))
      .default([]),
    apiKeys: z
      .array(apiKeySchema)
      .superRefine((keys, ctx) => {
        refuseDuplicates(ctx, keys, "id", (key) => key.id);
        refuseDuplicates(ctx, keys, "digest", (key) => key.digest);
      })
      .default([]),
    anonymous: z.boolean().default(false),
  })
  .prefault({})
  .superRefine((auth, ctx) => {
    // Invariant 2 and THREATS L3: a gateway with no way to authenticate would either serve everyone
    // or no one; both are configuration mistakes, so it does not start.
    if (auth.issuers.length === 0 && auth.apiKeys.length === 0 && !auth.anonymous) {
      ctx.addIssue({
        code: "custom",
        message: "configures no authentication: add auth.issuers or auth.apiKeys, or set auth.anonymous",
      });
    }
  });

function recordOf(
  keyValid: (key: string) => string | undefined,
  valueValid: (value: string) => boolean,
  valueProblem: string,
) {
  return z.record(z.string(), z.string()).superRefine((record, ctx) => {
    for (const [key, value] of Object.entries(record)) {
      const keyProblem = keyValid(key);
      if (keyProblem) ctx.addIssue({ code: "custom", message: keyProblem, path: [key] });
      else if (!valueValid(value)) ctx.addIssue({ code: "custom", message: valueProblem, path: [key] });
    }
  });
}

const noNul = (value: string) => !value.includes("\u0000");

const upstreamSchema = z
  .strictObject({
    name: checked((value) => /^[a-z0-9-]{1,40}$/.test(value), "must be 1-40 characters of a-z 0-9 -"),
    path: z.string().superRefine((value, ctx) => {
      const problem = upstreamPathProblem(value);
      if (problem) ctx.addIssue({ code: "custom", message: problem });
    }),
    url: httpUrl(
      { http: "always", allowQuery: true },
      "must be an http(s) URL without credentials or fragment",
    ).optional(),
    command: checked((value) => isPlainText(value, 4096), "must be a command").optional(),
    args: z.array(checked(noNul, "must not contain NUL")).optional(),
    env: recordOf(
      (key) => (isEnvironmentVariableName(key) ? undefined : "must be a variable name (A-Z a-z 0-9 _)"),
      noNul,
      "must not contain NUL",
    ).optional(),
    audience: checked((value) => isPlainText(value, 2048), "must be 1-2048 printable characters").optional(),
    // A command upstream's processes (src/upstreams/stdio-upstream.ts); defaults there.
    stdio: z
      .strictObject({
        runAs: z.enum(["gateway", "distinct-uid"]).optional(),
        uidRange: z
          .tuple([integer(1, 2 ** 31 - 2), integer(1, 2 ** 31 - 2)])
          .refine(([low, high]) => low <= high, "must be [lowest, highest]")
          .optional(),
        maxProcesses: integer(1, 100_000).optional(),
        maxProcessesPerPrincipal: integer(1, 1_000).optional(),
        maxProcessesPerTenant: integer(1, 100_000).optional(),
        startTimeout: duration(100, 300_000, "from 100ms to 5m").optional(),
        requestTimeout: duration(1_000, 86_400_000, "from 1s to 24h").optional(),
        workRoot: checked(
          (value) => value.startsWith("/") && isPlainText(value, 1024),
          "must be an absolute path",
        ).optional(),
        modern: z.enum(["off", "per-principal"]).optional(),
      })
      .optional(),
    scopes,
    protocolVersions: uniqueList(checked(isProtocolVersion, "must be a protocol revision (YYYY-MM-DD)"))
      .min(1)
      .optional(),
    inject: recordOf(
      (key) => {
        if (!isHeaderName(key)) return "must be an HTTP header name";
        if (isGatewayOwnedHeader(key))
          return "is a header the gateway sets or forbids; it cannot be injected";
        return undefined;
      },
      (value) => value.length <= 8192 && !hasControlCharacter(value),
      "must be a template of at most 8192 characters without control characters",
    )
      .superRefine((inject, ctx) => {
        const seen = new Set<string>();
        for (const [key, template] of Object.entries(inject)) {
          const parsed = parseInjectTemplate(template);
          if (typeof parsed === "string") ctx.addIssue({ code: "custom", message: parsed, path: [key] });
          const lower = key.toLowerCase();
          if (seen.has(lower)) {
            ctx.addIssue({
              code: "custom",
              message: "repeats a header name (names ignore case)",
              path: [key],
            });
          }
          seen.add(lower);
        }
      })
      .optional(),
  })
  .superRefine((upstream, ctx) => {
    if ((upstream.url === undefined) === (upstream.command === undefined)) {
      ctx.addIssue({ code: "custom", message: "must set exactly one of url and command" });
    }
    // `vault:NAME` in a command's environment names the caller's vault entry: a malformed name would
    // only be found when the first session starts, so it is refused here, naming the variable.
    for (const [variable, value] of Object.entries(upstream.env ?? {})) {
      const entry = environmentVaultReference(value);
      if (entry !== undefined && !VAULT_ENTRY_NAME.test(entry)) {
        ctx.addIssue({
          code: "custom",
          message: "names a vault entry that is not 1-64 characters of a-z 0-9 _ starting with a letter",
          path: ["env", variable],
        });
      }
    }
    if (upstream.command !== undefined) {
      // A stdio server is initialized once, by one principal: modern requests, which carry no
      // session, need a process per principal, which the bridge runs only when told to.
      const perPrincipal = upstream.stdio?.modern === "per-principal";
      const declared = upstream.protocolVersions;
      const modern = GATEWAY_PROTOCOL_VERSIONS.modern.filter((version) => declared?.includes(version));
      if (modern.length > 0 && !perPrincipal) {
        ctx.addIssue({
          code: "custom",
          message: `lists ${modern.join(", ")}: a command upstream serves modern requests only with stdio.modern "per-principal"`,
          path: ["protocolVersions"],
        });
      }
      if (perPrincipal && declared !== undefined && modern.length === 0) {
        ctx.addIssue({
          code: "custom",
          message: `"per-principal" needs protocolVersions to list ${GATEWAY_PROTOCOL_VERSIONS.modern.join(", ")} or to be unset`,
          path: ["stdio", "modern"],
        });
      }
    }
    if (upstream.url !== undefined) {
      for (const key of ["args", "env", "stdio"] as const) {
        if (upstream[key] !== undefined) {
          ctx.addIssue({ code: "custom", message: "applies only to a command upstream", path: [key] });
        }
      }
    }
  });

const upstreamsSchema = z
  .array(upstreamSchema)
  .superRefine((upstreams, ctx) => {
    if (upstreams.length === 0) {
      ctx.addIssue({ code: "custom", message: "must list at least one upstream" });
    }
    refuseDuplicates(ctx, upstreams, "name", (upstream) => upstream.name);
    refuseDuplicates(ctx, upstreams, "path", (upstream) => upstream.path);
  })
  // prefault, not default: a missing list goes through the check above and is refused.
  .prefault([]);

const DAY_MS = 86_400_000;

const sessionsSchema = z
  .strictObject({
    idleTimeout: duration(1_000, 7 * DAY_MS, "from 1s to 168h").prefault("30m"),
    absoluteTimeout: duration(1_000, 30 * DAY_MS, "from 1s to 720h").prefault("8h"),
    maxPerPrincipal: integer(1, 100_000).default(100),
    onLimit: z.enum(["evict-oldest", "reject"]).default("reject"),
    maxPerTenant: integer(1, 100_000_000).optional(),
    clientBinding: z.enum(["off", "audit", "reject"]).default("off"),
  })
  .prefault({})
  .superRefine((sessions, ctx) => {
    if (sessions.absoluteTimeout < sessions.idleTimeout) {
      ctx.addIssue({
        code: "custom",
        message: "must be at least sessions.idleTimeout",
        path: ["absoluteTimeout"],
      });
    }
  });

/** Connection caps of one pool, at each level. */
function capsSchema(defaults: { global: number; perIp: number; perPrincipal: number; perSession: number }) {
  return z
    .strictObject({
      global: integer(1, 10_000_000).default(defaults.global),
      perIp: integer(1, 10_000_000).default(defaults.perIp),
      perPrincipal: integer(1, 10_000_000).default(defaults.perPrincipal),
      perSession: integer(1, 10_000_000).default(defaults.perSession),
    })
    .prefault({});
}

function positiveNumber(max: number) {
  return z.number().superRefine((value, ctx) => {
    if (!Number.isFinite(value) || value <= 0 || value > max) {
      ctx.addIssue({ code: "custom", message: `must be a number above 0 and at most ${max}` });
    }
  });
}

const rateSchema = z
  .strictObject({
    enabled: z.boolean().default(true),
    perSecond: positiveNumber(1_000_000).default(20),
    burst: integer(1, 1_000_000_000).default(100),
    fallbackFactor: positiveNumber(1).default(0.25),
  })
  .prefault({});

const limitsSchema = z
  .strictObject({
    scope: z.enum(["local", "cluster"]).default("local"),
    maxBodyBytes: integer(1, 1_073_741_824).default(4 * 1024 * 1024),
    maxHeaderBytes: integer(1024, 1_048_576).default(16 * 1024),
    maxBatchSize: integer(1, 1000).default(50),
    streams: capsSchema({ global: 10_000, perIp: 200, perPrincipal: 50, perSession: 8 }),
    inflight: capsSchema({ global: 4_000, perIp: 400, perPrincipal: 100, perSession: 32 }),
    rate: rateSchema,
  })
  .prefault({});

const auditSchema = z
  .strictObject({
    file: filePath.optional(),
    stdout: z.boolean().default(true),
    // Past this the file is sealed, moved aside and continued in a fresh one (decision 85). At
    // least 1 MiB: each rotation costs three fsyncs and a rename, and a file must hold a line.
    maxFileBytes: integer(1_048_576, 1_099_511_627_776).default(134_217_728),
  })
  .prefault({})
  .superRefine((audit, ctx) => {
    // Invariant 9: security events always go somewhere.
    if (audit.file === undefined && !audit.stdout) {
      ctx.addIssue({
        code: "custom",
        message: "must keep stdout on when no audit.file is set",
        path: ["stdout"],
      });
    }
  });

const logSchema = z
  .strictObject({
    level: z.enum(LOG_LEVELS).default(DEFAULT_LOG_LEVEL),
    file: filePath.optional(),
  })
  .prefault({});

const adminSchema = z
  .strictObject({
    enabled: z.boolean().default(true),
    listen: z
      .strictObject({
        host: host.prefault("127.0.0.1"),
        port: port.default(8788),
      })
      .prefault({}),
    tokenDigest: digest.optional(),
  })
  .prefault({})
  .superRefine((admin, ctx) => {
    // The admin API revokes sessions and reads the audit trail: off loopback it needs a token.
    if (!isLoopbackHost(admin.listen.host) && admin.tokenDigest === undefined) {
      ctx.addIssue({
        code: "custom",
        message: "is required when admin.listen.host is not a loopback address",
        path: ["tokenDigest"],
      });
    }
  });

export const gatewayConfigSchema = z.strictObject({
  publicUrl: canonical(
    canonicalPublicUrl,
    "must be an http(s) URL without credentials, query or fragment",
  ).optional(),
  listen: listenSchema,
  store: z
    .string()
    .superRefine((value, ctx) => {
      const problem = storeUrlProblem(value);
      if (problem) ctx.addIssue({ code: "custom", message: problem });
    })
    .default("sqlite:.tenantgate/store.db"),
  secrets: secretsSchema,
  auth: authSchema,
  upstreams: upstreamsSchema,
  sessions: sessionsSchema,
  limits: limitsSchema,
  audit: auditSchema,
  log: logSchema,
  admin: adminSchema,
});

/** The schema's output: every section present, durations in ms, cross-section defaults not yet set. */
export type ParsedConfig = z.output<typeof gatewayConfigSchema>;
