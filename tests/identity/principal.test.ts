import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  ANONYMOUS_ISSUER,
  ANONYMOUS_TENANT,
  anonymousPrincipal,
  ownerScope,
  type Principal,
  samePrincipal,
} from "../../src/identity/index.ts";
import { ownedKey } from "../../src/store/keys.ts";

const alice: Principal = {
  kind: "jwt",
  issuer: "https://issuer-a.example",
  subject: "alice",
  tenant: "acme",
  scopes: ["x"],
  expiresAt: 1,
};

describe("principals", () => {
  it("samePrincipal compares issuer, subject and tenant, not scopes or expiry", () => {
    assert.ok(samePrincipal(alice, { ...alice, scopes: [], expiresAt: 2 }));
    assert.ok(!samePrincipal(alice, { ...alice, issuer: "https://issuer-b.example" }));
    assert.ok(!samePrincipal(alice, { ...alice, subject: "bob" }));
    assert.ok(!samePrincipal(alice, { ...alice, tenant: "globex" }));
  });

  it("ownerScope is (tenant, issuer, subject), so owned keys differ whenever principals do", () => {
    assert.deepEqual(
      { ...ownerScope(alice) },
      { tenant: "acme", issuer: "https://issuer-a.example", subject: "alice" },
    );
    const key = (principal: Principal) => ownedKey(ownerScope(principal), "vault", "token").encoded;
    assert.equal(key(alice), key({ ...alice, scopes: [] }));
    assert.notEqual(key(alice), key({ ...alice, issuer: "https://issuer-b.example" }));
    assert.notEqual(key(alice), key({ ...alice, tenant: "globex" }));
  });
});

describe("anonymous principals", () => {
  it("each call is a new principal of its own (invariant 2)", () => {
    const principals = Array.from({ length: 1_000 }, () => anonymousPrincipal());
    assert.equal(new Set(principals.map((p) => p.subject)).size, principals.length);
    for (const principal of principals.slice(0, 10)) {
      assert.equal(principal.kind, "anonymous");
      assert.equal(principal.issuer, ANONYMOUS_ISSUER);
      assert.equal(principal.tenant, ANONYMOUS_TENANT);
      assert.deepEqual(principal.scopes, []);
      assert.equal(principal.expiresAt, null);
      assert.match(principal.subject, /^[A-Za-z0-9_-]{32}$/);
      assert.ok(Object.isFrozen(principal));
    }
    assert.ok(!samePrincipal(principals[0]!, principals[1]!));
  });
});
