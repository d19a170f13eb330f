// Calls a running classwire server over gRPC (HTTP/2 without TLS, as on loopback):
// GetTenant with an API key, then CreateApiKey with an invalid scope to show the decoded error.
// Prints one JSON line with the results.
//
//   CLASSWIRE_ADDRESS=127.0.0.1:50051 CLASSWIRE_API_KEY=cw.key_... node dist/examples/get-tenant.js
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { PlatformService } from "../src/gen/classwire/api/platform/v1/service_pb.js";
import { errorDetails } from "../src/errors.js";

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    console.error(`set ${name}`);
    process.exit(2);
  }
  return value;
}

const address = required("CLASSWIRE_ADDRESS");
const apiKey = required("CLASSWIRE_API_KEY");

// An http:// base URL makes the gRPC transport speak HTTP/2 with prior knowledge (h2c).
const transport = createGrpcTransport({ baseUrl: `http://${address}` });
const platform = createClient(PlatformService, transport);
const headers = { authorization: `Bearer ${apiKey}` };

const { tenant } = await platform.getTenant({}, { headers, timeoutMs: 10_000 });

let invalidScope: unknown = null;
try {
  await platform.createApiKey(
    { displayName: "example", scopes: ["not-a-scope"] },
    { headers, timeoutMs: 10_000 },
  );
} catch (err) {
  invalidScope = errorDetails(err);
}

console.log(
  JSON.stringify({
    tenantId: tenant?.id ?? "",
    tenantDisplayName: tenant?.displayName ?? "",
    invalidScope,
  }),
);
