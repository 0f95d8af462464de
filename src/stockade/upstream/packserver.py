"""A signed pack's MCP server, started inside its long-lived sandbox (`python -I -B -m
stockade.upstream.packserver`, the pack mounted read-only at PACK_DIR).

Before anything of the pack runs, every file is read once through file descriptors and checked
against the signature and the trusted key the gateway passed for this start (`STOCKADE_PACK_INFO`:
what `packs.store.runner_info` gives a per-call runner, plus the server entry); the entry is then
compiled from those same bytes in memory (`packs.runner`), so a file changed after verification,
or planted bytecode, never runs. A refusal is the launcher's setup-error line on stderr (the
gateway reports it, naming the file) and exit status SETUP_ERROR_EXIT.
"""

from __future__ import annotations

import json
import os
import sys

from stockade.packs import runner
from stockade.packs.sigcheck import PackError
from stockade.sandbox.longlived import SETUP_ERROR_EXIT

PACK_DIR = "/stockade-pack"
INFO_ENV = "STOCKADE_PACK_INFO"


def main() -> None:
    try:
        info = json.loads(os.environ.pop(INFO_ENV))
        files = runner.verify_in_place(info)
        serve = runner.load_entry(info["name"], files, info["entry"])
    except PackError as e:
        sys.stderr.write(json.dumps({"setup_error": f"{e.type}: {e.message}"[:500]}) + "\n")
        sys.stderr.flush()
        os._exit(SETUP_ERROR_EXIT)
    serve()


if __name__ == "__main__":
    main()
