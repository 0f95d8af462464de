import hashlib

from ._common import encode


def digest(args: dict) -> dict:
    algorithm = args.get("algorithm", "sha256")
    h = hashlib.new(algorithm)
    h.update(encode(args["text"]))
    return {"algorithm": algorithm, "hex": h.hexdigest()}
