"""Test-only sandboxed capabilities: run attacker-supplied Python inside the sandbox child.

Loaded into the test zygote entry (tests/sandbox/testing_zygote.py, never the shipped zygote)
and into the gateway's registry by the tests.
"""

from __future__ import annotations

from typing import Any

from stockade.capabilities.registry import implements, parse_definitions

DEFS_YAML = """
capabilities:
  - name: test.pyexec
    purpose: Test only. Run Python source inside the sandbox; `result` (a dict) is returned.
    when_to_use: Never outside the escape suite.
    execution: sandbox
    side_effects: true
    default_tier: autonomous
    input:
      type: object
      required: [code]
      properties: {code: {type: string}}
    output: {type: object}
  - name: test.echo
    purpose: Test only. Return the arguments (benchmarks and interface checks).
    when_to_use: Never outside tests.
    execution: sandbox
    default_tier: autonomous
    input: {type: object}
    output: {type: object}
"""


def pyexec(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    ns: dict[str, Any] = {"ctx": ctx, "result": {}}
    exec(compile(args["code"], "<attack>", "exec"), ns)  # noqa: S102 - that is the point
    return ns["result"]


def echo(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"args": args, "agent": ctx.agent, "call_id": ctx.call_id, "workspace": ctx.workspace,
            "trash": ctx.trash, "tmp": ctx.tmp, "max_output_bytes": ctx.profile.max_output_bytes}


IMPLS = {"test.pyexec": pyexec, "test.echo": echo}
if __name__.startswith("stockade_sandbox_test_"):  # inside the zygote only; the gateway uses registry.add
    implements("test.pyexec")(pyexec)
    implements("test.echo")(echo)


def definitions() -> list:
    return parse_definitions(DEFS_YAML, __file__)
