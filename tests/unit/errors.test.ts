import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { GateError, gateErrorCodes, toWire } from "../../src/errors.ts";
import * as library from "../../src/index.ts";

const srcDir = fileURLToPath(new URL("../../src/", import.meta.url));

async function sourceFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries
    .filter((entry) => entry.isFile() && entry.name.endsWith(".ts"))
    .map((entry) => join(entry.parentPath, entry.name));
}

describe("errors", () => {
  it("every code maps to a status and a generic message that reveals nothing", () => {
    assert.ok(gateErrorCodes.length > 0);
    for (const code of gateErrorCodes) {
      const wire = toWire(code);
      assert.equal(wire.code, code);
      // The one in-band refusal: MCP servers answer invalid params (an unknown task) with HTTP 200
      // and a JSON-RPC error, and the gateway answers a task the caller does not own the same way.
      if (code === "ERR_TASK_NOT_FOUND") assert.equal(wire.status, 200);
      else assert.ok(wire.status >= 400 && wire.status < 600, code);
      assert.match(wire.message, /^[a-z ]+$/, `${code}: a short generic sentence`);
    }
  });

  it("toWire never carries the message, detail or cause", () => {
    const error = new GateError("ERR_STORE_UNAVAILABLE", "redis at redis://:hunter2@10.0.0.1 refused", {
      detail: "secret detail",
      cause: new Error("ECONNREFUSED 10.0.0.1"),
    });
    const wire = JSON.stringify(error.toWire());
    for (const secret of ["hunter2", "10.0.0.1", "secret detail", "ECONNREFUSED"]) {
      assert.ok(!wire.includes(secret), secret);
    }
    assert.deepEqual(error.toWire(), {
      status: 503,
      code: "ERR_STORE_UNAVAILABLE",
      message: "service temporarily unavailable",
    });
  });

  it("every error class the library exports is a GateError with a code", () => {
    for (const [name, value] of Object.entries(library)) {
      if (typeof value === "function" && value.prototype instanceof Error) {
        assert.ok(
          value === GateError || value.prototype instanceof GateError,
          `${name} is an Error without a code`,
        );
      }
    }
  });

  it("the sources throw only GateError (a plain Error may only be a GateError's cause)", async () => {
    const offenders: string[] = [];
    for (const file of await sourceFiles(srcDir)) {
      const text = await readFile(file, "utf8");
      for (const [index, line] of text.split("\n").entries()) {
        if (/throw new (Error|TypeError|RangeError|SyntaxError)\(/.test(line))
          offenders.push(`${file}:${index + 1}`);
      }
    }
    assert.deepEqual(offenders, []);
  });
});
