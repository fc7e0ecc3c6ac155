import type { IncomingMessage, ServerResponse } from "node:http";
import { GateError, invalidArgument, isGateError, toWire } from "../errors.ts";
import { readRequestBody } from "../gateway/json-rpc-body.ts";
import type { Authenticator } from "../identity/authenticate.ts";
import type { Principal } from "../identity/principal.ts";
import type { AssertionVerifier } from "./assertion-verifier.ts";

/**
 * The official MCP server SDK (v2) meets tenantgate here. `createMcpHandler` gives a web-standard
 * `fetch(request, { authInfo })`; this module mounts it on `node:http`, authenticates every request
 * first (the gateway's `Tenantgate-Assertion`, or the server's own bearer check), and hands the
 * verified `Principal` to tool handlers through `authInfo.extra`, where `principalOf(ctx)` reads it.
 *
 * No SDK import: the shapes below are the SDK's, written structurally, so tenantgate does not pin
 * the SDK version its users run.
 */

/** The SDK's `AuthInfo` (the fields tenantgate sets). */
export interface McpAuthInfo {
  readonly token: string;
  readonly clientId: string;
  readonly scopes: string[];
  readonly expiresAt?: number;
  readonly extra?: Record<string, unknown>;
}

/** What `createMcpHandler(...)` returns in the v2 server SDK. */
export interface WebMcpHandler {
  fetch(request: Request, options?: { authInfo?: McpAuthInfo }): Promise<Response>;
}

/** Who is calling, from the request's headers; rejects with a GateError (401) otherwise. */
export type RequestAuthenticator = (request: IncomingMessage) => Promise<Principal>;

export interface NodeMcpListenerOptions {
  readonly authenticate: RequestAuthenticator;
  /** Largest request body read. Default 4 MiB. */
  readonly maxBodyBytes?: number;
  /** Called with every error the listener answers itself (for the server's own log). */
  readonly onError?: (error: unknown) => void;
}

/** Where the principal travels inside `authInfo.extra`. */
const PRINCIPAL_KEY = "tenantgate.principal";

/**
 * Every principal a listener authenticated and handed to the SDK. `authInfo.extra` is an open
 * record: other auth middleware commonly spreads a token's claims into it, so a client-chosen claim
 * named "tenantgate.principal" would otherwise be taken as verified. Only the very object the
 * listener attached is trusted; a copy, or JSON of the same shape, is not.
 */
const attachedPrincipals = new WeakSet<Principal>();

/**
 * The verified principal of the request a tool handler serves (the SDK's `ctx`). Fails closed: a
 * handler reached without one (a listener that was not mounted through tenantgate) is refused
 * rather than served as nobody.
 */
export function principalOf(ctx: {
  readonly http?: { readonly authInfo?: { readonly extra?: unknown } };
}): Principal {
  const extra = ctx?.http?.authInfo?.extra as Record<string, unknown> | undefined;
  const principal = extra?.[PRINCIPAL_KEY];
  if (
    typeof principal !== "object" ||
    principal === null ||
    !attachedPrincipals.has(principal as Principal)
  ) {
    throw new GateError("ERR_AUTH_REQUIRED", "no verified principal for this request");
  }
  return principal as Principal;
}

/** Behind tenantgate: the caller is whoever the gateway's assertion names. */
export function fromAssertion(verifier: AssertionVerifier): RequestAuthenticator {
  return (request) => verifier.verify(request.headersDistinct["tenantgate-assertion"]);
}

/** Standalone: the server checks bearer tokens itself with tenantgate's authenticator. */
export function fromBearer(
  authenticator: Authenticator,
  options: { readonly audience: string; readonly requiredScopes?: readonly string[] },
): RequestAuthenticator {
  return async (request) => {
    const caller = await authenticator.authenticate(request.headersDistinct, {
      audience: options.audience,
      requiredScopes: options.requiredScopes ?? [],
      clientAddress: request.socket.remoteAddress,
    });
    if (caller === "anonymous") throw new GateError("ERR_AUTH_REQUIRED", "authentication required");
    return caller;
  };
}

const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;
/** Request headers that carry the caller's credential; the verified principal replaces them. */
const CREDENTIAL_HEADERS: ReadonlySet<string> = new Set(["authorization", "tenantgate-assertion"]);

export function createNodeMcpListener(
  handler: WebMcpHandler,
  options: NodeMcpListenerOptions,
): (request: IncomingMessage, response: ServerResponse) => void {
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  if (!Number.isSafeInteger(maxBodyBytes) || maxBodyBytes < 0) {
    throw invalidArgument("maxBodyBytes", "must be a non-negative integer");
  }
  const refuse = (request: IncomingMessage, response: ServerResponse, error: unknown): void => {
    try {
      options.onError?.(error);
    } catch {
      // The server's log hook must not change the answer.
    }
    const wire = toWire(isGateError(error) ? error.code : "ERR_INTERNAL");
    if (response.headersSent) {
      response.destroy();
      return;
    }
    const body = JSON.stringify({
      jsonrpc: "2.0",
      id: null,
      error: { code: -32000, message: wire.message, data: { code: wire.code } },
    });
    response.writeHead(wire.status, {
      "content-type": "application/json",
      "cache-control": "no-store",
      ...(wire.status === 401 ? { "www-authenticate": "Bearer" } : {}),
      // Refused before its body ended (unauthenticated, or past maxBodyBytes): close the connection.
      // Kept alive, Node would either read the rest of an unauthenticated body to discard it, or
      // leave a paused request holding the socket.
      ...(request.complete ? {} : { connection: "close" }),
    });
    response.end(body);
  };

  async function serve(request: IncomingMessage, response: ServerResponse): Promise<void> {
    // Authenticated before the body is read: an unauthenticated caller costs no buffering.
    const principal = await options.authenticate(request);
    attachedPrincipals.add(principal);
    // Content-Length past the limit is refused before a byte is read, a streamed body at the chunk
    // that crosses it; an aborted body is ERR_REQUEST_INVALID.
    const body = await readRequestBody(request, maxBodyBytes);
    const aborter = new AbortController();
    response.on("close", () => {
      if (!response.writableFinished) aborter.abort();
    });
    const headers = new Headers();
    for (const [name, values] of Object.entries(request.headersDistinct)) {
      // The SDK hands this request to tool code (`ctx.http.req`): the credential it was authenticated
      // with stays here, so a handler that logs or forwards headers cannot leak or replay it.
      if (CREDENTIAL_HEADERS.has(name)) continue;
      for (const value of values ?? []) headers.append(name, value);
    }
    const method = (request.method ?? "GET").toUpperCase();
    const webRequest = new Request(new URL(request.url ?? "/", "http://mcp.invalid"), {
      method,
      headers,
      signal: aborter.signal,
      ...(method !== "GET" && method !== "HEAD" ? { body } : {}),
    });
    const authInfo: McpAuthInfo = {
      // The SDK wants a token string; the credential itself never reaches tool code.
      token: "verified-by-tenantgate",
      clientId: principal.subject,
      scopes: [...principal.scopes],
      ...(principal.expiresAt === null ? {} : { expiresAt: Math.floor(principal.expiresAt / 1000) }),
      extra: { [PRINCIPAL_KEY]: principal },
    };
    const answer = await handler.fetch(webRequest, { authInfo });
    const answerHeaders: Record<string, string> = {};
    answer.headers.forEach((value, name) => {
      answerHeaders[name] = value;
    });
    response.writeHead(answer.status, answerHeaders);
    if (answer.body === null) {
      response.end();
      return;
    }
    const reader = answer.body.getReader();
    response.on("close", () => void reader.cancel().catch(() => undefined));
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (!response.write(value)) await new Promise((resolve) => response.once("drain", resolve));
    }
    response.end();
  }

  return (request, response) => {
    serve(request, response).catch((error: unknown) => refuse(request, response, error));
  };
}
