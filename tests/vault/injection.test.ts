/**
 * upstreams[].inject templates: only `{vault:NAME}` placeholders in literal text, so the entries a
 * header carries are fixed by the operator's config, never by anything a request sends.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isGateError } from "../../src/errors.ts";
import { parseInjectTemplate, planInjection, renderInjection } from "../../src/vault/injection.ts";

describe("inject templates", () => {
  it("splits literal text and placeholders, in order", () => {
    assert.deepEqual(parseInjectTemplate("Bearer {vault:github_token}"), [
      { literal: "Bearer " },
      { entry: "github_token" },
    ]);
    assert.deepEqual(parseInjectTemplate("{vault:user}:{vault:pass}"), [
      { entry: "user" },
      { literal: ":" },
      { entry: "pass" },
    ]);
  });

  for (const [template, problem] of [
    ["static", "names no {vault:NAME} entry"],
    ["Bearer {vault:gh} {tenant}", "has a brace that is not a {vault:NAME} placeholder"],
    ["{{vault:gh}}", "has a brace that is not a {vault:NAME} placeholder"],
    ["{vault:}", "names a vault entry"],
    ["{vault:GH}", "names a vault entry"],
    ["{vault:1gh}", "names a vault entry"],
    ["{vault:gh-token}", "names a vault entry"],
    ["{vault:../other}", "names a vault entry"],
    [`{vault:${"a".repeat(65)}}`, "names a vault entry"],
    ["Bearer {vault:gh", "has a brace"],
    ["Bearer vault:gh}", "has a brace"],
  ] as const) {
    it(`refuses ${JSON.stringify(template)}`, () => {
      const parsed = parseInjectTemplate(template);
      assert.equal(typeof parsed, "string");
      assert.ok((parsed as string).startsWith(problem), String(parsed));
    });
  }

  it("plans each upstream's headers once, lower-cased, entries named once", () => {
    const plan = planInjection({ Authorization: "Bearer {vault:gh}", "X-Basic": "{vault:user}:{vault:gh}" });
    assert.deepEqual(plan.entries, ["gh", "user"]);
    assert.deepEqual(
      plan.headers.map((header) => header.name),
      ["authorization", "x-basic"],
    );
    assert.deepEqual(planInjection({}), { headers: [], entries: [] });
  });

  it("renders the caller's values into the headers; a value missing is the gateway's own mistake", () => {
    const plan = planInjection({ Authorization: "Bearer {vault:gh}", "X-Basic": "{vault:user}:{vault:gh}" });
    assert.deepEqual(
      renderInjection(
        plan,
        new Map([
          ["gh", "ghp_secret"],
          ["user", "alice"],
        ]),
      ),
      { authorization: "Bearer ghp_secret", "x-basic": "alice:ghp_secret" },
    );
    assert.throws(
      () => renderInjection(plan, new Map([["gh", "x"]])),
      (error) => isGateError(error, "ERR_INTERNAL"),
    );
  });

  it("a value that looks like a placeholder is injected as text, never expanded", () => {
    const plan = planInjection({ Authorization: "Bearer {vault:gh}" });
    assert.deepEqual(renderInjection(plan, new Map([["gh", "{vault:other}"]])), {
      authorization: "Bearer {vault:other}",
    });
  });
});
