"""gRPC decision service."""
