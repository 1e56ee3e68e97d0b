"""Pluggable tool-call formats: how an agent writes tool calls in plain text, and how we read them.

A format is a parser / renderer pair. ``parse`` turns one assistant message into its prose and the
calls it contains; ``render_calls`` writes calls the way the format expects (for few-shot examples,
SFT data and tests); ``render_result`` says how a tool's output reads in a plain-text observation;
``tools_prompt`` writes the system-prompt section that lists the tools and teaches the format.

Three formats ship with the package and can be looked up by name with :func:`get_format`:

* ``hermes`` (default): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, as
  Qwen and Hermes models are trained to write them; several per message.
* ``json``: the whole message (optionally in a ```` ```json ```` fence) is one call object or a
  list of them.
* ``react``: ``Thought:`` / ``Action:`` / ``Action Input:`` lines, one call per message.

Parsing is built for untrusted model output: ``parse`` never raises, runs in roughly linear time
on adversarial text, and reports malformed calls (with ``error`` set) instead of dropping them so
that the environment can tell the agent what went wrong and count it.

Non-goals: executing calls, checking names against the tool set or validating arguments against
their schemas (the environment does that), extracting final answers (``<final_output>`` blocks are
left in ``content`` for the environment), and native tool-call APIs that return structured calls.

Layout: :mod:`~mtrl_gym.formats.base` holds the :class:`ToolCallFormat` contract, the registry and
the helpers the formats share; :mod:`~mtrl_gym.formats.decoding` the never-raising JSON decoding;
:mod:`~mtrl_gym.formats.hermes`, :mod:`~mtrl_gym.formats.json_format` and
:mod:`~mtrl_gym.formats.react` one built-in format each. Importing this package registers the
built-in formats.
"""

from __future__ import annotations

from mtrl_gym.formats.base import ToolCallFormat, available_formats, get_format, register_format
from mtrl_gym.formats.decoding import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from mtrl_gym.formats.hermes import HermesFormat
from mtrl_gym.formats.json_format import JsonFormat
from mtrl_gym.formats.react import ReActFormat

__all__ = [
    "HermesFormat",
    "JsonFormat",
    "ReActFormat",
    "ToolCallFormat",
    "available_formats",
    "get_format",
    "register_format",
]

for _builtin in (HermesFormat, JsonFormat, ReActFormat):
    register_format(_builtin)
