"""Signed packs: third-party capabilities that run only if their publisher's signature and every
file hash verify, every time, inside the sandbox, from the same bytes that then execute.

    manifest.py  pure: pack.yaml model, canonical manifest, signing and verification
    keys.py      Ed25519 key files (private key 0600, optionally passphrase-encrypted)
    tree.py      reading a pack directory or tarball safely (no symlinks, no `..`, no .pyc)
    store.py     trust store, install/remove/list, the read-only store packs/<name>/<version>/
    runner.py    inside the sandbox child: read via fds, verify, compile from memory, call
    supply.py    `doctor --verify-install`: stockade's own installed files vs RECORD and the lock
"""
