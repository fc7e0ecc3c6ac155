/**
 * sessions.maxPerTenant (THREATS L6) on every store backend: a tenant's live sessions are counted
 * atomically across registries (two store connections, as two replicas would have), the cap refuses
 * without evicting anything, another tenant is untouched, and a slot comes back when a session ends
 * or goes idle.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Keyring } from "../../src/crypto/keyring.ts";
import { isGateError } from "../../src/errors.ts";
import { makePrincipal, type Principal } from "../../src/identity/principal.ts";
import { createSessionRegistry, type SessionRegistry } from "../../src/sessions/session-registry.ts";
import type { Store } from "../../src/store/contract.ts";
import { openStore } from "../../src/store/open-store.ts";
import { storeBackendCases } from "../support/store-cases.ts";

const ISSUER = "https://issuer.test";
const CAP = 3;
const IDLE_MS = 600;

function principal(subject: string, tenant: string): Principal {
  return makePrincipal({ kind: "jwt", issuer: ISSUER, subject, tenant, scopes: [], expiresAt: null });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function refusedForTenantCap(attempt: Promise<unknown>): Promise<void> {
  await assert.rejects(attempt, (error: unknown) => {
    assert.ok(isGateError(error));
    assert.equal(error.code, "ERR_SESSION_LIMIT");
    assert.equal(error.detail, "max-per-tenant");
    return true;
  });
}

describe("sessions.maxPerTenant", async () => {
  for (const backend of await storeBackendCases("tenant-cap")) {
    describe(backend.name, { skip: backend.skip }, () => {
      let stores: Store[] = [];
      let registries: SessionRegistry[];
      let cleanup: () => Promise<void>;
      before(async () => {
        const opened = await backend.open();
        cleanup = opened.cleanup;
        // The memory store is one process's own: both registries share the one object.
        const first = await openStore(opened.url);
        const second = backend.name === "memory" ? first : await openStore(opened.url);
        stores = backend.name === "memory" ? [first] : [first, second];
        const keyring = Keyring.ephemeral();
        const options = {
          keyring,
          absoluteTimeoutMs: 60_000,
          idleTimeoutMs: IDLE_MS,
          touchIntervalMs: 50,
          maxPerTenant: CAP,
        };
        registries = [
          createSessionRegistry({ store: first, ...options }),
          createSessionRegistry({ store: second, ...options }),
        ];
      });
      after(async () => {
        for (const store of stores) await store.close();
        await cleanup?.();
      });

      const create = (registry: SessionRegistry, who: Principal) =>
        registry.create({ principal: who, upstream: "notes", protocolVersion: "2025-11-25" });

      it(`L6 concurrent creates by many principals of one tenant admit exactly the cap, over two connections (${backend.name})`, async () => {
        const outcomes = await Promise.allSettled(
          Array.from({ length: 24 }, (_, index) =>
            create(registries[index % 2] as SessionRegistry, principal(`user-${index}`, "acme")),
          ),
        );
        const created = outcomes.filter((outcome) => outcome.status === "fulfilled");
        assert.equal(created.length, CAP);
        for (const outcome of outcomes) {
          if (outcome.status === "rejected") await refusedForTenantCap(Promise.reject(outcome.reason));
        }
        // Another tenant has its own room, whatever acme did.
        await create(registries[0] as SessionRegistry, principal("user-0", "globex"));
        // Nothing of acme's was evicted: every admitted session still resolves.
        for (const outcome of created) {
          const { sessionId, session } = (
            outcome as PromiseFulfilledResult<Awaited<ReturnType<typeof create>>>
          ).value;
          const owner = principal(session.owner.subject, "acme");
          assert.ok(await (registries[1] as SessionRegistry).resolve(sessionId, owner, "notes"));
        }
      });

      it(`L6 a slot comes back when a session ends, and when one goes idle (${backend.name})`, async () => {
        const tenant = "initech";
        const [a, b, c] = ["peter", "michael", "samir"].map((name) => principal(name, tenant)) as [
          Principal,
          Principal,
          Principal,
        ];
        const registry = registries[0] as SessionRegistry;
        const first = await create(registry, a);
        await create(registry, b);
        const third = await create(registry, c);
        await refusedForTenantCap(create(registry, a));
        assert.ok(await registry.end(first.sessionId, a, "notes"));
        const again = await create(registries[1] as SessionRegistry, a);
        await refusedForTenantCap(create(registry, b));
        // Kept alive: resolves renew its activity (and its slot); the others go idle.
        const deadline = Date.now() + IDLE_MS * 3;
        while (Date.now() < deadline) {
          assert.ok(await registry.resolve(third.sessionId, c, "notes"));
          await sleep(100);
        }
        const fresh = await create(registry, b);
        assert.ok(fresh.sessionId);
        assert.ok(again.sessionId);
      });
    });
  }
});
