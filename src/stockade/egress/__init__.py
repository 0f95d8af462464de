"""Egress (issue 7): agents reach exactly the `host:port` / `cidr:port` pairs their policy allows.

Modules: `rules` (pure checks: allowlist entries, forbidden ranges, strict URL/host parsing),
`dns` (pure DNS codec + tiny client), `ruleset` (pure nftables JSON builders), `nft` (run
batches inside a namespace, on the perimeter's libnftables shim), `manager` (the imperative
shell: namespaces, veths, tables, DNS refresh, ip_forward), `setup` (gateway hooks, doctor,
the executor wrapper that hands the allowlist view to `network.*` handlers). Docs: docs/egress.md.
"""
