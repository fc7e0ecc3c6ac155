/**
 * Checks for the non-network values in the config. Each is a predicate; the schema attaches the
 * message, which names the setting and the expected form, never the value.
 */

/** `env:NAME` or `file:PATH`: where a key is, never the key itself. */
export function isSecretReference(text: string): boolean {
  if (text.startsWith("env:")) return /^[A-Za-z_][A-Za-z0-9_]*$/.test(text.slice(4));
  if (text.startsWith("file:")) return isFilePath(text.slice(5));
  return false;
}

/** The variable an `env:NAME` reference reads, if it is one. */
export function referencedEnvironmentVariable(reference: string | undefined): string | undefined {
  return reference?.startsWith("env:") ? reference.slice(4) : undefined;
}

export function isFilePath(text: string): boolean {
  return text.length > 0 && text.length <= 4096 && !text.includes("\u0000");
}

/**
 * An upstream's path: exact-match routes, so the form is kept narrow enough that no two spellings
 * can reach one route and no spelling can reach a reserved one. Segments of RFC 3986 unreserved
 * characters only (no `%`: `/%2Ewell-known` must not slip past the reserved-prefix rule), no empty,
 * `.` or `..` segment (URL normalisation would move them), no trailing slash except `/` itself.
 */
export function upstreamPathProblem(path: string): string | undefined {
  if (path === "/") return undefined;
  if (!path.startsWith("/")) return 'must start with "/"';
  if (path.includes("?") || path.includes("#")) return "must not contain a query or fragment";
  if (path.endsWith("/")) return "must not end with a slash";
  const segments = path.slice(1).split("/");
  if (!segments.every((segment) => /^[A-Za-z0-9._~-]+$/.test(segment) && !/^\.{1,2}$/.test(segment))) {
    return "must be segments of A-Z a-z 0-9 . _ ~ - (no empty, . or .. segment)";
  }
  // Paths are compared case-sensitively, but a case-insensitive router or proxy in front could fold
  // `/.Well-Known/` onto the reserved space, so the reserved check ignores case.
  const lower = path.toLowerCase();
  for (const reserved of ["/.well-known", "/.tenantgate"]) {
    if (lower === reserved || lower.startsWith(`${reserved}/`)) return `must not be under ${reserved}/`;
  }
  if (path.length > 200) return "must be at most 200 characters";
  return undefined;
}

/** An HTTP field name (RFC 9110 token). */
export function isHeaderName(text: string): boolean {
  return /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$/.test(text);
}

/**
 * Headers an `inject` entry may not set: framing and hop-by-hop fields (setting them would let the
 * config desynchronise the upstream connection), `Host`, and the headers the gateway itself owns
 * toward the upstream (its assertion, MCP session and routing headers).
 */
export function isGatewayOwnedHeader(name: string): boolean {
  const lower = name.toLowerCase();
  return (
    [
      "host",
      "connection",
      "keep-alive",
      "proxy-connection",
      "transfer-encoding",
      "te",
      "trailer",
      "upgrade",
      "content-length",
      "tenantgate-assertion",
      "last-event-id",
    ].includes(lower) || lower.startsWith("mcp-")
  );
}

/** An OAuth scope token (RFC 6749 section 3.3). */
export function isScopeToken(text: string): boolean {
  return /^[\u0021\u0023-\u005b\u005d-\u007e]{1,200}$/.test(text);
}

/** Subjects, tenants and audiences: non-empty, bounded, printable, well-formed Unicode. */
export function isPlainText(text: string, maxLength = 256): boolean {
  return text.length > 0 && text.length <= maxLength && text.isWellFormed() && !hasControlCharacter(text);
}

/** C0 and C1 control characters, DEL: never meaningful in a setting, and they can split log lines. */
export function hasControlCharacter(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) return true;
  }
  return false;
}

/** A stored SHA-256 digest as `digest()` makes it: 43 characters of canonical base64url. */
export function isDigest(text: string): boolean {
  return /^[A-Za-z0-9_-]{43}$/.test(text) && Buffer.from(text, "base64url").toString("base64url") === text;
}

/** The name of a variable in a spawned upstream's environment. */
export function isEnvironmentVariableName(text: string): boolean {
  return /^[A-Za-z_][A-Za-z0-9_]{0,127}$/.test(text);
}

/** An MCP protocol revision (`YYYY-MM-DD`, a real calendar date). */
export function isProtocolVersion(text: string): boolean {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(text)) return false;
  const date = new Date(`${text}T00:00:00Z`);
  return !Number.isNaN(date.getTime()) && date.toISOString().startsWith(text);
}
