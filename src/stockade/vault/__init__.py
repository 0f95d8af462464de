"""The vault: secrets agents can use (by `${secret:NAME}` reference) but never read.

`format` is the pure on-disk contract of docs/design.md "Formats", `keys` holds the master key in a
wipeable, locked, non-dumpable page, `store` is the SQLite shell, `refs` finds and substitutes
placeholders (pure), `runtime` is the gateway's SecretsHook, `setup` wires it into `serve`.
"""
