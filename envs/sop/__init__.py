"""mtrl_envs.sop: one generic environment for any SOP suite folder (``sop-tool-behavior/1``).

A suite folder in the SOP-Bench layout (``sop.txt``, ``toolspecs.json``, ``metadata.json``, a task
CSV) plus a ``tool_behavior.json`` describing what each tool returns becomes a multi-turn tool-use
environment whose tools replay the CSV: :class:`SopSuite` loads and validates the folder,
:class:`SopEnv` serves it, the scoring functions implement SPEC.md's strict and SOP-Bench-compatible
rules, and :func:`suite_metrics` computes TSR, ECR, C-TSR and the tool-call success rate.

Layout: ``table`` (typed CSV, pandas semantics), ``spec`` and ``behavior`` (strict validation),
``engine`` (tool behaviour), ``suite`` (loading, presentation, tools), ``scoring``, ``oracle``,
``env``.

Non-goals: environment ids (registered centrally) and any SOP-Bench data: that data is licensed for
evaluation only and is never copied into this repository; callers pass a folder.
"""

from mtrl_envs.sop.env import SopEnv
from mtrl_envs.sop.oracle import OraclePolicy
from mtrl_envs.sop.scoring import (
    AnswerScore,
    SopEvaluator,
    SopReward,
    answer_fields,
    field_matches,
    is_null,
    macro_average,
    score_answer,
    suite_metrics,
)
from mtrl_envs.sop.spec import SopSpecError, UnsupportedSuiteError
from mtrl_envs.sop.suite import SopSuite, SopTool
from mtrl_envs.sop.table import Table, TableError

__all__ = [
    "AnswerScore",
    "OraclePolicy",
    "SopEnv",
    "SopEvaluator",
    "SopReward",
    "SopSpecError",
    "SopSuite",
    "SopTool",
    "Table",
    "TableError",
    "UnsupportedSuiteError",
    "answer_fields",
    "field_matches",
    "is_null",
    "macro_average",
    "score_answer",
    "suite_metrics",
]
