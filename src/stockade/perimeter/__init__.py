"""The perimeter (docs/design.md "Perimeter"): Single Packet Authorization in front of an nftables drop policy.

Layout (functional core, imperative shell):
- `codec`, `fwknop`, `native`, `verify`: pure parsing/verification of SPA packets.
- `config`: the `perimeter:` section of stockade.yaml (own pydantic model).
- `replay`: the SQLite replay cache; `nft`: the libnftables ctypes shim and ruleset;
  `daemon`: the UDP listener that never replies.
"""
