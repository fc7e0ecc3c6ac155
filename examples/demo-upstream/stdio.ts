import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";

/**
 * The demo's notes server over stdio, the way many MCP servers ship: it keeps its state in its home
 * directory and trusts whoever started it. Behind tenantgate that is safe: the gateway starts one
 * process per session, for that session's principal only, with its own HOME, so one user's notes
 * (and credentials) are never in another user's process.
 *
 *   upstreams: [{ name: notes-stdio, path: /stdio/mcp, command: node, args: [examples/demo-upstream/stdio.ts] }]
 */

const MAX_NOTES = 1000;
const MAX_NOTE_LENGTH = 4096;
const home = process.env["HOME"] ?? ".";
const file = join(home, ".demo-notes", "notes.json");

function readNotes(): string[] {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as string[];
  } catch {
    return [];
  }
}

const server = new McpServer({ name: "tenantgate-demo-stdio", version: "1.0.0" });
server.registerTool(
  "add_note",
  {
    description: "Stores a note in this session's home directory.",
    inputSchema: { text: z.string().max(MAX_NOTE_LENGTH) },
  },
  async ({ text }) => {
    const notes = readNotes();
    if (notes.length >= MAX_NOTES)
      return { content: [{ type: "text", text: "too many notes" }], isError: true };
    notes.push(text);
    mkdirSync(join(home, ".demo-notes"), { recursive: true, mode: 0o700 });
    writeFileSync(file, JSON.stringify(notes), { mode: 0o600 });
    return { content: [{ type: "text", text: `stored note ${notes.length}` }] };
  },
);
server.registerTool("list_notes", { description: "Lists this session's notes, one per line." }, async () => ({
  content: [{ type: "text", text: readNotes().join("\n") }],
}));
server.registerTool("where_am_i", { description: "The process's home directory and user id." }, async () => ({
  content: [{ type: "text", text: JSON.stringify({ home, uid: process.getuid?.() ?? null }) }],
}));

await server.connect(new StdioServerTransport());
