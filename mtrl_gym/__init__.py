"""mtrl_gym: multi-turn text Gymnasium environments with tools, for training LLM agents.

Importing this package registers the built-in environments (``mtrl/<Name>-v<N>``), so
``gym.make("mtrl_gym:mtrl/OrderLookup-v0")`` works from a fresh interpreter. It never imports
JAX: environments are host-side Python that talk to the learner through plain data.
"""

from mtrl_gym.checker import ReproducibilityError, check_env, check_reproducible, play
from mtrl_gym.core import EvalOnlyError, TextEnv, ensure_trainable
from mtrl_gym.evaluation import (
    EpisodeSummary,
    ExactMatchEvaluator,
    ExactMatchReward,
    FinalAnswer,
    FormatReward,
    TagAnswerExtractor,
    ToolCallPenalty,
    WeightedSum,
)
from mtrl_gym.formats import ToolCallFormat, available_formats, get_format, register_format
from mtrl_gym.registration import register_builtin_envs, register_env, registered_env_ids
from mtrl_gym.replay import Recording, ReplayState, canonical_json, replay_tools
from mtrl_gym.resources import EpisodeResources
from mtrl_gym.runner import EpisodeJob, EpisodeResult, EpisodeRunner
from mtrl_gym.spaces import TextSpace
from mtrl_gym.tools import Tool, ToolError, ToolInfraError, tool
from mtrl_gym.types import EndedBy, EndEpisode, Role, Status, Task
from mtrl_gym.user_model import ModelUser, UserInfraError
from mtrl_gym.users import (
    RecordedUser,
    ScriptedUser,
    UserConversation,
    UserRecorder,
    UserRecording,
    UserReply,
    UserSimulator,
)

__version__ = "0.1.0"

__all__ = [
    "EpisodeJob",
    "EpisodeResources",
    "EpisodeResult",
    "EpisodeRunner",
    "EpisodeSummary",
    "EndEpisode",
    "EndedBy",
    "EvalOnlyError",
    "ExactMatchEvaluator",
    "ExactMatchReward",
    "FinalAnswer",
    "FormatReward",
    "ModelUser",
    "RecordedUser",
    "Recording",
    "ReplayState",
    "ReproducibilityError",
    "Role",
    "ScriptedUser",
    "Status",
    "TagAnswerExtractor",
    "Task",
    "TextEnv",
    "TextSpace",
    "Tool",
    "ToolCallFormat",
    "ToolCallPenalty",
    "ToolError",
    "ToolInfraError",
    "UserConversation",
    "UserInfraError",
    "UserRecorder",
    "UserRecording",
    "UserReply",
    "UserSimulator",
    "WeightedSum",
    "available_formats",
    "canonical_json",
    "check_env",
    "check_reproducible",
    "ensure_trainable",
    "get_format",
    "play",
    "register_builtin_envs",
    "register_env",
    "register_format",
    "registered_env_ids",
    "replay_tools",
    "tool",
]

register_builtin_envs()
