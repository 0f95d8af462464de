"""Per-agent long-lived network namespaces (owned by the egress part; the sandbox joins them).

Contract used by the sandbox: `ensure_agent_netns(home, agent) -> str` returns a path that a
child can `setns()` into (e.g. /run/netns/stockade-<agent>); the namespace exists with `lo` up
and nothing else until egress adds a veth and nftables rules for agents whose profile has egress.
`remove_agent_netns(agent)` tears it down.
"""
