"""SOP-Bench evaluation adapter (evaluation only; see :mod:`mtrl_envs.sop_bench.adapter`)."""

from mtrl_envs.sop_bench.adapter import (
    EVAL_ONLY_REASON,
    LICENCE_NOTICE,
    DomainSource,
    SopBenchEnv,
    discover_domains,
    load_domain,
    run_benchmark,
)

__all__ = [
    "EVAL_ONLY_REASON",
    "LICENCE_NOTICE",
    "DomainSource",
    "SopBenchEnv",
    "discover_domains",
    "load_domain",
    "run_benchmark",
]
