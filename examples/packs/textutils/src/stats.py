def stats(args: dict) -> dict:
    text = args["text"]
    return {"chars": len(text), "words": len(text.split()), "lines": text.count("\n") + (1 if text and not text.endswith("\n") else 0)}
