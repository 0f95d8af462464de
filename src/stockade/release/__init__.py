"""Signed releases: stockade verifies itself (issue 22).

    keys.py      the pinned publisher key; Ed25519 sign/verify over the manifest bytes
    manifest.py  pure: the manifest format, its canonical bytes, reading wheels, versions
    build.py     `stockade release build`: reproducible wheel + manifest + signature
    verify.py    `doctor --verify-install` and the gateway's start check: the install vs the manifest
    upgrade.py   `stockade upgrade FILE`: install only a newer release signed with the pinned key

Imports only `stockade.core` (layer: just above core, beside `edge`).
"""
