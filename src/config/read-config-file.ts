import { readFile } from "node:fs/promises";
import { extname } from "node:path";
import { parseDocument } from "yaml";
import { GateError } from "../errors.ts";

/**
 * Reads a config file, JSON or YAML by its extension. Parse errors give the line and column only:
 * the parsers' own messages quote the surrounding text, which may be a secret. Duplicate keys are
 * refused in both formats (JSON.parse would silently keep the last one, hiding a setting).
 */

const MAX_FILE_BYTES = 1024 * 1024;

function refused(path: string, problem: string, cause?: unknown): GateError {
  return new GateError(
    "ERR_CONFIG_INVALID",
    `config: file ${path} ${problem}`,
    cause === undefined ? {} : { cause },
  );
}

function at(linePos: readonly { line: number; col: number }[] | undefined): string {
  const start = linePos?.[0];
  return start ? ` (line ${start.line}, column ${start.col})` : "";
}

/** Reads YAML 1.2 (core schema: `yes`/`no`/`on` stay strings) as plain data. */
function parseYaml(path: string, text: string): unknown {
  const document = parseDocument(text, { schema: "core", uniqueKeys: true, prettyErrors: true });
  // Warnings (an unknown tag, say) are refused too: a value read differently from how it was meant
  // is as wrong as one that does not parse.
  const problem = document.errors[0] ?? document.warnings[0];
  if (problem) {
    const what = problem.code === "DUPLICATE_KEY" ? "repeats a key" : "is not valid YAML";
    throw refused(path, `${what}${at(problem.linePos)}`);
  }
  return document.toJS({ maxAliasCount: 100 });
}

function parseJson(path: string, text: string): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    const position = /\(line (\d+) column (\d+)\)/.exec(error instanceof Error ? error.message : "");
    throw refused(
      path,
      `is not valid JSON${position ? ` (line ${position[1]}, column ${position[2]})` : ""}`,
    );
  }
  // Valid JSON is valid YAML 1.2 flow syntax, so the YAML parser can point at a repeated key.
  const duplicate = parseDocument(text, {
    schema: "json",
    uniqueKeys: true,
    prettyErrors: true,
  }).errors.find((error) => error.code === "DUPLICATE_KEY");
  if (duplicate) throw refused(path, `repeats a key${at(duplicate.linePos)}`);
  return value;
}

export async function readConfigFile(path: string): Promise<unknown> {
  const extension = extname(path).toLowerCase();
  if (![".json", ".yaml", ".yml"].includes(extension)) {
    throw refused(path, "must end in .json, .yaml or .yml");
  }
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (cause) {
    throw refused(path, "cannot be read", cause);
  }
  if (bytes.byteLength > MAX_FILE_BYTES) throw refused(path, "is larger than 1 MiB");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch {
    throw refused(path, "is not UTF-8");
  }
  const value = extension === ".json" ? parseJson(path, text) : parseYaml(path, text);
  // An empty YAML file holds no settings: the environment and defaults may supply them all.
  return value ?? {};
}
