"""GraphQL at /graphql (DESIGN.md 3.7): strawberry on the same Starlette app as /v1, with the same
tokens and rules, through the same services (`gateway/services`, `gateway/auth.py`)."""
