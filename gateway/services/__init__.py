"""The service layer: what REST routes and GraphQL resolvers both call. No HTTP here."""
