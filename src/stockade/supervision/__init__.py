"""Supervision: the event bus, the admin socket, approvals UI and the owner's dashboard."""
