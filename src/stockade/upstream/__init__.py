"""Upstream MCP servers behind the pipeline (issue 20; docs/upstream.md).

`config` (upstream.yaml), `tools` (an MCP tool list -> capability definitions, results shaped
and bounded), `confine` (uid, network namespace, cgroup, view of one instance), `client` (the
confined process and the `mcp` SDK session to it), `supervisor` (instances per agent, restart
with backoff, health), `setup` (the part's wiring and admin commands).
"""
