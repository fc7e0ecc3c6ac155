/**
 * Test profiles: settings every gateway the tests start gets on top of the test's own config, chosen
 * by `TG_TEST_PROFILE`.
 *
 *   unset   the test's config as written (the ordinary run)
 *   bench   the settings `npm run bench` applies over the defaults (bench/bench-profile.ts): raised
 *           limits, security events on stdout, the access log at `info` to a file, the admin API on
 *           loopback port 0. `npm run threats:bench` runs the THREATS tests this way, so the
 *           benchmarked configuration is the one whose isolation is proven.
 *
 * The rule is the harness's `extra` rule: a top-level key the test sets replaces the profile's whole
 * section, so a test of limits keeps its own limits and a test that reads the log keeps its own log
 * settings. Any other value fails loudly rather than run the ordinary profile under another name.
 *
 * The profile's log file goes to a fresh temporary directory per gateway (never the repository),
 * removed when the test process exits.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { benchSettings } from "../../bench/bench-profile.ts";

export const TEST_PROFILE_VARIABLE = "TG_TEST_PROFILE";

const PROFILES = ["bench"] as const;
type Profile = (typeof PROFILES)[number];

/** The profile the environment asks for; undefined when unset or empty. Throws on an unknown name. */
export function testProfile(env: NodeJS.ProcessEnv = process.env): Profile | undefined {
  const value = env[TEST_PROFILE_VARIABLE];
  if (value === undefined || value === "") return undefined;
  if ((PROFILES as readonly string[]).includes(value)) return value as Profile;
  throw new Error(
    `${TEST_PROFILE_VARIABLE}=${JSON.stringify(value)} is not a test profile (known: ${PROFILES.join(", ")}; unset for none)`,
  );
}

const directories: string[] = [];
let cleanupRegistered = false;

function freshDirectory(): string {
  const dir = mkdtempSync(join(tmpdir(), "tenantgate-test-profile-"));
  directories.push(dir);
  if (!cleanupRegistered) {
    cleanupRegistered = true;
    // Gateways (in-process or children) are closed by then; their log files go with the directory.
    process.once("exit", () => {
      for (const path of directories) rmSync(path, { recursive: true, force: true });
    });
  }
  return dir;
}

/**
 * `config` with the active profile's settings for every top-level key it does not set itself (the
 * test's keys win, whole). Without a profile, `config` itself.
 */
export function withTestProfile<T extends Record<string, unknown>>(
  config: T,
  env: NodeJS.ProcessEnv = process.env,
): T {
  const profile = testProfile(env);
  if (profile === undefined) return config;
  return { ...benchSettings(freshDirectory()), ...config };
}
