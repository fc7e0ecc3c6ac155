/**
 * The credential vault's cases, run against every store backend (THREATS C1-C3 at the library
 * level; the gateway's injection of entries into upstream calls is tested where it is built).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { inspect } from "node:util";
import { Keyring } from "../../src/crypto/keyring.ts";
import { sealedKeyId } from "../../src/crypto/seal.ts";
import { isGateError } from "../../src/errors.ts";
import { storeUnavailable } from "../../src/store/arguments.ts";
import type { Store } from "../../src/store/contract.ts";
import { globalIndexKey, type OwnerScope, ownedKey, ownerIndexKey } from "../../src/store/keys.ts";
import { openStore } from "../../src/store/open-store.ts";
import {
  createVault,
  MAX_VAULT_ENTRIES_PER_PRINCIPAL,
  MAX_VAULT_VALUE_LENGTH,
  type Vault,
} from "../../src/vault/vault.ts";
import { sharedHandle } from "../support/shared-handle.ts";
import { storeBackendCases } from "../support/store-cases.ts";
import { dumpStore, recordingStore, secretEncodings } from "../support/store-dump.ts";

// --- principals and keys --------------------------------------------------------------------------

let serial = 0;

/** An owner of its own per call, so cases sharing a store never see each other's entries. */
function owner(fields: Partial<OwnerScope> = {}): OwnerScope {
  serial += 1;
  const tag = `${serial}-${randomBytes(4).toString("hex")}`;
  return {
    tenant: fields.tenant ?? `tenant-${tag}`,
    issuer: fields.issuer ?? "https://issuer-a.example",
    subject: fields.subject ?? `user-${tag}`,
  };
}

/**
 * Master keys under ids of this test's own: the key-id indexes are global to a store, so two cases
 * using one id would count each other's entries.
 */
function masterKeys(count: number): { ids: string[]; ring(ids: readonly string[], active: string): Keyring } {
  const tag = randomBytes(4).toString("hex");
  const keys = Array.from({ length: count }, (_, i) => ({ id: `k${i + 1}-${tag}`, key: randomBytes(32) }));
  return {
    ids: keys.map((key) => key.id),
    ring: (ids, active) =>
      Keyring.fromKeys(
        keys.filter((key) => ids.includes(key.id)),
        active,
      ),
  };
}

function freshKeyring(): Keyring {
  const { ids, ring } = masterKeys(1);
  return ring(ids, ids[0]!);
}

function entryKey(scope: OwnerScope, name: string) {
  return ownedKey(scope, "vault", name);
}

/** The key id the stored record of (scope, name) is sealed under, read from the store itself. */
async function storedKeyId(store: Store, scope: OwnerScope, name: string): Promise<string | null> {
  const text = await store.get(entryKey(scope, name));
  return text === null ? null : sealedKeyId((JSON.parse(text) as { sealed: string }).sealed);
}

/** A token-looking secret that no other case (nor any fixture) writes. */
function canary(label: string): string {
  return `${label}_${randomBytes(24).toString("base64url")}`;
}

async function expectCode(promise: Promise<unknown>, code: string, what: string): Promise<unknown> {
  let caught: unknown;
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isGateError(error), `${what}: expected a GateError, got ${String(error)}`);
    assert.equal(error.code, code, `${what}: wrong code`);
    caught = error;
    return true;
  });
  return caught;
}

/** Every text an error carries, however it is printed. */
function errorText(error: unknown): string {
  return [
    inspect(error, { depth: 5 }),
    String(error),
    JSON.stringify(error),
    (error as Error).stack ?? "",
    (error as { detail?: string }).detail ?? "",
  ].join("\n");
}

// --- the cases ------------------------------------------------------------------------------------

const backends = await storeBackendCases("vault");

for (const backend of backends) {
  describe(`vault on ${backend.name}`, { skip: backend.skip }, () => {
    let url: string;
    let cleanup: () => Promise<void>;
    let store: Store;

    before(async () => {
      const opened = await backend.open();
      url = opened.url;
      cleanup = opened.cleanup;
      store = await openStore(url);
    });
    after(async () => {
      await store?.close();
      await cleanup?.();
    });

    function vault(keyring: Keyring = freshKeyring(), on: Store = store): Vault {
      return createVault({ store: on, keyring });
    }

    it("puts, lists, reveals and deletes the owner's own entries", async () => {
      let clock = 1_700_000_000_000;
      const keyring = freshKeyring();
      const v = createVault({ store, keyring, now: () => clock });
      const alice = owner();
      assert.deepEqual(await v.put(alice, "github_token", "ghp_first value\twith tab"), { created: true });
      clock += 1_000;
      assert.deepEqual(await v.put(alice, "github_token", "ghp_second"), { created: false });
      assert.deepEqual(await v.put(alice, "a_first", "x"), { created: true });

      const listed = await v.list(alice);
      assert.deepEqual(listed, [
        { name: "a_first", updatedAt: clock, keyId: keyring.activeKeyId },
        { name: "github_token", updatedAt: clock, keyId: keyring.activeKeyId },
      ]);
      assert.ok(!JSON.stringify(listed).includes("ghp_"), "list never carries a value");

      const revealed = await v.reveal(alice, ["github_token", "unknown_name", "a_first", "github_token"]);
      assert.deepEqual(
        [...revealed.values],
        [
          ["github_token", "ghp_second"],
          ["a_first", "x"],
        ],
      );
      assert.deepEqual(revealed.missing, ["unknown_name"], "each name once, in the order asked");
      assert.deepEqual(await v.reveal(alice, []), { values: new Map(), missing: [] });

      assert.equal(await v.delete(alice, "github_token"), true);
      assert.equal(await v.delete(alice, "github_token"), false);
      assert.deepEqual((await v.reveal(alice, ["github_token"])).missing, ["github_token"]);
      assert.deepEqual(
        (await v.list(alice)).map((entry) => entry.name),
        ["a_first"],
      );
      assert.deepEqual(await store.indexList(ownerIndexKey(alice, "vault")), ["a_first"]);

      await v.put(alice, "b_second", "y");
      assert.equal(await v.deleteAll(alice), 2);
      assert.deepEqual(await v.list(alice), []);
      assert.deepEqual((await v.reveal(alice, ["a_first", "b_second"])).missing, ["a_first", "b_second"]);
      assert.deepEqual(await store.indexList(ownerIndexKey(alice, "vault")), []);
      assert.deepEqual(await v.keyUsage(), { [keyring.activeKeyId]: 0 });
      assert.equal(await v.deleteAll(alice), 0);
    });

    it("refuses bad names and values, naming the argument and never echoing the value", async () => {
      const v = vault();
      const alice = owner();
      const marker = `secret-${randomBytes(8).toString("hex")}`;
      const badValues: [string, string][] = [
        ["empty", ""],
        ["CR LF", `${marker}\r\nX-Injected: yes`],
        ["LF", `${marker}\nmore`],
        ["CR", `${marker}\rmore`],
        ["NUL", `${marker}\u0000`],
        ["DEL", `${marker}\u007f`],
        ["other control", `${marker}\u001b[0m`],
        ["non-ASCII", `${marker}é`],
        ["non-ASCII line separator", `${marker}\u2028x`],
        ["astral", `${marker}🙂`],
        ["lone surrogate", `${marker}\ud800`],
        ["leading space", ` ${marker}`],
        ["trailing tab", `${marker}\t`],
        ["only spaces", "   "],
        ["too long", `${marker}${"x".repeat(MAX_VAULT_VALUE_LENGTH)}`],
      ];
      for (const [what, value] of badValues) {
        const error = await expectCode(v.put(alice, "github_token", value), "ERR_ARGUMENT_INVALID", what);
        assert.match((error as Error).message, /^value /, `${what}: names the argument`);
        const text = errorText(error);
        assert.ok(!text.includes(marker), `${what}: the error echoes the value`);
        if (value.trim().length > 0) assert.ok(!text.includes(value.trim()), `${what}: echoed`);
      }
      for (const value of [42, null, undefined, { toString: () => marker }]) {
        await expectCode(
          v.put(alice, "github_token", value as unknown as string),
          "ERR_ARGUMENT_INVALID",
          `value ${typeof value}`,
        );
      }
      // The edges that are allowed.
      await v.put(alice, "longest", "x".repeat(MAX_VAULT_VALUE_LENGTH));
      await v.put(alice, "inner_space", "Bearer a\tb c");
      await v.put(alice, "visible", "!~");
      assert.equal(
        (await v.reveal(alice, ["longest"])).values.get("longest")?.length,
        MAX_VAULT_VALUE_LENGTH,
      );

      const badNames = [
        "",
        "Github",
        "1token",
        "a-b",
        "a.b",
        "a/b",
        "../x",
        "a b",
        `a${"b".repeat(64)}`,
        "é",
      ];
      for (const name of badNames) {
        const error = await expectCode(v.put(alice, name, marker), "ERR_ARGUMENT_INVALID", `name ${name}`);
        assert.match((error as Error).message, /^name /);
        assert.ok(!errorText(error).includes(marker));
        await expectCode(v.reveal(alice, ["visible", name]), "ERR_ARGUMENT_INVALID", `reveal ${name}`);
        await expectCode(v.delete(alice, name), "ERR_ARGUMENT_INVALID", `delete ${name}`);
      }
      await expectCode(v.reveal(alice, "visible" as unknown as string[]), "ERR_ARGUMENT_INVALID", "names");
      await expectCode(
        v.reveal(
          alice,
          Array.from({ length: MAX_VAULT_ENTRIES_PER_PRINCIPAL + 1 }, (_, i) => `n${i}`),
        ),
        "ERR_ARGUMENT_INVALID",
        "too many names",
      );
      for (const bad of [{ ...alice, tenant: "" }, { ...alice, subject: "\udc00" }, null]) {
        await expectCode(v.put(bad as OwnerScope, "x", "v"), "ERR_ARGUMENT_INVALID", "owner");
      }
      assert.deepEqual(
        (await v.list(alice)).map((entry) => entry.name),
        ["inner_space", "longest", "visible"],
        "nothing was written by a refused put",
      );
    });

    it("refuses an owner too long for the key-id index, before anything is written", async () => {
      const v = vault();
      const long = owner({ subject: `user-${"s".repeat(1_000)}` });
      const error = await expectCode(v.put(long, "github_token", "v"), "ERR_ARGUMENT_INVALID", "long owner");
      assert.match((error as Error).message, /^owner /);
      assert.equal(await store.get(entryKey(long, "github_token")), null);
      assert.deepEqual(await store.indexList(ownerIndexKey(long, "vault")), []);
    });

    it("holds at most 64 entries per principal; replacing one at the cap is allowed; others are unaffected", async () => {
      const v = vault();
      const alice = owner();
      for (let i = 0; i < MAX_VAULT_ENTRIES_PER_PRINCIPAL; i++)
        await v.put(alice, `entry_${i}`, `value-${i}`);
      const error = await expectCode(v.put(alice, "one_more", "v"), "ERR_STORE_FULL", "65th entry");
      assert.ok(!errorText(error).includes("one_more"));
      assert.deepEqual((await v.reveal(alice, ["one_more"])).missing, ["one_more"]);
      assert.ok(!(await store.indexList(ownerIndexKey(alice, "vault"))).includes("one_more"));
      assert.deepEqual(await v.put(alice, "entry_7", "replaced"), { created: false });
      assert.equal((await v.reveal(alice, ["entry_7"])).values.get("entry_7"), "replaced");
      assert.equal((await v.list(alice)).length, MAX_VAULT_ENTRIES_PER_PRINCIPAL);
      // Another principal of the same tenant has its own room.
      assert.deepEqual(await v.put(owner({ tenant: alice.tenant }), "one_more", "v"), { created: true });
      // A hint to nothing (a put that crashed before its write) holds no slot.
      await v.delete(alice, "entry_0");
      await store.indexAdd(ownerIndexKey(alice, "vault"), "crashed_put");
      assert.deepEqual(await v.put(alice, "one_more", "v"), { created: true });
      await expectCode(v.put(alice, "and_another", "v"), "ERR_STORE_FULL", "full again");
    });

    it("C1 reveal for principal B never returns A's values, whatever names B asks for", async () => {
      const v = vault();
      const alice = owner();
      const names = ["github_token", "google_refresh", "user_google_email"];
      const aliceValues = names.map((name) => canary(`alice_${name}`));
      for (const [i, name] of names.entries()) await v.put(alice, name, aliceValues[i]!);
      const strangers = [
        owner(), // another tenant
        owner({ tenant: alice.tenant }), // same tenant, another subject
        owner({ tenant: alice.tenant, subject: alice.subject, issuer: "https://issuer-b.example" }),
        owner({ issuer: alice.issuer, subject: alice.subject }), // same principal id, another tenant
      ];
      for (const [i, bob] of strangers.entries()) {
        const bobValue = canary(`bob${i}`);
        await v.put(bob, "github_token", bobValue);
        const revealed = await v.reveal(bob, [...names, "a", "github_token"]);
        assert.deepEqual([...revealed.values], [["github_token", bobValue]], `stranger ${i}`);
        assert.deepEqual(revealed.missing, ["google_refresh", "user_google_email", "a"]);
        for (const value of aliceValues) {
          assert.ok(![...revealed.values.values()].includes(value), `stranger ${i} got alice's value`);
        }
        assert.deepEqual(
          (await v.list(bob)).map((entry) => entry.name),
          ["github_token"],
        );
        // B removing everything it has removes nothing of A's.
        assert.equal(await v.deleteAll(bob), 1);
        assert.equal(await v.delete(bob, "google_refresh"), false);
      }
      const own = await v.reveal(alice, names);
      assert.deepEqual([...own.values.values()], aliceValues);
    });

    it("C2 a sealed entry copied into another principal's row fails to open", async () => {
      const v = vault();
      const alice = owner();
      const bob = owner();
      const secret = canary("ghp");
      await v.put(alice, "github_token", secret);
      const record = await store.get(entryKey(alice, "github_token"));
      assert.ok(record, "the entry is where the schema says");
      // The whole record, as a storage attacker (or a bug) would copy it, into B's row.
      await store.put(entryKey(bob, "github_token"), record);
      await store.indexAdd(ownerIndexKey(bob, "vault"), "github_token");
      const revealed = await v.reveal(bob, ["github_token"]);
      assert.deepEqual([...revealed.values], []);
      assert.deepEqual(revealed.missing, ["github_token"]);
      // Also a principal that differs from A in one field only.
      for (const near of [
        { ...alice, tenant: `${alice.tenant}x` },
        { ...alice, subject: `${alice.subject}x` },
        { ...alice, issuer: "https://issuer-b.example" },
      ]) {
        await store.put(entryKey(near, "github_token"), record);
        assert.deepEqual((await v.reveal(near, ["github_token"])).missing, ["github_token"]);
      }
      // A's own entry still opens.
      assert.equal((await v.reveal(alice, ["github_token"])).values.get("github_token"), secret);
    });

    it("C2 a sealed entry copied into another name of the same principal fails to open", async () => {
      const v = vault();
      const alice = owner();
      const secret = canary("ghp");
      await v.put(alice, "github_token", secret);
      await v.put(alice, "gitlab_token", "glpat-own-value");
      const record = await store.get(entryKey(alice, "github_token"));
      assert.ok(record);
      // The record as it is, and rewritten to claim the target name (the seal binds the name too).
      const renamed = JSON.stringify({ ...JSON.parse(record), name: "gitlab_token" });
      for (const copied of [record, renamed]) {
        await store.put(entryKey(alice, "gitlab_token"), copied);
        await store.put(entryKey(alice, "fresh_name"), copied.replace('"gitlab_token"', '"fresh_name"'));
        const revealed = await v.reveal(alice, ["gitlab_token", "fresh_name", "github_token"]);
        assert.deepEqual([...revealed.values], [["github_token", secret]]);
        assert.deepEqual(revealed.missing, ["gitlab_token", "fresh_name"]);
      }
    });

    it("C3 a storage dump holds no vault value in any encoding, only sealed records", async () => {
      const recording = recordingStore(store);
      const v = vault(freshKeyring(), recording.store);
      const owners = [owner(), owner()];
      const secrets: string[] = [];
      for (const scope of owners) {
        for (const name of ["github_token", "google_refresh"]) {
          const secret = canary(`${name}_canary`);
          secrets.push(secret);
          await v.put(scope, name, secret);
        }
        await v.put(scope, "bearer", `Bearer ${secrets.at(-1)}`);
        const revealed = await v.reveal(scope, ["github_token", "google_refresh", "bearer"]);
        assert.equal(revealed.values.size, 3);
        await v.list(scope);
      }
      await v.keyUsage();

      const dump = async () => (await dumpStore(url)) ?? recording.recorded();
      const stored = await dump();
      for (const secret of secrets) {
        for (const { label, bytes } of secretEncodings(secret)) {
          assert.equal(stored.includes(bytes), false, `a vault value is in the dump (${label})`);
        }
      }
      // The dump did read the records: each sealed value is there.
      for (const scope of owners) {
        const record = await store.get(entryKey(scope, "github_token"));
        const { sealed } = JSON.parse(record ?? "{}") as { sealed: string };
        assert.ok(stored.includes(Buffer.from(sealed)), "the dump holds the sealed records");
      }
      // And the search would have found a secret written in the clear or encoded.
      const control = canary("control");
      await recording.store.put(ownedKey(owners[0]!, "note", "control"), control);
      await recording.store.put(
        ownedKey(owners[0]!, "note", "control_b64"),
        Buffer.from(`{"v":${control}"}`).toString("base64"),
      );
      const controlled = await dump();
      const found = secretEncodings(control).filter(({ bytes }) => controlled.includes(bytes));
      assert.ok(
        found.some(({ label }) => label === "plain"),
        "a plain control is found",
      );
      assert.ok(
        found.some(({ label }) => label.startsWith("base64 ")),
        "a base64 control is found at its alignment",
      );
    });

    it("reveal reads every name in one store call and fails closed when the store cannot answer", async () => {
      const keyring = freshKeyring();
      const alice = owner();
      await vault(keyring).put(alice, "a", "1");
      await vault(keyring).put(alice, "b", "2");
      const calls: { method: string; keys: number }[] = [];
      let failing = false;
      const observed = new Proxy(store, {
        get(target, property) {
          const value: unknown = Reflect.get(target, property, target);
          if (typeof value !== "function") return value;
          return async (...args: unknown[]) => {
            calls.push({
              method: String(property),
              keys: Array.isArray(args[0]) ? args[0].length : 1,
            });
            if (failing) throw storeUnavailable(target.backend, new Error("connection refused"));
            return (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
          };
        },
      });
      const v = createVault({ store: observed, keyring });
      const revealed = await v.reveal(alice, ["a", "b", "a", "absent"]);
      assert.equal(revealed.values.size, 2);
      assert.deepEqual(calls, [{ method: "getMany", keys: 3 }]);
      failing = true;
      await expectCode(v.reveal(alice, ["a"]), "ERR_STORE_UNAVAILABLE", "reveal during an outage");
      await expectCode(v.list(alice), "ERR_STORE_UNAVAILABLE", "list during an outage");
      await expectCode(v.put(alice, "c", "3"), "ERR_STORE_UNAVAILABLE", "put during an outage");
    });

    it("rotation: reveal re-seals lazily, resealAll moves the rest, then the old key can go", async () => {
      const keys = masterKeys(2);
      const [k1, k2] = keys.ids as [string, string];
      const alice = owner();
      const bob = owner();
      const before = vault(keys.ring([k1], k1));
      await before.put(alice, "github_token", "alice-github");
      await before.put(alice, "google_refresh", "alice-google");
      await before.put(bob, "github_token", "bob-github");
      assert.deepEqual(await before.keyUsage(), { [k1]: 3 });

      const rotated = vault(keys.ring([k1, k2], k2));
      assert.deepEqual(await rotated.keyUsage(), { [k1]: 3, [k2]: 0 });
      const revealed = await rotated.reveal(alice, ["github_token"]);
      assert.equal(revealed.values.get("github_token"), "alice-github");
      assert.equal(await storedKeyId(store, alice, "github_token"), k2, "re-sealed as it was read");
      assert.equal(await storedKeyId(store, alice, "google_refresh"), k1, "what was not read stays");
      assert.deepEqual(await rotated.keyUsage(), { [k1]: 2, [k2]: 1 });
      assert.deepEqual(
        (await rotated.list(alice)).map(({ name, keyId }) => [name, keyId]),
        [
          ["github_token", k2],
          ["google_refresh", k1],
        ],
      );
      // The re-seal keeps when the value was written: it is the same value.
      const listedBefore = (await before.list(bob))[0]?.updatedAt;

      assert.deepEqual(await rotated.resealAll(), { resealed: 2, unreadable: 0 });
      assert.deepEqual(await rotated.keyUsage(), { [k1]: 0, [k2]: 3 });
      assert.deepEqual(await rotated.resealAll(), { resealed: 0, unreadable: 0 });
      assert.equal((await rotated.list(bob))[0]?.updatedAt, listedBefore);
      assert.deepEqual(await store.indexList(globalIndexKey("vault-key", k1)), []);

      const after = vault(keys.ring([k2], k2));
      assert.deepEqual(await after.keyUsage(), { [k2]: 3 });
      assert.deepEqual(
        [...(await after.reveal(alice, ["github_token", "google_refresh"])).values],
        [
          ["github_token", "alice-github"],
          ["google_refresh", "alice-google"],
        ],
      );
      assert.equal((await after.reveal(bob, ["github_token"])).values.get("github_token"), "bob-github");
    });

    it("resealAll counts an entry that does not open as unreadable and leaves it; a retired key's entries are missing", async () => {
      const keys = masterKeys(2);
      const [k1, k2] = keys.ids as [string, string];
      const alice = owner();
      const bob = owner();
      const first = vault(keys.ring([k1], k1));
      await first.put(alice, "github_token", "alice-github");
      await first.put(bob, "github_token", "bob-github");
      await first.put(bob, "left_behind", "never-resealed");
      // Tampered: one character of the ciphertext changed.
      const text = (await store.get(entryKey(alice, "github_token")))!;
      const record = JSON.parse(text) as { sealed: string };
      const last = record.sealed.at(-5) === "A" ? "B" : "A";
      const tampered = {
        ...record,
        sealed: `${record.sealed.slice(0, -5)}${last}${record.sealed.slice(-4)}`,
      };
      await store.put(entryKey(alice, "github_token"), JSON.stringify(tampered));

      const rotated = vault(keys.ring([k1, k2], k2));
      assert.deepEqual((await rotated.reveal(alice, ["github_token"])).missing, ["github_token"]);
      assert.deepEqual(await rotated.keyUsage(), { [k1]: 3, [k2]: 0 });
      // bob's "left_behind" is revealed and so re-sealed lazily; the reseal moves "github_token".
      await rotated.reveal(bob, ["left_behind"]);
      assert.deepEqual(await rotated.resealAll(), { resealed: 1, unreadable: 1 });
      assert.equal(await store.get(entryKey(alice, "github_token")), JSON.stringify(tampered), "left as is");
      assert.deepEqual(await rotated.keyUsage(), { [k1]: 1, [k2]: 2 });

      // k1 retired while an entry still needs it: that entry is unreadable, and not walked any more.
      const retired = vault(keys.ring([k2], k2));
      assert.deepEqual((await retired.reveal(alice, ["github_token"])).missing, ["github_token"]);
      assert.deepEqual(await retired.resealAll(), { resealed: 0, unreadable: 0 });
      assert.deepEqual(await retired.keyUsage(), { [k2]: 2 });
      assert.equal((await retired.reveal(bob, ["github_token"])).values.get("github_token"), "bob-github");
    });

    it("a put racing a lazy re-seal is never overwritten", async () => {
      const keys = masterKeys(2);
      const [k1, k2] = keys.ids as [string, string];
      const alice = owner();
      await vault(keys.ring([k1], k1)).put(alice, "github_token", "old-token");
      const rotatedRing = keys.ring([k1, k2], k2);
      const writer = vault(rotatedRing);
      // The put lands after the re-seal read the entry and before its compare-and-set.
      let injected = 0;
      const racing: Store = {
        ...sharedHandle(store),
        async replaceIfEquals(key, expected, value) {
          injected++;
          await writer.put(alice, "github_token", "new-token");
          return store.replaceIfEquals(key, expected, value);
        },
      };
      const revealed = await vault(rotatedRing, racing).reveal(alice, ["github_token"]);
      assert.equal(injected, 1);
      assert.equal(revealed.values.get("github_token"), "old-token", "what was read");
      assert.equal((await writer.reveal(alice, ["github_token"])).values.get("github_token"), "new-token");
      assert.equal(await storedKeyId(store, alice, "github_token"), k2);
      assert.deepEqual(await writer.keyUsage(), { [k1]: 0, [k2]: 1 });
      assert.deepEqual(await store.indexList(globalIndexKey("vault-key", k1)), []);
    });

    it("a put racing resealAll is never overwritten", async () => {
      const keys = masterKeys(2);
      const [k1, k2] = keys.ids as [string, string];
      const alice = owner();
      await vault(keys.ring([k1], k1)).put(alice, "github_token", "old-token");
      const rotatedRing = keys.ring([k1, k2], k2);
      const writer = vault(rotatedRing);
      const racing: Store = {
        ...sharedHandle(store),
        async replaceIfEquals(key, expected, value) {
          await writer.put(alice, "github_token", "new-token");
          return store.replaceIfEquals(key, expected, value);
        },
      };
      assert.deepEqual(await vault(rotatedRing, racing).resealAll(), { resealed: 0, unreadable: 0 });
      assert.equal((await writer.reveal(alice, ["github_token"])).values.get("github_token"), "new-token");
      assert.deepEqual(await writer.keyUsage(), { [k1]: 0, [k2]: 1 });
    });

    it("an index walk or deleteAll racing a put never leaves the written entry unindexed", async () => {
      const keys = masterKeys(2);
      const [k1, k2] = keys.ids as [string, string];
      const alice = owner();
      await vault(keys.ring([k1], k1)).put(alice, "github_token", "old-token");
      const rotatedRing = keys.ring([k1, k2], k2);
      const walker = vault(rotatedRing);
      // Between the put's first hints and its record write: keyUsage finds the new k2 hint with the
      // record still under k1 and removes it as stale; deleteAll removes the name of the new entry.
      let interleave: (() => Promise<unknown>) | null = null;
      const racing: Store = {
        ...sharedHandle(store),
        async put(key, value, options) {
          const run = interleave;
          interleave = null;
          await run?.();
          return store.put(key, value, options);
        },
      };
      const writer = vault(rotatedRing, racing);
      interleave = () => walker.keyUsage();
      await writer.put(alice, "github_token", "new-token");
      assert.deepEqual(await walker.keyUsage(), { [k1]: 0, [k2]: 1 }, "the entry is found under k2");

      interleave = () => walker.deleteAll(alice);
      assert.deepEqual(await writer.put(alice, "created_late", "v"), { created: true });
      assert.deepEqual(
        (await walker.list(alice)).map((entry) => entry.name),
        ["created_late"],
        "the entry written after deleteAll's pass is listed",
      );
      assert.deepEqual(await walker.keyUsage(), { [k1]: 0, [k2]: 1 });
    });

    it("keyUsage does not count a stale index member and removes it", async () => {
      const keys = masterKeys(2);
      const [k1, k2] = keys.ids as [string, string];
      const alice = owner();
      const v1 = vault(keys.ring([k1], k1));
      await v1.put(alice, "gone", "x");
      await v1.put(alice, "kept", "y");
      // The record of "gone" removed behind the vault's back; a member under the wrong key; garbage.
      await store.delete(entryKey(alice, "gone"));
      const member = (name: string) => JSON.stringify([alice.tenant, alice.issuer, alice.subject, name]);
      await store.indexAdd(globalIndexKey("vault-key", k2), member("kept"));
      await store.indexAdd(globalIndexKey("vault-key", k2), "not a member");
      await store.indexAdd(globalIndexKey("vault-key", k2), JSON.stringify(["t", "i", "s", "Bad-Name"]));

      const v2 = vault(keys.ring([k1, k2], k1));
      assert.deepEqual(await v2.keyUsage(), { [k1]: 1, [k2]: 0 });
      assert.deepEqual(await store.indexList(globalIndexKey("vault-key", k1)), [member("kept")]);
      assert.deepEqual(await store.indexList(globalIndexKey("vault-key", k2)), []);
      assert.equal((await v2.reveal(alice, ["kept"])).values.get("kept"), "y");
    });
  });
}
