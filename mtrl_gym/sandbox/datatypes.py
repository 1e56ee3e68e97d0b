"""Public data types of the sandbox: limits, result, status and the infrastructure error.

``SandboxLimits`` validates itself on construction, so every other module can trust its fields;
``SandboxResult`` is what every ``run_*`` returns; ``SandboxInfraError`` (a
:class:`~mtrl_gym.tools.ToolInfraError`) is raised only for failures the sandboxed code cannot
produce itself.

Non-goals: running anything (see :mod:`~mtrl_gym.sandbox.api`) and deciding a run's status (see
:mod:`~mtrl_gym.sandbox.supervisor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mtrl_gym.tools import ToolInfraError

SandboxStatus = Literal[
    "ok", "error", "timeout", "memory_limit", "cpu_limit", "output_limit", "killed"
]


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Resource limits and permissions of one sandboxed run.

    Attributes:
        timeout_s: Wall-clock limit; after it the whole process tree is SIGKILLed.
        cpu_s: ``RLIMIT_CPU`` soft limit in seconds per process (SIGXCPU, then SIGKILL one second
            later); ``None`` means ``ceil(timeout_s) + 1``.
        memory_mb: ``RLIMIT_AS`` (virtual address space) per process, in MiB. The Python
            bootstrap needs about 50 MiB to start; below that runs raise SandboxInfraError.
        max_processes: Tasks (processes *and threads*) the code may have at once, enforced by a
            pids cgroup where available and by ``RLIMIT_NPROC`` (which Linux ignores for root).
        max_output_bytes: Cap on stdout and on stderr each; a program that writes more is killed
            and reported as ``"output_limit"`` with the first bytes kept.
        max_file_mb: ``RLIMIT_FSIZE``: largest file the code may write, in MiB.
        max_open_files: ``RLIMIT_NOFILE``.
        network: Allow network access (otherwise: empty network namespace plus, for Python, the
            audit hook refuses sockets other than Unix sockets inside the working directory).
            Unix sockets other than socket pairs are refused either way (see the launcher).
        allow_subprocess: Python only: allow fork/exec/subprocess (otherwise refused by a
            seccomp filter and the audit hook).
    """

    timeout_s: float = 5.0
    cpu_s: int | None = None
    memory_mb: int = 512
    max_processes: int = 16
    max_output_bytes: int = 65536
    max_file_mb: int = 16
    max_open_files: int = 64
    network: bool = False
    allow_subprocess: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.timeout_s, bool)
            or not isinstance(self.timeout_s, int | float)
            or not math.isfinite(self.timeout_s)
            or self.timeout_s <= 0
        ):
            raise ValueError(f"timeout_s must be a positive finite number, got {self.timeout_s!r}")
        if self.cpu_s is not None:
            _require_positive_int("cpu_s", self.cpu_s)
        for name in (
            "memory_mb",
            "max_processes",
            "max_output_bytes",
            "max_file_mb",
            "max_open_files",
        ):
            _require_positive_int(name, getattr(self, name))
        for name in ("network", "allow_subprocess"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def effective_cpu_s(self) -> int:
        """The CPU-time limit actually applied (``cpu_s`` or ``ceil(timeout_s) + 1``)."""
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


def _require_positive_int(name: str, value: object) -> None:
    # bool is an int subclass; SandboxLimits(memory_mb=True) is a bug, not "1 MiB".
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        status: ``"ok"`` (exit code 0), ``"error"`` (nonzero exit or uncaught exception),
            ``"timeout"``, ``"memory_limit"``, ``"cpu_limit"``, ``"output_limit"`` or ``"killed"``
            (died of another signal).
        returncode: Exit code, negative signal number, or ``None`` when the sandbox killed the
            program (timeout, output flood).
        stdout: Decoded stdout, at most ``max_output_bytes`` bytes of it; the private working
            directory's path is replaced by ``.`` so that results are reproducible.
        stderr: Same for stderr (tracebacks, SQL errors, sandbox refusals).
        duration_s: Wall-clock time of the run, for diagnostics only (never compare it).
        truncated: Whether stdout or stderr was cut at ``max_output_bytes``.
        detail: Deterministic one-line explanation of a non-ok status, e.g.
            ``"execution timed out after 2.0 s"``.
    """

    status: SandboxStatus
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    truncated: bool = False
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the program ran to completion with exit code 0."""
        return self.status == "ok"

    def describe(self) -> str:
        """Summarise the run for an agent or a log: stdout when ok, otherwise the error.

        Returns:
            Deterministic text (no timings, no private paths).
        """
        if self.ok:
            text = self.stdout if self.stdout else "(no output)"
            if self.stderr:
                text += f"\nstderr:\n{self.stderr}"
            return text
        parts = [f"Error: {self.detail or self.status}"]
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout}")
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr}")
        return "\n".join(parts)


class SandboxInfraError(ToolInfraError):
    """The sandbox itself could not run the code; the code is not to blame.

    Raised only on conditions the sandboxed code cannot produce itself (spawn failure, a launcher
    or bootstrap that did not reach the user's code, a broken ``setup_sql``), so that a policy
    cannot learn to dodge penalties by faking infrastructure failures. A
    :class:`~mtrl_gym.tools.ToolInfraError`, so raised from a tool, an evaluator or a reward
    function it ends the episode with status ``infra_error``.
    """
