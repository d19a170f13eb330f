"""gRPC plumbing shared by every service: interceptors, error mapping, per-call context."""
