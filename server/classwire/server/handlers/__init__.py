"""One servicer per gRPC service: validate -> call the domain -> convert. No SQL, no rules."""
