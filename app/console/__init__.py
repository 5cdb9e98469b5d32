"""The admin console: server-rendered pages at `/console` over the services the API calls."""
