"""The durable event log, units of work that write it, and the dispatchers that read it."""
