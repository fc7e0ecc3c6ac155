/**
 * fast-check parameters for every property in the suite. The seed is fixed so CI runs are
 * reproducible; FC_SEED overrides it (a number, or "random"). fast-check prints the seed and the
 * counterexample path on failure; the line below also names it before any run.
 */
const DEFAULT_SEED = 20_261_122;

export function fastCheckSeed(): number {
  const raw = process.env["FC_SEED"];
  if (raw === "random") return Math.floor(Math.random() * 2 ** 31);
  return raw ? Number(raw) : DEFAULT_SEED;
}

export function fastCheckParameters(numRuns: number): { numRuns: number; seed: number } {
  const seed = fastCheckSeed();
  return { numRuns, seed };
}
