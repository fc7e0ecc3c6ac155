import { randomBytes } from "node:crypto";
import { constants, type FileHandle, link, open, rename, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import type { GateError } from "../errors.ts";

/**
 * The audit file's writer lock, `<path>.lock`: one writer per file, or two would interleave two
 * chains. Per host only (see `acquireWriterLock`).
 */

export const LOCK_SUFFIX = ".lock";

/**
 * A small regular file's text (at most `maxBytes`), or null when it is not one. Opened with
 * O_NOFOLLOW (a planted symlink must not choose what is read: ELOOP) and O_NONBLOCK (a FIFO must
 * not hang the start).
 */
export async function readSmallFile(path: string, maxBytes: number): Promise<string | null> {
  const file: FileHandle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const info = await file.stat();
    if (!info.isFile() || info.size > maxBytes) return null;
    return await file.readFile("utf8");
  } finally {
    await file.close();
  }
}

interface LockOwner {
  readonly pid: number;
  readonly host: string;
  readonly token: string;
}

/** The lock at `lockPath`: its owner, "missing", or why it is not a lock tenantgate wrote. */
async function readLock(lockPath: string): Promise<LockOwner | "missing" | { problem: string }> {
  let text: string | null;
  try {
    text = await readSmallFile(lockPath, 1024);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return "missing";
    if (code === "ELOOP") return { problem: "is a symbolic link" };
    return { problem: `cannot be read (${code ?? "error"})` };
  }
  try {
    const { pid, host, token } = JSON.parse(text ?? "") as Record<string, unknown>;
    // kill(0) or a negative pid would signal a whole process group: only a plain pid is a lock.
    if (
      typeof pid === "number" &&
      Number.isSafeInteger(pid) &&
      pid > 0 &&
      typeof host === "string" &&
      typeof token === "string"
    ) {
      return { pid, host, token };
    }
  } catch {
    // Falls through: not a lock tenantgate wrote.
  }
  return { problem: "is not a tenantgate lock" };
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists, it is only not ours to signal.
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Creates `target` holding `content`, or returns false when it exists. Written to a unique temporary
 * file and linked into place, so the lock is never seen empty (a crash between create and write would
 * otherwise leave a lock nobody could judge).
 */
async function createWithContent(target: string, content: string): Promise<boolean> {
  const temporary = `${target}.${randomBytes(12).toString("base64url")}.tmp`;
  const file = await open(
    temporary,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    0o600,
  );
  try {
    try {
      await file.writeFile(content);
      await file.sync();
    } finally {
      await file.close();
    }
    try {
      await link(temporary, target);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
      throw error;
    }
  } finally {
    await unlink(temporary).catch(() => undefined);
  }
}

/**
 * Moves a stale lock out of the way, if it is still the one judged stale (another starter may have
 * replaced it meanwhile: that one is put back). True when the way is clear.
 */
async function takeOverLock(lockPath: string, staleToken: string): Promise<boolean> {
  const moved = `${lockPath}.${randomBytes(12).toString("base64url")}.stale`;
  try {
    await rename(lockPath, moved);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return true;
    throw error;
  }
  const taken = await readLock(moved);
  if (typeof taken === "object" && "token" in taken && taken.token === staleToken) {
    await unlink(moved);
    return true;
  }
  await link(moved, lockPath).catch(() => undefined);
  await unlink(moved).catch(() => undefined);
  return false;
}

/**
 * Takes `<path>.lock` for this process, or throws what `refuse` makes of the reason. The lock names the pid and host; a lock whose pid is gone on this host is taken over. It
 * means nothing across hosts (a pid elsewhere cannot be checked), so it does not make a shared
 * network filesystem safe for two replicas.
 */
export async function acquireWriterLock(
  path: string,
  refuse: (problem: string, cause?: unknown) => GateError,
): Promise<{ release(): Promise<void> }> {
  const lockPath = `${path}${LOCK_SUFFIX}`;
  const host = hostname();
  const token = randomBytes(16).toString("base64url");
  const content = `${JSON.stringify({ pid: process.pid, host, token })}\n`;
  const release = async (): Promise<void> => {
    // Only our own lock: never one a later writer took over.
    const current = await readLock(lockPath);
    if (typeof current === "object" && "token" in current && current.token === token) await unlink(lockPath);
  };
  for (let attempt = 0; attempt < 3; attempt += 1) {
    try {
      if (await createWithContent(lockPath, content)) return { release };
    } catch (cause) {
      throw refuse(`cannot be locked: ${lockPath} cannot be created`, cause);
    }
    const owner = await readLock(lockPath);
    if (owner === "missing") continue;
    if ("problem" in owner) {
      throw refuse(
        `is locked by ${lockPath}, which ${owner.problem}; remove it once no gateway writes the file`,
      );
    }
    if (owner.host !== host) {
      throw refuse(
        `is locked by a writer on another host (${lockPath}); the lock is per host, so remove it only once that writer has stopped`,
      );
    }
    if (processAlive(owner.pid)) {
      throw refuse(`is already being written by process ${owner.pid} (${lockPath}): one writer per file`);
    }
    if (!(await takeOverLock(lockPath, owner.token))) {
      throw refuse(`cannot be locked: ${lockPath} changed while a stale lock was taken over`);
    }
  }
  throw refuse(`cannot be locked: ${lockPath} keeps changing`);
}
