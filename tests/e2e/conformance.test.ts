/**
 * The MCP conformance suite against server-everything directly and through a gateway process in
 * anonymous mode (scripts/conformance.ts runs both; this test asserts on the comparison and writes
 * nothing). About 3-5 s: two suite runs of about 1.5 s each plus process start-up.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import {
  type ConformanceComparison,
  type ConformanceRow,
  compareConformance,
  KNOWN_DIVERGENCES,
} from "../../scripts/conformance.ts";

describe("MCP conformance suite: server-everything direct and through the gateway", () => {
  let comparison: ConformanceComparison;
  const row = (scenario: string): ConformanceRow => {
    const found = comparison.rows.find((candidate) => candidate.scenario === scenario);
    assert.ok(found, `the suite has a ${scenario} scenario`);
    return found;
  };

  before(async () => {
    comparison = await compareConformance();
  });

  it("ran every scenario on both sides", () => {
    assert.ok(comparison.rows.length >= 30, `${comparison.rows.length} scenarios`);
    for (const { scenario, direct, gateway } of comparison.rows) {
      assert.notEqual(direct.verdict, "missing", `${scenario} ran direct`);
      assert.notEqual(gateway.verdict, "missing", `${scenario} ran through the gateway`);
    }
    // Sanity: the direct run is not failing wholesale (the server was reachable).
    assert.ok(row("server-initialize").direct.verdict === "pass");
  });

  it("every scenario that passes direct passes through the gateway (known divergences apart)", () => {
    const regressions = comparison.rows
      .filter((r) => r.direct.verdict === "pass" && r.gateway.verdict !== "pass")
      .filter((r) => !(r.scenario in KNOWN_DIVERGENCES))
      .map((r) => `${r.scenario}: ${r.gateway.verdict} (${r.gateway.problems.join("; ")})`);
    assert.deepEqual(regressions, []);
  });

  it("each known divergence still passes direct and fails through the gateway for its stated reason", () => {
    for (const scenario of Object.keys(KNOWN_DIVERGENCES)) {
      const { direct, gateway } = row(scenario);
      assert.equal(direct.verdict, "pass", `${scenario} passes direct (else drop it from the list)`);
      assert.notEqual(
        gateway.verdict,
        "pass",
        `${scenario} now passes through the gateway: drop it from the list`,
      );
    }
    // server-sse-multiple-streams: its three POSTs were refused as a version mismatch, nothing else.
    assert.deepEqual(row("server-sse-multiple-streams").gateway.problems, [
      "server-accepts-multiple-post-streams: Server rejected some requests. Statuses: 400, 400, 400",
    ]);
    assert.ok(
      comparison.gatewayEvents.some(
        (event) => event["type"] === "request.refused" && event["reason"] === "protocol-version-mismatch",
      ),
      "the gateway audited the refusals as protocol-version-mismatch",
    );
  });

  it("dns-rebinding-protection passes through the gateway", () => {
    const { gateway } = row("dns-rebinding-protection");
    assert.equal(gateway.verdict, "pass", gateway.problems.join("; "));
    assert.ok(
      comparison.gatewayEvents.some(
        (event) => event["type"] === "request.refused" && event["reason"] === "host-forbidden",
      ),
      "the rebinding attempt was refused by the Host check and audited",
    );
  });
});
