// @classwire/client: the generated classwire v1 services and messages (protoc-gen-es), plus the
// little a caller needs around them: a bearer-token interceptor and rich-error decoding.
//
// Every service works with any Connect transport; classwire speaks gRPC, so in Node use
// createGrpcTransport from @connectrpc/connect-node (HTTP/2):
//
//   const transport = createGrpcTransport({
//     baseUrl: "https://classwire.example.com",
//     interceptors: [bearerAuth(process.env.CLASSWIRE_API_KEY!)],
//   });
//   const platform = createClient(PlatformService, transport);
//   const { tenant } = await platform.getTenant({});
import type { Interceptor } from "@connectrpc/connect";

export { PlatformService } from "./gen/classwire/api/platform/v1/service_pb.js";
export { RosterService } from "./gen/classwire/api/roster/v1/service_pb.js";
export { SchedulingService } from "./gen/classwire/api/scheduling/v1/service_pb.js";
export { SessionService } from "./gen/classwire/api/session/v1/service_pb.js";
export { MediaService } from "./gen/classwire/api/media/v1/service_pb.js";
export { DataService } from "./gen/classwire/api/data/v1/service_pb.js";

// Messages per area as namespaces: several areas define messages of the same name.
export * as platform from "./gen/classwire/api/platform/v1/service_pb.js";
export * as platformResources from "./gen/classwire/api/platform/v1/resources_pb.js";
export * as roster from "./gen/classwire/api/roster/v1/service_pb.js";
export * as rosterResources from "./gen/classwire/api/roster/v1/resources_pb.js";
export * as scheduling from "./gen/classwire/api/scheduling/v1/service_pb.js";
export * as schedulingResources from "./gen/classwire/api/scheduling/v1/resources_pb.js";
export * as session from "./gen/classwire/api/session/v1/service_pb.js";
export * as sessionResources from "./gen/classwire/api/session/v1/resources_pb.js";
export * as media from "./gen/classwire/api/media/v1/service_pb.js";
export * as mediaResources from "./gen/classwire/api/media/v1/resources_pb.js";
export * as data from "./gen/classwire/api/data/v1/service_pb.js";
export * as dataResources from "./gen/classwire/api/data/v1/resources_pb.js";
export * as common from "./gen/classwire/api/common/v1/common_pb.js";
export * as events from "./gen/classwire/api/events/v1/event_pb.js";

export { errorDetails } from "./errors.js";
export type { ClasswireErrorDetails, FieldViolation } from "./errors.js";

/**
 * Sends `authorization: Bearer <token>` on every call: an API key (`cw.key_...`) for backend
 * services, or a participant token (a JWT) for one participant.
 */
export function bearerAuth(token: string): Interceptor {
  return (next) => (req) => {
    // A header set on the call itself wins, so one call can act with another credential.
    if (!req.header.has("authorization")) {
      req.header.set("authorization", `Bearer ${token}`);
    }
    return next(req);
  };
}
