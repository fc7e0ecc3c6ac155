import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createMetricsRegistry } from "../../src/gateway/metrics-registry.ts";

describe("metrics registry", () => {
  it("renders counters, gauges and cumulative histogram buckets in the exposition format", () => {
    const registry = createMetricsRegistry();
    const requests = registry.counter("t_requests_total", "Requests.", ["upstream", "status"]);
    requests.inc({ upstream: "a", status: "200" });
    requests.inc({ upstream: "a", status: "200" }, 2);
    requests.inc({ upstream: "a", status: "200" }, -5); // a counter never goes down
    registry.gauge("t_open", "Open.", () => [[{}, 3]]);
    const latency = registry.histogram("t_seconds", "Latency.", ["op"], [0.1, 1]);
    latency.observe({ op: "get" }, 0.05);
    latency.observe({ op: "get" }, 0.5);
    latency.observe({ op: "get" }, 5);
    assert.equal(
      registry.render(),
      [
        "# HELP t_requests_total Requests.",
        "# TYPE t_requests_total counter",
        't_requests_total{upstream="a",status="200"} 3',
        "# HELP t_open Open.",
        "# TYPE t_open gauge",
        "t_open 3",
        "# HELP t_seconds Latency.",
        "# TYPE t_seconds histogram",
        't_seconds_bucket{op="get",le="0.1"} 1',
        't_seconds_bucket{op="get",le="1"} 2',
        't_seconds_bucket{op="get",le="+Inf"} 3',
        't_seconds_sum{op="get"} 5.55',
        't_seconds_count{op="get"} 3',
        "",
      ].join("\n"),
    );
  });

  it("escapes label values and keeps only declared labels", () => {
    const registry = createMetricsRegistry();
    registry.counter("t_total", "T.", ["reason"]).inc({ reason: 'a"b\\c\nd', extra: "dropped" });
    assert.match(registry.render(), /^t_total\{reason="a\\"b\\\\c\\nd"\} 1$/m);
  });

  it("skips a collector that throws and still renders the rest", () => {
    const registry = createMetricsRegistry();
    registry.gauge("t_broken", "Broken.", () => {
      throw new Error("collector failed");
    });
    registry.gauge("t_fine", "Fine.", () => [[{}, 1]]);
    const text = registry.render();
    assert.ok(!text.includes("t_broken"));
    assert.match(text, /^t_fine 1$/m);
  });

  it("refuses a bad metric name, a reserved label and a second registration", () => {
    const registry = createMetricsRegistry();
    assert.throws(() => registry.counter("bad name", "x"), { code: "ERR_ARGUMENT_INVALID" });
    assert.throws(() => registry.histogram("t_h", "x", ["le"], [1]), { code: "ERR_ARGUMENT_INVALID" });
    registry.counter("t_once", "x");
    assert.throws(() => registry.counter("t_once", "x"), { code: "ERR_ARGUMENT_INVALID" });
  });
});
