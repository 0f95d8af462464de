"""The bottom layer: the contracts every part stands on.

Types shared across parts (`Caller`, `Decision`, `Tier`), the error types with their codes,
health states, the event bus, the data home, config and the database. Nothing here imports any
other part of stockade; every part may import from here.
"""
