"""The HTTP edge: one module per wire format (decode/encode/stream sinks), the shared plumbing, CORS."""
