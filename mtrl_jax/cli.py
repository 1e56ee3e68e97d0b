"""The ``mtrl`` command: one entry point for the project's jobs.

Subcommands available now: ``envs`` (list environments), ``play`` (play the oracle or a random
agent on an environment) and ``sop-bench`` (evaluate on SOP-Bench, evaluation only). Training,
SFT, evaluation of models and export join as the learner lands. Each subcommand imports what it
needs when it runs, so ``mtrl envs`` works without the JAX stack installed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


def _envs(argv: list[str]) -> Any:
    from mtrl_gym.cli import main

    return main(["list", *argv])


def _play(argv: list[str]) -> Any:
    from mtrl_gym.cli import main

    return main(["play", *argv])


def _sop_bench(argv: list[str]) -> Any:
    from mtrl_envs.sop_bench.cli import main

    return main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], Any], str]] = {
    "envs": (_envs, "list the registered environments"),
    "play": (_play, "play the oracle or a random agent on an environment"),
    "sop-bench": (_sop_bench, "evaluate on SOP-Bench domains (evaluation only)"),
}


def main(argv: Sequence[str] | None = None) -> Any:
    """Dispatches ``mtrl <command> [args]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        lines = ["usage: mtrl <command> [args]", "", "commands:"]
        lines += [f"  {name:10s} {help_}" for name, (_, help_) in COMMANDS.items()]
        asked = bool(args) and args[0] in ("-h", "--help")
        print("\n".join(lines), file=sys.stdout if asked else sys.stderr)
        if args and not asked:
            print(f"mtrl: unknown command {args[0]!r}", file=sys.stderr)
        raise SystemExit(0 if asked else 2)
    command, _ = COMMANDS[args[0]]
    return command(args[1:])


def entry() -> None:
    """Console-script entry point (returns nothing, so the shell sees exit status 0)."""
    main()


if __name__ == "__main__":
    entry()
