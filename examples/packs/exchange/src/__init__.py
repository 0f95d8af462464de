"""exchange: example stockade pack (signed HTTP API calls with vault secrets)."""
