"""corrigo's HTTP server: the OpenAI-compatible surface, configuration, auth, metrics and CLI."""
