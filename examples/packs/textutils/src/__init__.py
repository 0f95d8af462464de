"""textutils: example stockade pack (pure compute)."""
