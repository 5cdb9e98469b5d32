"""HTTP routes, one module per domain: parse, call one service function, return a schema."""
