"""The owner's dashboard: server-rendered pages, `/api/*` JSON, `/api/events` SSE."""
