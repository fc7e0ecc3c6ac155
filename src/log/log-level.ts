/**
 * The levels `log.level` accepts: pino's own names, most severe first. Kept apart from the logger so
 * the config layer can check a level without loading pino.
 */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

export type LogLevel = (typeof LOG_LEVELS)[number];

export const DEFAULT_LOG_LEVEL: LogLevel = "info";
