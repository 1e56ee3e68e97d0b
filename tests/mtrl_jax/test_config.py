"""Tests of the typed run configuration: strict parsing, overrides, YAML files and bases."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from mtrl_jax import config as C
from mtrl_jax.advantages import AdvantageConfig
from mtrl_jax.config import (
    AsyncConfig,
    ConfigError,
    EvalConfig,
    RunConfig,
    apply_overrides,
    dump_yaml,
    flatten,
    from_dict,
    list_configs,
    load_config,
    to_dict,
)
from mtrl_jax.rollout import RolloutConfig
from mtrl_jax.sampler.config import SamplerConfig


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- shipped configs -------------------------------------------------------------------------


def test_list_configs__names_every_shipped_yaml() -> None:
    names = list_configs()
    on_disk = sorted(p.stem for p in (Path(C.__file__).parent / "configs").glob("*.yaml"))
    assert names == on_disk
    expected = {"quickstart", "quickstart_ppo", "quickstart_is", "quickstart_rloo"}
    assert expected | {"quickstart_passk", "quickstart_async"} <= set(names)
    assert not (Path(C.__file__).parent / "configs" / "__init__.py").exists()


@pytest.mark.parametrize("name", list_configs())
def test_load_config__every_shipped_config_validates_and_round_trips(
    name: str, tmp_path: Path
) -> None:
    cfg = load_config(name)
    assert isinstance(cfg, RunConfig)
    assert cfg.name == name  # variants must not share a run dir with their base
    text = (C.CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    assert text.startswith("#"), "each shipped config opens with a comment saying what it is for"
    assert from_dict(RunConfig, to_dict(cfg)) == cfg
    assert load_config(_write(tmp_path / "dump.yaml", dump_yaml(cfg))) == cfg


def test_load_config__quickstart_values() -> None:
    cfg = load_config("quickstart")
    assert cfg.train.loss.policy_loss == "cispo"
    assert cfg.rollout.advantage.estimator == "grpo"
    assert (cfg.sft.steps, cfg.steps, cfg.env.tasks_per_step) == (900, 20, 8)
    assert (cfg.rollout.group_size, cfg.sampler.max_new_tokens, cfg.sampler.temperature) == (
        8,
        64,
        1.0,
    )
    assert cfg.model.path is None and cfg.env.id == "mtrl/SopQuickstart-v0"
    assert cfg.sft.learning_rate == 3e-3  # written `3e-3` in the file: a float, not a string
    assert (cfg.sft.answers, cfg.sft.altered_fraction, cfg.sft.recap) == ("confused", 0.7, False)
    assert cfg.sft.confused_pairs == (("refund", "credit"), ("sorry", "wait"))
    assert (cfg.packing.seq_len, cfg.packing.share_prefix, cfg.sft.seq_len) == (2048, 32, 1408)
    assert (cfg.train.loss.kl_coef, cfg.train.optimizer.learning_rate) == (0.1, 5e-4)
    assert cfg.run_dir == Path("runs") / "quickstart"


def test_load_config__variants_differ_from_quickstart_only_where_they_say() -> None:
    base = to_dict(load_config("quickstart"))
    changes = {
        "quickstart_ppo": {"train.loss.policy_loss": "ppo"},
        "quickstart_is": {"train.loss.policy_loss": "is"},
        "quickstart_rloo": {"rollout.advantage.estimator": "rloo"},
        "quickstart_passk": {
            "rollout.advantage.estimator": "pass_at_k",
            "rollout.advantage.k": 2,
            "eval.samples_per_task": 4,
            "eval.pass_k": [1, 2],
        },
        "quickstart_async": {"async.mode": "async"},
    }
    for name, expected in changes.items():
        flat_base, flat = _leaves(base), _leaves(to_dict(load_config(name)))
        diff = {k: v for k, v in flat.items() if flat_base[k] != v}
        assert diff == {"name": name, **expected}, name


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_leaves(value, name + "."))
        else:
            out[name] = value
    return out


def test_load_config__none_gives_defaults() -> None:
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.packing.seq_len == 1024 and cfg.async_ == AsyncConfig()


# --- strict parsing ----------------------------------------------------------------------------


def test_from_dict__nested_sections_and_type_conversions() -> None:
    cfg = from_dict(
        RunConfig,
        {
            "sampler": {"temperature": 0, "prefill_buckets": [8, 32]},  # int for float, list
            "rollout": {"stop_strings": ["</tool>"], "advantage": {"estimator": "rloo"}},
            "async": {"mode": "async", "max_staleness": 0},
            "env": {"kwargs": {"num_tasks": 5, "extra": (1, 2)}},
        },
    )
    assert cfg.sampler.temperature == 0.0 and type(cfg.sampler.temperature) is float
    assert cfg.sampler.prefill_buckets == (8, 32)
    assert cfg.rollout.stop_strings == ("</tool>",)
    assert cfg.rollout.advantage.estimator == "rloo"
    assert cfg.async_ == AsyncConfig(mode="async", max_staleness=0)
    assert cfg.env.kwargs == {"num_tasks": 5, "extra": [1, 2]}  # plain data: tuples -> lists
    assert cfg.train == RunConfig().train  # untouched sections keep their defaults


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"trainn": {}}, "trainn: unknown key in RunConfig; did you mean 'train'?"),
        (
            {"train": {"optimizer": {"learning_rat": 1.0}}},
            "train.optimizer.learning_rat: unknown key in OptimizerConfig; "
            "did you mean 'learning_rate'?",
        ),
        ({"async_": {}}, "async_: unknown key in RunConfig; did you mean 'async'?"),
        ({"sft": {"zzz": 1}}, "sft.zzz: unknown key in SFTConfig; valid keys: steps,"),
    ],
)
def test_from_dict__unknown_key_names_path_and_suggestion(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, data)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": "abc"}, "steps: expected int, got str 'abc'"),
        ({"env": {"tasks_per_step": 2.5}}, "env.tasks_per_step: expected int, got float 2.5"),
        ({"env": {"tasks_per_step": True}}, "env.tasks_per_step: expected int, got bool True"),
        ({"tracking": {"enabled": 1}}, "tracking.enabled: expected bool, got int 1"),
        ({"tracking": {"enabled": "true"}}, "tracking.enabled: expected bool, got str 'true'"),
        ({"tracking": {"experiment": None}}, "tracking.experiment: expected str, got null"),
        (
            {"model": {"dtype": "fp16"}},
            "model.dtype: expected one of 'float32', 'bfloat16', got str 'fp16'",
        ),
        ({"model": {"path": ["a"]}}, "model.path: expected str | null, got list ['a']"),
        ({"eval": {"pass_k": [1, "two"]}}, "eval.pass_k[1]: expected int, got str 'two'"),
        ({"eval": {"pass_k": 1}}, "eval.pass_k: expected tuple[int, ...], got int 1"),
        ({"sampler": {"top_p": "high"}}, "sampler.top_p: expected float, got str 'high'"),
        ({"env": {"kwargs": [1]}}, "env.kwargs: expected mapping, got list [1]"),
        ({"rollout": 3}, "rollout: expected mapping (RolloutConfig), got int 3"),
    ],
)
def test_from_dict__wrong_type_names_path_expected_and_got(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, data)
    assert str(info.value) == message


def test_from_dict__literal_does_not_accept_equal_values_of_another_type() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Choice:
        value: Literal[1, "a"] = 1

    assert from_dict(Choice, {"value": "a"}).value == "a"
    with pytest.raises(ConfigError, match="value: expected one of 1, 'a', got bool True"):
        from_dict(Choice, {"value": True})  # True == 1, but it is not the integer 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.group_size=0"], "rollout: group_size, max_new_tokens and max_steps must be"),
        (["async.max_staleness=-1"], "async: max_staleness must be >= 0, got -1"),
        (["train.loss.policy_loss=cispoo"], "train.loss: unknown policy loss 'cispoo'"),
        (["eval.pass_k=[1,4]"], "eval: pass_k values must be <= samples_per_task (1)"),
        (["sft.demo_source=trajectories"], "sft: demo_source 'trajectories' needs trajectories"),
        (["packing.seq_len=1"], "packing.seq_len: must be >= 2"),
        (["engine.max_len=64"], "engine.max_len (64) must be >= max(sampler.max_new_tokens"),
        (["env.kwargs={split: dev}"], "env: kwargs must not set 'split'"),
        (["name=a/b"], "name: must be one folder name"),
        (["train.num_micro_batches=3"], "packing.rows_multiple (8) must be a multiple of"),
        (
            ["train.minibatches=4"],
            "packing.rows_multiple (8) must be a multiple of train.num_micro_batches * "
            "train.minibatches (16)",
        ),
        (["train.epochs=0"], "train: epochs and minibatches must be >= 1"),
        (["mesh.train.fsdp=0"], "mesh.train: mesh axis 'fsdp' must be a positive int, got 0"),
        (["mesh.sampler=remote"], "mesh.sampler: expected one of 'colocated', 'disjoint'"),
        (["mesh.sampler_mesh.data=2"], "mesh: sampler_mesh is only used with sampler: disjoint"),
        (["mesh.train.data=3"], "packing.rows_multiple (8) must be a multiple of mesh.train.data"),
        (
            ["rollout.advantage.estimator=pass_at_k", "rollout.advantage.k=9"],
            "rollout: advantage.k (9) must be <= group_size (8) for the pass_at_k estimator",
        ),
        (
            ["rollout.overlong.mode=penalty", "rollout.overlong.buffer=64"],
            "rollout.overlong: mode penalty needs max_tokens",
        ),
        (
            ["rollout.overlong.mode=mask", "rollout.overlong.buffer=64"],
            "rollout.overlong: buffer is only used with mode penalty",
        ),
        (["rollout.overlong.mode=soft"], "rollout.overlong.mode: expected one of 'none'"),
        (
            ["train.loss.aggregation=seq-mean-token-sum-norm"],
            "train.loss: aggregation seq-mean-token-sum-norm needs norm_tokens",
        ),
        (["train.loss.norm_tokens=64"], "train.loss: norm_tokens is only used with aggregation"),
    ],
)
def test_load_config__post_init_violation_names_section(overrides: list, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("quickstart", overrides)
    assert str(info.value).startswith(message), str(info.value)


def test_load_config__mesh_section_counts_training_and_sampler_devices() -> None:
    assert RunConfig().mesh.single_device and RunConfig().mesh.num_devices == 1
    colocated = load_config("quickstart", ["mesh.train={fsdp: 4, tensor: 2}"]).mesh
    assert not colocated.single_device and colocated.num_devices == 8
    disjoint = load_config(
        "quickstart",
        ["mesh.train.fsdp=2", "mesh.sampler=disjoint", "mesh.sampler_mesh={data: 2, tensor: 3}"],
    ).mesh
    assert (disjoint.train.fsdp, disjoint.sampler_mesh.tensor) == (2, 3)
    assert not disjoint.single_device and disjoint.num_devices == 2 + 6
    # One training device and one sampling device is a mesh too (two devices, not one).
    assert not load_config(None, ["mesh.sampler=disjoint"]).mesh.single_device


def test_from_dict__missing_required_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^packing\.seq_len: missing required key"):
        from_dict(RunConfig, {"packing": {"rows_multiple": 2}})


def test_from_dict__top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="RunConfig: expected a mapping"):
        from_dict(RunConfig, [1, 2])  # type: ignore[arg-type]


def test_from_dict__accepts_float_strings_only_for_float_fields() -> None:
    # Plain yaml.safe_load (YAML 1.1) reads `1e-4` as a string.
    data = yaml.safe_load("train: {optimizer: {learning_rate: 1e-4}}\nsteps: 1e3")
    assert data["train"]["optimizer"]["learning_rate"] == "1e-4"
    with pytest.raises(ConfigError, match="steps: expected int, got str '1e3'"):
        from_dict(RunConfig, data)
    del data["steps"]
    assert from_dict(RunConfig, data).train.optimizer.learning_rate == 1e-4
    with pytest.raises(ConfigError, match="expected float, got str 'nan'"):
        from_dict(SamplerConfig, {"top_p": "nan"})


# --- YAML dialect ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-4", 1e-4),
        ("1E+3", 1000.0),
        ("-2.5e3", -2500.0),
        ("1.0e4", 1e4),
        (".5", 0.5),
        ("3", 3),
        ("true", True),
        ("yes", "yes"),  # YAML 1.2: only true/false are booleans
        ("off", "off"),
        ("null", None),
        ("cispo", "cispo"),
        ("[1, 2]", [1, 2]),
    ],
)
def test_parse_yaml__scalars_follow_yaml_1_2(text: str, value: Any) -> None:
    parsed = C.parse_yaml(text)
    assert parsed == value and type(parsed) is type(value)


def test_dump_yaml__quotes_strings_that_would_read_back_as_other_types(tmp_path: Path) -> None:
    cfg = load_config(None, ["name='1e-4'", "tracking.experiment=yes", "env.kwargs={a: '3'}"])
    text = dump_yaml(cfg)
    assert load_config(_write(tmp_path / "c.yaml", text)) == cfg
    assert cfg.name == "1e-4" and cfg.env.kwargs == {"a": "3"}
    assert yaml.safe_load(text)["tracking"]["experiment"] == "yes"  # plain loaders agree


def test_from_dict__number_for_a_string_field_suggests_quoting() -> None:
    with pytest.raises(
        ConfigError, match=r"^tracking.run_name: expected str \| null, got int 2024 "
    ):
        load_config(None, ["tracking.run_name=2024"])
    with pytest.raises(ConfigError, match="quote it"):
        load_config(None, ["tracking.run_name=2024"])


# --- overrides -------------------------------------------------------------------------------


def test_apply_overrides__sets_nested_keys_with_yaml_values() -> None:
    data = {"train": {"chunk_size": 8}, "steps": 1}
    out = apply_overrides(
        data,
        [
            "steps=3",
            "train.optimizer.learning_rate=1e-4",
            "async.mode=async",
            "model.path=null",
            "eval.pass_k=[1,2]",
            " tracking.enabled = false",
            "name=a=b",  # only the first '=' splits
        ],
    )
    assert out == {
        "train": {"chunk_size": 8, "optimizer": {"learning_rate": 1e-4}},
        "steps": 3,
        "async": {"mode": "async"},
        "model": {"path": None},
        "eval": {"pass_k": [1, 2]},
        "tracking": {"enabled": False},
        "name": "a=b",
    }
    assert data == {"train": {"chunk_size": 8}, "steps": 1}  # the input is not modified


def test_load_config__overrides_apply_after_the_file() -> None:
    cfg = load_config(
        "quickstart",
        ["async.mode=async", "train.optimizer.learning_rate=1e-4", "rollout.group_size=4"],
    )
    assert cfg.async_.mode == "async"
    assert cfg.train.optimizer.learning_rate == pytest.approx(1e-4, rel=0, abs=0)
    assert cfg.rollout.group_size == 4
    assert cfg.train.loss.policy_loss == "cispo"  # the rest of the file still applies


@pytest.mark.parametrize("override", ["steps", "=3", ".a=1", "a..b=1", "a.=1", "  =x"])
def test_apply_overrides__malformed_override_is_an_error(override: str) -> None:
    with pytest.raises(ConfigError, match="bad override"):
        apply_overrides({}, [override])


def test_apply_overrides__parent_that_is_not_a_section_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"steps is int 10, not a section"):
        apply_overrides({"steps": 10}, ["steps.x=1"])


def test_load_config__misspelt_override_gets_a_suggestion() -> None:
    with pytest.raises(
        ConfigError, match=r"^asynk: unknown key in RunConfig; did you mean 'async'"
    ):
        load_config("quickstart", ["asynk.mode=async"])


def test_apply_overrides__invalid_yaml_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        apply_overrides({}, ["eval.pass_k=[1, 2"])


# --- files and bases -------------------------------------------------------------------------


def test_load_config__base_is_deep_merged(tmp_path: Path) -> None:
    _write(
        tmp_path / "parent.yaml",
        "steps: 5\ntrain:\n  loss: {policy_loss: ppo, clip_high: 0.3}\n  chunk_size: 64\n",
    )
    _write(tmp_path / "child.yaml", "base: parent.yaml\ntrain:\n  loss: {clip_high: 0.28}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.steps == 5 and cfg.train.chunk_size == 64
    assert (cfg.train.loss.policy_loss, cfg.train.loss.clip_high) == ("ppo", 0.28)


def test_load_config__base_may_name_a_shipped_config(tmp_path: Path) -> None:
    path = _write(tmp_path / "mine.yaml", "base: quickstart\nname: mine\nsteps: 2\n")
    cfg = load_config(str(path))
    assert cfg == dataclasses.replace(load_config("quickstart"), name="mine", steps=2)


def test_load_config__base_cycle_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: ./a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle in 'base': .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle in 'base'"):
        load_config(tmp_path / "self.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1\n- 2\n", "the top level must be a mapping, got list"),
        ("steps: [1\n", "invalid YAML"),
        ("steps: 1\nsteps: 2\n", "duplicate key 'steps'"),
        ("base: 3\n", "'base' must be a config name or path"),
        ("base: missing.yaml\n", "config file not found"),
    ],
)
def test_load_config__bad_files_are_config_errors_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert "bad.yaml" in str(info.value) or "missing.yaml" in str(info.value)


def test_load_config__empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path / "empty.yaml", "# nothing\n")) == RunConfig()


def test_load_config__unknown_name_suggests_a_shipped_one() -> None:
    with pytest.raises(ConfigError, match="unknown config 'quickstrat'; did you mean 'quickstart'"):
        load_config("quickstrat")


# --- to_dict / flatten ---------------------------------------------------------------------


def test_to_dict__uses_yaml_keys_and_plain_data() -> None:
    data = to_dict(RunConfig())
    assert "async" in data and "async_" not in data
    assert data["sampler"]["prefill_buckets"] == [16, 64, 256]
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # only plain YAML types


def test_flatten__gives_dotted_string_params() -> None:
    cfg = load_config("quickstart_passk", ["env.kwargs={num_tasks: 3}"])
    flat = flatten(cfg)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in flat.items())
    assert flat["train.loss.policy_loss"] == "cispo"
    assert flat["rollout.advantage.k"] == "2"
    assert flat["async.mode"] == "sync"
    assert flat["eval.pass_k"] == "[1, 2]"
    assert flat["model.path"] == "null"
    assert flat["tracking.enabled"] == "true"
    assert flat["env.kwargs"] == '{"num_tasks": 3}'
    assert float(flat["train.optimizer.learning_rate"]) == 5e-4
    # one param per leaf of to_dict (env.kwargs counted as one)
    assert len(flat) == len(_leaves(to_dict(cfg))) - len(cfg.env.kwargs) + 1
    # Every param is valid override syntax: applying them all rebuilds the config.
    assert load_config(None, [f"{k}={v}" for k, v in flat.items()]) == cfg


def test_load_config__group_filtering_and_shaping_keys() -> None:
    cfg = load_config(
        "quickstart",
        [
            "rollout.advantage={estimator: best_minus_second, filter_groups: true}",
            "rollout.overlong={mode: penalty, max_tokens: 512, buffer: 128}",
            "train.loss.aggregation=seq-mean-token-sum-norm",
            "train.loss.norm_tokens=512",
        ],
    )
    advantage = cfg.rollout.advantage
    # best_minus_second's paper form is unscaled; the default is stored resolved, so a saved
    # config says what ran.
    assert advantage.filter_groups and advantage.scale_by_std is False
    assert not advantage.scales_by_std
    assert load_config("quickstart", []).rollout.advantage.scale_by_std is True  # grpo
    assert (cfg.rollout.overlong.mode, cfg.rollout.overlong.buffer) == ("penalty", 128)
    assert cfg.train.loss.norm_tokens == 512
    flat = flatten(cfg)
    assert flat["rollout.advantage.filter_groups"] == "true"
    assert flat["rollout.overlong.max_tokens"] == "512"
    assert load_config(None, [f"{k}={v}" for k, v in flat.items()]) == cfg
    # Off by default: no filter, no shaping, per-token mean.
    default = RunConfig()
    assert not default.rollout.advantage.filter_groups
    assert default.rollout.overlong.mode == "none" and default.train.loss.norm_tokens is None


def test_rollout_config__pass_at_k_larger_than_the_group_fails_where_configured() -> None:
    with pytest.raises(ValueError, match=r"advantage.k \(5\) must be <= group_size \(4\)"):
        RolloutConfig(group_size=4, advantage=AdvantageConfig(estimator="pass_at_k", k=5))
    RolloutConfig(group_size=4, advantage=AdvantageConfig(estimator="pass_at_k", k=4))
    RolloutConfig(group_size=4, advantage=AdvantageConfig(estimator="grpo", k=5))  # k unused


def test_eval_config__direct_construction_validates_too() -> None:
    with pytest.raises(ValueError, match="pass_k values must be <= samples_per_task"):
        EvalConfig(pass_k=(1, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        AsyncConfig(mode="threads")  # type: ignore[arg-type]
