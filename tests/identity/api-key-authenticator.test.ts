import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { digest, mintId } from "../../src/crypto/ids.ts";
import { isGateError } from "../../src/errors.ts";
import {
  API_KEY_ISSUER,
  type ApiKeyConfig,
  createApiKeyAuthenticator,
  samePrincipal,
} from "../../src/identity/index.ts";

const aliceKey = `tg_${mintId(32)}`;
const bobKey = `tg_${mintId(32)}`;
const aliceRotated = `tg_${mintId(32)}`;

const keys: ApiKeyConfig[] = [
  {
    id: "alice-1",
    digest: digest("api-key", aliceKey),
    subject: "alice",
    tenant: "acme",
    scopes: ["tools:read"],
  },
  { id: "bob-1", digest: digest("api-key", bobKey), subject: "bob", tenant: "globex", scopes: [] },
  {
    id: "alice-2",
    digest: digest("api-key", aliceRotated),
    subject: "alice",
    tenant: "acme",
    scopes: ["a", "b"],
  },
];

describe("API key authenticator", () => {
  const auth = createApiKeyAuthenticator(keys);

  it("a known key gives its configured principal, with no expiry", () => {
    const principal = auth.authenticate(aliceKey);
    assert.deepEqual(
      { ...principal },
      {
        kind: "api-key",
        issuer: API_KEY_ISSUER,
        subject: "alice",
        tenant: "acme",
        scopes: ["tools:read"],
        expiresAt: null,
      },
    );
    assert.ok(Object.isFrozen(principal));
    assert.deepEqual(auth.authenticate(aliceRotated).scopes, ["a", "b"]);
  });

  it("two keys declaring one subject and tenant are one principal; other keys are others", () => {
    assert.ok(samePrincipal(auth.authenticate(aliceKey), auth.authenticate(aliceRotated)));
    assert.ok(!samePrincipal(auth.authenticate(aliceKey), auth.authenticate(bobKey)));
  });

  it("an unknown key is ERR_AUTH_INVALID (unknown-api-key), and the error never holds the key", () => {
    for (const key of [
      `tg_${mintId(32)}`,
      aliceKey.slice(0, -1),
      `${aliceKey}x`,
      digest("api-key", aliceKey),
      "x",
      "",
    ]) {
      assert.throws(
        () => auth.authenticate(key),
        (error: unknown) =>
          isGateError(error, "ERR_AUTH_INVALID") &&
          error.detail === "unknown-api-key" &&
          error.message === "invalid token" &&
          (key === "" || !JSON.stringify([error.message, error.detail, error.toWire()]).includes(key)),
      );
    }
  });

  it("presenting the digest instead of the key does not authenticate", () => {
    assert.throws(
      () => auth.authenticate(keys[0]!.digest),
      (error: unknown) => isGateError(error, "ERR_AUTH_INVALID"),
    );
  });

  it("refuses bad configuration, naming the setting and never a value", () => {
    const good = keys[0]!;
    const cases: [string, ApiKeyConfig[]][] = [
      ["apiKeys[1].id", [good, { ...keys[1]!, id: good.id }]],
      ["apiKeys[1].digest", [good, { ...keys[1]!, digest: good.digest }]],
      ["apiKeys[0].digest", [{ ...good, digest: aliceKey }]],
      ["apiKeys[0].subject", [{ ...good, subject: "" }]],
      ["apiKeys[0].tenant", [{ ...good, tenant: "a\nb" }]],
      ["apiKeys[0].scopes", [{ ...good, scopes: ["has space"] }]],
      ["apiKeys[0].id", [{ ...good, id: "" }]],
    ];
    for (const [setting, config] of cases) {
      assert.throws(
        () => createApiKeyAuthenticator(config),
        (error: unknown) =>
          isGateError(error, "ERR_CONFIG_INVALID") &&
          error.message.startsWith(`${setting} `) &&
          !error.message.includes(aliceKey),
        setting,
      );
    }
  });
});
