"""Business rules and domain errors. Nothing here imports grpc or a SQL dialect."""
