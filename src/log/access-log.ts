import type { IdentifierTagger } from "../crypto/identifier-tag.ts";
import type { RequestRecord } from "../gateway/request-record.ts";
import type { GatewayLogger } from "./logger.ts";

/**
 * One access-log line per request, built field by field from the request record: identifiers become
 * keyed tags named as in the security events (`subjectTag`, `tenantTag`, `sessionTag`, `clientTag`,
 * the issuer readable), so an access line and the audit events of the same request join on them.
 */
export interface AccessLogFields {
  readonly kind: "access";
  readonly method: string;
  readonly path?: string;
  readonly upstream?: string;
  readonly era?: string;
  readonly mcpMethod?: string;
  readonly status?: number;
  readonly code?: string;
  readonly durationMs: number;
  readonly bytesOut: number;
  readonly aborted?: true;
  readonly clientTag?: string;
  readonly issuer?: string;
  readonly subjectTag?: string;
  readonly tenantTag?: string;
  readonly sessionTag?: string;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

export function accessLogFields(record: RequestRecord, tagger: IdentifierTagger): AccessLogFields {
  const tag = (value: string | undefined): string | undefined =>
    value === undefined || value.length === 0 ? undefined : tagger.tag(value);
  // Built in reading order (what was asked, how it ended, who asked), which is the line's order.
  const fields: Partial<Mutable<AccessLogFields>> = { kind: "access", method: record.httpMethod };
  if (record.path !== undefined) fields.path = record.path;
  if (record.upstream !== undefined) fields.upstream = record.upstream;
  if (record.era !== undefined) fields.era = record.era;
  if (record.mcpMethod !== undefined) fields.mcpMethod = record.mcpMethod;
  if (record.status !== undefined) fields.status = record.status;
  if (record.errorCode !== undefined) fields.code = record.errorCode;
  fields.durationMs = record.durationMs;
  fields.bytesOut = record.bytesOut;
  if (record.aborted) fields.aborted = true;
  const clientTag = tag(record.clientAddress);
  if (clientTag !== undefined) fields.clientTag = clientTag;
  if (record.principal !== undefined) {
    fields.issuer = record.principal.issuer;
    const subjectTag = tag(record.principal.subject);
    if (subjectTag !== undefined) fields.subjectTag = subjectTag;
    const tenantTag = tag(record.principal.tenant);
    if (tenantTag !== undefined) fields.tenantTag = tenantTag;
  }
  const sessionTag = tag(record.sessionDigest);
  if (sessionTag !== undefined) fields.sessionTag = sessionTag;
  return fields as AccessLogFields;
}

/**
 * The `onRequestDone` callback that writes the access log: `info`, or `warn` for a 5xx the gateway
 * answered (its own failure or the upstream's). Never throws into the request's close handling.
 */
export function accessLogWriter(
  logger: GatewayLogger,
  tagger: IdentifierTagger,
): (record: RequestRecord) => void {
  return (record) => {
    try {
      const fields = accessLogFields(record, tagger);
      if ((record.status ?? 0) >= 500) logger.pino.warn(fields, "request");
      else logger.pino.info(fields, "request");
    } catch {
      // A log line is never worth a failed response.
    }
  };
}
