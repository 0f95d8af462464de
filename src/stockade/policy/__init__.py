"""The policy engine (docs/design.md "Policy"): layered YAML tiers compiled into an index, decided by a pure
function, with rate limits persisted in SQLite and hot reload.

- `model`: the file format and loader (file:line errors);
- `conditions`: compiled conditions and the regex safety check;
- `engine`: the index, `evaluate` (pure), `escalate` (pure rate-limit stage), visibility;
- `runtime`: the pipeline hook (`decide`, `peek`, `visible`);
- `loader`, `ratelimit`, `setup`: the imperative shell.
"""

from stockade.policy.engine import Policy, Verdict, compile_policy, evaluate
from stockade.policy.model import TIERS, PolicyFile, parse_policy

__all__ = ["TIERS", "Policy", "PolicyFile", "Verdict", "compile_policy", "evaluate", "parse_policy"]
