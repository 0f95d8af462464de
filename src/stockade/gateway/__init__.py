"""The gateway: transports (JSON-RPC, MCP Streamable HTTP, MCP WebSocket, stdio bridge) that all
end in one invoke pipeline (`stockade.gateway.pipeline`)."""
