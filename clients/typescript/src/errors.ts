// Decoding of classwire's rich error details (AIP-193) from a ConnectError.
//
// The server sends a google.rpc.Status in the `grpc-status-details-bin` trailer; Connect unpacks
// its google.protobuf.Any entries into `err.details` as { type, value } pairs. The google.rpc
// schemas are not part of our generated tree (we generate only classwire's own protos), and the
// three messages we need are tiny and frozen, so they are read here straight off the wire format
// instead of pulling in a second generated package.
import { ConnectError } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { BinaryReader } from "@bufbuild/protobuf/wire";

export interface FieldViolation {
  field: string;
  description: string;
}

export interface ClasswireErrorDetails {
  /** The Connect code name, for example "invalid_argument". */
  code: string;
  /** The status message, for people; branch on `reason` instead. */
  message: string;
  /** google.rpc.ErrorInfo.reason, for example "API_KEY_INVALID"; empty if the server sent none. */
  reason: string;
  /** google.rpc.ErrorInfo.domain: "classwire.dev" for classwire's own errors. */
  domain: string;
  metadata: Record<string, string>;
  /** google.rpc.BadRequest field violations (INVALID_ARGUMENT). */
  fieldViolations: FieldViolation[];
  /** google.rpc.RetryInfo.retry_delay in milliseconds (RESOURCE_EXHAUSTED), or null. */
  retryDelayMs: number | null;
  /** The server's id for the failed call, to quote when reporting a problem. */
  requestId: string;
  /** Fully-qualified type names of every detail, including ones this decoder skips. */
  detailTypes: string[];
}

const ERROR_INFO = "google.rpc.ErrorInfo";
const BAD_REQUEST = "google.rpc.BadRequest";
const RETRY_INFO = "google.rpc.RetryInfo";

// Reads each field of a message, calling `onField` for the ones it wants and skipping the rest,
// so that fields added to these messages later never break the decoder.
function readFields(bytes: Uint8Array, onField: (no: number, reader: BinaryReader) => boolean): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    if (!onField(no, reader)) {
      reader.skip(wireType, no);
    }
  }
}

function stringPair(bytes: Uint8Array): [string, string] {
  // Map entries and FieldViolation are both { string = 1; string = 2 }.
  let first = "";
  let second = "";
  readFields(bytes, (no, r) => {
    if (no === 1) first = r.string();
    else if (no === 2) second = r.string();
    else return false;
    return true;
  });
  return [first, second];
}

function durationMs(bytes: Uint8Array): number {
  let seconds = 0n;
  let nanos = 0;
  readFields(bytes, (no, r) => {
    if (no === 1) seconds = BigInt(r.int64());
    else if (no === 2) nanos = r.int32();
    else return false;
    return true;
  });
  return Number(seconds) * 1000 + nanos / 1e6;
}

/** The rich details of any error thrown by a classwire call. */
export function errorDetails(error: unknown): ClasswireErrorDetails {
  const err = ConnectError.from(error);
  const result: ClasswireErrorDetails = {
    code: codeToString(err.code),
    message: err.rawMessage,
    reason: "",
    domain: "",
    metadata: {},
    fieldViolations: [],
    retryDelayMs: null,
    requestId: err.metadata.get("x-request-id") ?? "",
    detailTypes: [],
  };
  for (const detail of err.details) {
    // Outgoing details (constructed locally) carry a schema, not a type name: none here.
    if (!("type" in detail)) continue;
    result.detailTypes.push(detail.type);
    if (detail.type === ERROR_INFO) {
      readFields(detail.value, (no, r) => {
        if (no === 1) result.reason = r.string();
        else if (no === 2) result.domain = r.string();
        else if (no === 3) {
          const [key, value] = stringPair(r.bytes());
          result.metadata[key] = value;
        } else return false;
        return true;
      });
    } else if (detail.type === BAD_REQUEST) {
      readFields(detail.value, (no, r) => {
        if (no !== 1) return false;
        const [field, description] = stringPair(r.bytes());
        result.fieldViolations.push({ field, description });
        return true;
      });
    } else if (detail.type === RETRY_INFO) {
      readFields(detail.value, (no, r) => {
        if (no !== 1) return false;
        result.retryDelayMs = durationMs(r.bytes());
        return true;
      });
    }
  }
  return result;
}
