"""The PROMINENCE-compatible REST API under /v1: routes translate HTTP to the service layer."""
