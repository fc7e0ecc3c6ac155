import { startDemoUpstream } from "./server.ts";

/**
 * Runs the demo upstream on its own:
 *
 *   DEMO_ISSUER=http://127.0.0.1:8080 DEMO_AUDIENCE=http://127.0.0.1:8080/mcp \
 *   DEMO_JWKS_URL=http://127.0.0.1:8080/.well-known/jwks.json DEMO_UPSTREAM_PORT=9090 \
 *   node examples/demo-upstream/main.ts
 *
 * Then point a tenantgate upstream at the printed URL with the same audience.
 */

function required(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === "") {
    console.error(`${name} is required (see the comment at the top of examples/demo-upstream/main.ts)`);
    process.exit(2);
  }
  return value;
}

const portText = process.env["DEMO_UPSTREAM_PORT"] ?? "0";
const port = Number(portText);
if (!/^\d{1,5}$/.test(portText) || port > 65535) {
  console.error("DEMO_UPSTREAM_PORT must be a port number from 0 to 65535");
  process.exit(2);
}

const upstream = await startDemoUpstream({
  port,
  gateway: {
    issuer: required("DEMO_ISSUER"),
    audience: required("DEMO_AUDIENCE"),
    jwksUrl: required("DEMO_JWKS_URL"),
  },
});
console.log(upstream.url);

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    upstream.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
}
