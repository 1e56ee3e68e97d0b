"""Running untrusted solutions against test inputs in the sandbox, and reporting on them.

The agent's code is saved as ``solution.py`` next to a trusted harness (``main.py``) and a JSON
file of argument lists, and run with ``mtrl_gym.sandbox.run_python``. The harness imports the
solution, calls the function once per argument list, and prints one marked line of JSON: the
return values (JSON-normalised) or the exception of every call, plus what the code printed.

Expected outputs never enter the sandbox: the parent compares the reported values with them.
Code that forges the report can therefore only "pass" by producing the right values, which is
the task itself. Before importing the solution the harness also installs an audit hook that
refuses to import ``mtrl_envs``/``mtrl_gym`` or open any path through this package's folder or
a ``.git`` folder, so that the reference solutions cannot simply be read or imported (best
effort, like the sandbox's own hook: the sandbox makes no promise of confidentiality).

Fault assignment: the solution failing to load, looping forever, exhausting memory or killing
the harness is a :class:`~mtrl_gym.ToolError` (the agent's mistake). The sandbox failing to run
raises ``SandboxInfraError``, which the environment turns into status ``infra_error``.

Non-goals: per-test time limits (one wall clock covers the whole run) and stdin/stdout tasks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtrl_gym import ToolError
from mtrl_gym.sandbox import SandboxLimits, run_python

DEFAULT_LIMITS = SandboxLimits(timeout_s=5.0, memory_mb=256, max_output_bytes=1 << 20)
MARKER = "@@mtrl-test-report@@"
# Path components the solution may not open: this package (reference solutions, hidden tests,
# their bytecode) and git history that holds the same files.
BLOCKED_PATH_PARTS = (Path(__file__).resolve().parent.name, ".git")
BLOCKED_MODULES = ("mtrl_envs", "mtrl_gym")

HARNESS = f"""\
import io
import json
import sys

MARKER = {MARKER!r}

with open("cases.json", encoding="utf-8") as f:
    CONFIG = json.load(f)


def install_guard(blocked_parts, blocked_modules):
    # Everything the hook uses is bound here: the solution could patch module attributes.
    parts, modules = frozenset(blocked_parts), frozenset(blocked_modules)
    isinstance_, str_, bytes_, int_, error = isinstance, str, bytes, int, PermissionError

    def guard(event, args):
        if event == "import" and isinstance_(args[0], str_):
            if args[0].partition(".")[0] in modules:
                raise error("sandbox: importing the grader is not allowed")
        elif event == "open":
            path = args[0]
            if isinstance_(path, int_):
                return
            if isinstance_(path, bytes_):
                path = path.decode("utf-8", "surrogateescape")
            if not isinstance_(path, str_):
                # A path object could answer differently when the file is really opened.
                raise error("sandbox: open() needs a str or bytes path here")
            if parts.intersection(path.split("/")):
                raise error("sandbox: reading the grader's files is not allowed")

    sys.addaudithook(guard)


def describe(exc):
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {{exc.msg}} (line {{exc.lineno}})"
    return f"{{type(exc).__name__}}: {{exc}}"


def main():
    install_guard(CONFIG["blocked_parts"], CONFIG["blocked_modules"])
    real_stdout, captured = sys.stdout, io.StringIO()
    sys.stdout = captured
    report = {{"load_error": None, "results": []}}
    try:
        import solution

        fn = getattr(solution, CONFIG["function"], None)
        if not callable(fn):
            report["load_error"] = f"your code defines no function named {{CONFIG['function']!r}}"
    except BaseException as exc:  # SystemExit too: the harness must still report
        report["load_error"] = describe(exc)
        fn = None
    if fn is not None:
        for args in CONFIG["cases"]:
            try:
                value = fn(*args)
            except BaseException as exc:
                report["results"].append({{"error": describe(exc)}})
                continue
            try:
                report["results"].append({{"value": json.loads(json.dumps(value))}})
            except (TypeError, ValueError, RecursionError):
                kind = type(value).__name__
                report["results"].append({{"error": f"returned a {{kind}}, not JSON data"}})
    sys.stdout = real_stdout
    report["stdout"] = captured.getvalue()[:2000]
    real_stdout.write("\\n" + MARKER + json.dumps(report) + "\\n")
    real_stdout.flush()


main()
"""


@dataclass(frozen=True)
class Outcome:
    """What one call returned (``value``) or raised (``error``, then ``value`` is ``None``)."""

    value: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Report:
    """The outcomes of one run, in the order of the argument lists, and the code's output."""

    outcomes: tuple[Outcome, ...]
    stdout: str


def run_cases(
    code: str, function: str, cases: list[list[Any]], limits: SandboxLimits = DEFAULT_LIMITS
) -> Report:
    """Runs ``function`` from ``code`` on every argument list in the sandbox.

    Raises:
        ToolError: The code did not load (syntax error, missing function, exception at import),
            or the run ended without a report (timeout, memory, exit, killed).
        SandboxInfraError: The sandbox could not run the harness.
    """
    config = {
        "function": function,
        "cases": cases,
        "blocked_parts": list(BLOCKED_PATH_PARTS),
        "blocked_modules": list(BLOCKED_MODULES),
    }
    files = {"solution.py": code, "cases.json": json.dumps(config)}
    result = run_python(HARNESS, files=files, limits=limits)
    report = _find_report(result.stdout)
    if report is None:
        if not result.ok:
            raise ToolError(f"{result.detail or result.status}; no test results")
        raise ToolError("your code ended the test run before results were reported")
    if report.get("load_error"):
        raise ToolError(f"your code could not be loaded: {report['load_error']}")
    results = report.get("results")
    if (
        not isinstance(results, list)
        or len(results) != len(cases)
        or not all(isinstance(r, dict) for r in results)
    ):
        raise ToolError("the test report is incomplete")
    outcomes = tuple(
        Outcome(error=str(r["error"])) if "error" in r else Outcome(value=r.get("value"))
        for r in results
    )
    return Report(outcomes, str(report.get("stdout", "")))


def _find_report(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                report = json.loads(line[len(MARKER) :])
            except ValueError:
                return None  # a line the code forged; its run simply has no report
            return report if isinstance(report, dict) else None
    return None


def format_call(function: str, args: list[Any]) -> str:
    """The call as Python source, e.g. ``rotate_right([1, 2], 1)``."""
    return f"{function}({', '.join(repr(a) for a in args)})"
