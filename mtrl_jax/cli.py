"""The ``mtrl`` command: one entry point for the project's jobs.

Subcommands::

    mtrl envs                                   list the registered environments
    mtrl play ID [--agent oracle] ...           play the oracle or a random agent
    mtrl sop-bench --data DIR --agent ...       SOP-Bench with a scripted agent (evaluation only)
    mtrl train [CONFIG] [key=value ...] [--no-progress] [--resume | --fresh]
    mtrl sft [CONFIG] [key=value ...] [--no-progress] [--resume | --fresh]
    mtrl eval --model PATH --env ID [--split test] [--samples N] [--k K ...] [--temperature T]
              [--max-tasks N] [--max-new-tokens N] [--out DIR] [--mlflow-uri URI --experiment E]
    mtrl export RUN_DIR OUT

``CONFIG`` is a shipped config name (``quickstart``, ``quickstart_ppo``, ...) or a YAML path;
overrides are ``dotted.key=value`` (``mtrl_jax.config.load_config``). A model ``PATH`` is a
Hugging Face folder (``config.json``) or a training run folder (``checkpoints/``), whose newest
intact checkpoint is loaded onto the run's base model. ``--env sop-bench:DOMAIN_DIR`` evaluates
a SOP-Bench domain (evaluation only; never trainable).

``mtrl train`` and ``mtrl sft`` resume a run folder (``<out_dir>/<name>``) that holds a
checkpoint, and say so on their first line, only when the stored config differs from the
command's in keys safe to change (``steps``, ``eval.*``, ``tracking.*``, ...;
:mod:`mtrl_jax.resume`). Otherwise they stop with the differing keys and the ways out:
``--resume`` continues the run with its stored config (the safe keys still come from the
command), a new ``name=`` starts another run, ``--fresh`` renames the old folder to
``<name>.old-<timestamp>`` and starts over.

``mtrl eval`` samples greedily for one sample per task. With ``--samples > 1`` (or ``--k > 1``)
and no ``--temperature`` it samples at the run's ``sampler.temperature`` (a run folder), else
at 1.0, so pass@k measures distinct samples; an explicit ``--temperature 0`` there is warned
about. The report and the printed summary state the temperature used.

``mtrl train`` first calls :func:`mtrl_jax.distributed.initialize_from_env`: with the
``MTRL_COORDINATOR``/``MTRL_NUM_PROCESSES``/``MTRL_PROCESS_ID`` variables set, every process
runs the same command and the config's ``mesh`` counts the devices of all processes. (The
trainer itself still refuses to run in more than one process: its sampler and checkpointer are
single-process; ``python -m mtrl_jax.distributed train-step-check`` checks a cluster.)

Jobs that do work print their result as the last stdout line, in JSON. Bad input (an invalid
config, a missing folder, an evaluation-only environment named for training) is reported on one
stderr line with exit status 2. Each subcommand imports what it needs when it runs, so
``mtrl envs`` works without the JAX stack installed.

Non-goals: launching on clusters, hyper-parameter sweeps, comparing runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# ``--env`` / ``env.id`` prefix naming a SOP-Bench domain folder (evaluation only, never trained).
SOP_BENCH_PREFIX = "sop-bench:"


class UsageError(Exception):
    """Bad input to a subcommand; reported as one line on stderr, exit status 2."""


def _envs(argv: list[str]) -> Any:
    from mtrl_gym.cli import main

    return main(["list", *argv])


def _play(argv: list[str]) -> Any:
    from mtrl_gym.cli import main

    return main(["play", *argv])


def _sop_bench(argv: list[str]) -> Any:
    from mtrl_envs.sop_bench.cli import main

    return main(argv)


def _emit(result: dict[str, Any]) -> dict[str, Any]:
    """Prints ``result`` as the final JSON line and returns it."""
    print(json.dumps(result, sort_keys=False), flush=True)
    return result


# --- train / sft -------------------------------------------------------------------------------


def _config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "args",
        nargs="*",
        metavar="[CONFIG] [key=value ...]",
        help="shipped config name or YAML path (default: quickstart), then overrides",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    folder = p.add_mutually_exclusive_group()
    folder.add_argument(
        "--resume",
        action="store_true",
        help="continue the run folder's checkpoint with its stored config even where this "
        "command's config differs (keys safe to change, like steps, still come from it)",
    )
    folder.add_argument(
        "--fresh",
        action="store_true",
        help="move an existing run folder aside to <name>.old-<timestamp> and start a new run",
    )
    return p


# How a refused resume is left, in the CLI's words (see mtrl_jax.resume.ConfigMismatchError;
# {run_dir} is the run folder).
CLI_WAYS_OUT = (
    "add --resume to continue it with its stored config, pass name=<another name> for a new "
    "run, or add --fresh to move it aside (to {run_dir}.old-<timestamp>) and start over"
)


def _make_trainer(cfg: Any, args: argparse.Namespace) -> Any:
    """The trainer of ``cfg``, resuming its run folder as ``--resume``/``--fresh`` say."""
    from mtrl_jax.resume import ConfigMismatchError
    from mtrl_jax.trainer import Trainer

    mode = "stored" if args.resume else "fresh" if args.fresh else "check"
    try:
        return Trainer(cfg, progress=not args.no_progress, resume=mode)
    except ConfigMismatchError as err:
        raise UsageError(err.message(CLI_WAYS_OUT)) from None


def _parse_config_args(prog: str, description: str, argv: list[str]) -> argparse.Namespace:
    """Options may come before, between or after the config and its overrides."""
    return _config_parser(prog, description).parse_intermixed_args(argv)


def _load_run_config(args: Sequence[str]) -> Any:
    """``[CONFIG] [key=value ...]`` -> validated ``RunConfig`` (ConfigError on bad input)."""
    from mtrl_jax.config import ConfigError, load_config

    rest = list(args)
    source = rest.pop(0) if rest and "=" not in rest[0] else "quickstart"
    stray = [a for a in rest if "=" not in a]
    if stray:
        raise ConfigError(f"expected key=value overrides after the config, got {stray[0]!r}")
    return load_config(source, rest)


def _success(summary: dict[str, Any] | None) -> float | None:
    return None if summary is None else summary.get("success_rate")


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # None: every episode an infra failure


def _refuse_eval_only(env_id: str) -> None:
    """Refuses a ``sop-bench:DIR`` id before anything is built.

    Such ids are not Gymnasium ids (only ``mtrl eval`` and ``mtrl sop-bench`` open them), so
    without this the trainer would stop on Gymnasium's "Malformed environment ID" instead of
    saying why SOP-Bench can never be trained on.

    Raises:
        EvalOnlyError: ``env_id`` names a SOP-Bench domain.
    """
    if not env_id.startswith(SOP_BENCH_PREFIX):
        return
    from mtrl_envs.sop_bench import EVAL_ONLY_REASON, LICENCE_NOTICE
    from mtrl_gym import EvalOnlyError

    raise EvalOnlyError(
        f"env.id {env_id!r} is evaluation-only and cannot be used for training: "
        f"{EVAL_ONLY_REASON}. {LICENCE_NOTICE} Evaluate it with `mtrl eval --env {env_id}` "
        "or `mtrl sop-bench`."
    )


def _train(argv: list[str]) -> dict[str, Any]:
    args = _parse_config_args("mtrl train", "RL training of one run config", argv)
    from mtrl_jax.distributed import initialize_from_env

    # Before any device is touched: with MTRL_COORDINATOR etc. set, jax.devices() (and hence
    # the config's mesh) spans every process; unset, this does nothing.
    try:
        initialize_from_env()
    except ValueError as err:  # malformed MTRL_* variables: bad input, one line
        raise UsageError(str(err)) from None
    cfg = _load_run_config(args.args)
    _refuse_eval_only(cfg.env.id)
    out = _make_trainer(cfg, args).run()
    before, after = _success(out["before"]), _success(out["after"])
    shown = "n/a (resumed)" if out["before"] is None else _rate(before)
    print(f"held-out success before: {shown}  after: {_rate(after)}  ({out['steps']} steps)")
    return _emit(
        {"before": before, "after": after, "steps": out["steps"], "run_dir": out["run_dir"]}
    )


def _sft(argv: list[str]) -> dict[str, Any]:
    args = _parse_config_args("mtrl sft", "supervised warm start only", argv)
    cfg = _load_run_config(args.args)
    _refuse_eval_only(cfg.env.id)
    if cfg.sft.steps < 1:
        raise UsageError("sft.steps is 0: nothing to do; set sft.steps=N (N >= 1)")
    trainer = _make_trainer(cfg, args)
    try:
        history = trainer.warm_start()  # writes <run>/warm_start
        out = trainer.run_dir / "warm_start"
    except BaseException:
        trainer.tracker.close("FAILED")
        raise
    trainer.tracker.close("FINISHED")
    loss = history[-1]["sft/loss"]
    print(f"wrote the warm-started model to {out} (final loss {loss:.4f})")
    return _emit({"model": str(out), "loss": loss, "steps": len(history)})


# --- loading a model: HF folder or run folder --------------------------------------------------


def _checkpoint_config(checkpointer: Any) -> Any:
    """The ``RunConfig`` stored in the newest checkpoint whose meta reads back."""
    from mtrl_jax.checkpoint import CheckpointError
    from mtrl_jax.config import ConfigError, RunConfig, from_dict

    try:  # meta only: the full restore verifies every file and the meta checksum
        found = checkpointer.latest_meta()
    except CheckpointError as err:
        raise UsageError(f"{checkpointer.directory}: {err}") from None
    if found is None:
        raise UsageError(f"{checkpointer.directory}: no complete checkpoint")
    step, meta = found
    try:
        return from_dict(RunConfig, meta["config"])
    except (KeyError, ConfigError) as err:
        where = checkpointer.step_dir(step)
        raise UsageError(f"{where}: no readable run config in its meta ({err})") from None


def load_model(path: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """Loads a model for evaluation or export.

    Args:
        path: A Hugging Face folder (``config.json``), or a training run folder holding
            ``checkpoints/``: its config comes from the checkpoint, the weights from its newest
            intact checkpoint (a corrupt one is skipped with a warning), the architecture and
            tokenizer from its base model (``<run>/base_model``, else the config's
            ``model.path``).

    Returns:
        ``(decoder, tokenizer, info)``; ``info`` says what was loaded (for reports).

    Raises:
        UsageError: ``path`` is neither kind of folder, or it has no usable checkpoint.
    """
    from mtrl_jax.models import load_pretrained, load_tokenizer

    path = Path(path)
    if (path / "config.json").is_file():
        info = {"model": str(path), "source": "hf", "base_model": str(path)}
        return load_pretrained(path), load_tokenizer(path), info
    if not (path / "checkpoints").is_dir():
        raise UsageError(
            f"{path}: neither a Hugging Face model folder (config.json) nor a run folder "
            "(checkpoints/)"
        )
    from flax import nnx

    from mtrl_jax.checkpoint import Checkpointer, CheckpointError
    from mtrl_jax.train_step import init_train_state

    checkpointer = Checkpointer(path / "checkpoints")
    if not checkpointer.steps():
        raise UsageError(f"{path / 'checkpoints'}: no complete checkpoint")
    cfg = _checkpoint_config(checkpointer)
    base = path / "base_model"
    if not (base / "config.json").is_file():
        if cfg.model.path is None:
            raise UsageError(f"{path}: no base_model/ folder and the run's model.path is null")
        base = Path(cfg.model.path)
    model = load_pretrained(base, dtype=cfg.model.dtype)
    graphdef, target = init_train_state(model, cfg.train)
    try:
        found = checkpointer.restore_latest(target)
    except CheckpointError as err:
        raise UsageError(str(err).splitlines()[0]) from err
    assert found is not None  # steps() was not empty
    state, meta, step = found
    model = nnx.merge(graphdef, state.params, state.rest)
    info = {
        "model": str(path),
        "source": "checkpoint",
        "base_model": str(base),
        "checkpoint_step": step,
        "policy_version": meta.get("policy_version"),
    }
    return model, load_tokenizer(base), info


# --- eval ---------------------------------------------------------------------------------------


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtrl eval", description="evaluate a model on an env split")
    p.add_argument("--model", required=True, help="HF model folder or training run folder")
    p.add_argument(
        "--env",
        required=True,
        help=f"registered id, env server URL, or {SOP_BENCH_PREFIX}DOMAIN_DIR (evaluation only)",
    )
    p.add_argument("--split", default=None, help="task split (default: test; none for SOP-Bench)")
    p.add_argument("--env-kwargs", default="{}", help="JSON of extra environment arguments")
    p.add_argument("--samples", type=int, default=1, help="episodes per task (n of pass@k)")
    p.add_argument("--k", type=int, action="append", default=None, help="pass@k (repeatable)")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0: greedy (default with one sample per task); with several samples the default "
        "is the run's sampler.temperature (a run folder), else 1.0",
    )
    p.add_argument("--max-tasks", type=int, default=None, help="first N tasks (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per assistant turn")
    p.add_argument("--max-len", type=int, default=1024, help="longest episode context")
    p.add_argument("--num-slots", type=int, default=16, help="concurrent sequences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="report folder")
    p.add_argument("--mlflow-uri", default=None, help="log metrics and the report to MLflow")
    p.add_argument("--experiment", default="mtrl-eval", help="MLflow experiment")
    return p


def eval_temperature(
    requested: float | None, samples: int, ks: Sequence[int], run_temperature: float | None
) -> tuple[float, str]:
    """The evaluation's sampling temperature and where it came from.

    Greedy decoding gives every sample of a task the same episode, so pass@k of several
    samples would silently equal pass@1: several samples default to sampling.

    Args:
        requested: ``--temperature``, or None when not given.
        samples: ``--samples`` (episodes per task).
        ks: the ``--k`` values of pass@k.
        run_temperature: the run folder's ``sampler.temperature`` (None: not a run folder).

    Returns:
        ``(temperature, source)``; ``source`` is said in the report.

    >>> eval_temperature(None, 1, [1], 0.7)
    (0.0, 'greedy: one sample per task')
    >>> eval_temperature(None, 8, [1, 8], 0.7)
    (0.7, "the run's sampler.temperature")
    >>> eval_temperature(None, 8, [1, 8], None)
    (1.0, 'default for several samples per task')
    """
    if requested is not None:
        return requested, "--temperature"
    if samples <= 1 and max(ks, default=1) <= 1:
        return 0.0, "greedy: one sample per task"
    if run_temperature is not None:
        return run_temperature, "the run's sampler.temperature"
    return 1.0, "default for several samples per task"


def identical_samples_warning(temperature: float, samples: int, ks: Sequence[int]) -> str | None:
    """A warning when greedy decoding makes a task's several samples identical, else None.

    >>> identical_samples_warning(0.0, 1, [1]) is None
    True
    """
    if temperature != 0.0 or (samples <= 1 and max(ks, default=1) <= 1):
        return None
    return (
        f"WARNING: temperature 0 is greedy: the {samples} samples of each task are identical, "
        f"so pass@k (k={','.join(map(str, ks))}) equals pass@1; leave out --temperature to "
        "sample (at a run folder's sampler.temperature, else 1.0) or pass one > 0"
    )


def _run_temperature(model: str | Path) -> float | None:
    """The ``sampler.temperature`` of a run folder's stored config; None for an HF folder."""
    path = Path(model)
    if (path / "config.json").is_file() or not (path / "checkpoints").is_dir():
        return None  # load_model reads an HF folder first, and refuses anything else
    from mtrl_jax.checkpoint import Checkpointer

    return _checkpoint_config(Checkpointer(path / "checkpoints")).sampler.temperature


def _eval_env(args: argparse.Namespace) -> tuple[Callable[[], Any], str | None]:
    """The evaluation environment's factory and the split it plays."""
    try:
        kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as err:
        raise UsageError(f"--env-kwargs is not JSON: {err}") from err
    if not isinstance(kwargs, dict):
        raise UsageError(f"--env-kwargs must be a JSON object, got {args.env_kwargs!r}")
    if args.env.startswith(SOP_BENCH_PREFIX):
        import functools

        from mtrl_envs.sop_bench import LICENCE_NOTICE, SopBenchEnv

        domain = Path(args.env[len(SOP_BENCH_PREFIX) :])
        if not domain.is_dir():
            raise UsageError(f"{domain}: SOP-Bench domain folder not found")
        print(f"NOTICE: {LICENCE_NOTICE}", file=sys.stderr)
        return functools.partial(SopBenchEnv, domain, split=args.split, **kwargs), args.split
    import gymnasium as gym

    from mtrl_jax.tasks import env_factory

    split = args.split if args.split is not None else "test"
    try:
        return env_factory(args.env, split=split, kwargs=kwargs), split
    except gym.error.Error as err:
        raise UsageError(f"--env {args.env}: {err}") from err


def _scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's numeric headline fields and pass@k as ``eval/*`` metrics."""
    out = {
        f"eval/{k}": float(v)
        for k, v in summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    for k, entry in summary.get("pass_at_k", {}).items():
        if entry.get("value") is not None:
            out[f"eval/pass_at_{k}"] = float(entry["value"])
    return out


def _eval(argv: list[str]) -> dict[str, Any]:
    args = _eval_parser().parse_args(argv)
    ks = tuple(sorted(set(args.k or [1])))
    if args.samples < 1 or min(ks) < 1 or max(ks) > args.samples:
        raise UsageError(f"need --samples >= 1 and every --k in 1..{args.samples}, got {ks}")
    make_env, split = _eval_env(args)
    temperature, source = eval_temperature(
        args.temperature, args.samples, ks, _run_temperature(args.model)
    )
    warning = identical_samples_warning(temperature, args.samples, ks)
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
    model, tokenizer, info = load_model(args.model)
    from mtrl_jax.eval_job import EvalSettings, Evaluator
    from mtrl_jax.evaluation import format_summary, write_report
    from mtrl_jax.tasks import count_tasks

    settings = EvalSettings(
        max_tasks=args.max_tasks,
        samples_per_task=args.samples,
        temperature=temperature,
        pass_k=ks,
        max_new_tokens=args.max_new_tokens,
        num_slots=args.num_slots,
        max_len=args.max_len,
        seed=args.seed,
    )
    try:
        evaluator = Evaluator(make_env, count_tasks(make_env), tokenizer, model, settings)
    except ValueError as err:  # e.g. an env that does not list its tasks and no --max-tasks
        raise UsageError(str(err)) from err
    n = len(evaluator.tasks)
    print(
        f"playing {n} tasks x {args.samples} samples on {args.env} at temperature "
        f"{temperature:g} ({source})",
        file=sys.stderr,
    )
    summary, records = evaluator.run(model)
    # In summary.json too, under a section of its own (not a headline metric).
    summary["sampling"] = {"temperature": temperature, "temperature_source": source}
    env_name = args.env.rstrip("/").replace(":", "_").replace("/", "_")
    out = args.out or Path("runs") / "eval" / f"{Path(args.model).name}-{env_name}-{split}"
    meta = {
        **info,
        "env": args.env,
        "split": split,
        "samples_per_task": args.samples,
        "temperature": temperature,
        "temperature_source": source,
        "max_new_tokens": args.max_new_tokens,
    }
    paths = write_report(summary, records, out, title=f"Evaluation on {args.env}", meta=meta)
    print(format_summary(summary))
    print(f"temperature: {temperature:g} ({source})")
    result = {"success_rate": summary.get("success_rate"), "episodes": summary["episodes"]}
    result |= {"temperature": temperature, "out": str(out)}
    if args.mlflow_uri:
        from mtrl_jax.tracking import make_tracker

        with make_tracker(
            True,
            tracking_uri=args.mlflow_uri,
            experiment=args.experiment,
            run_name=f"eval-{env_name}",
            run_dir=out,
            log_trajectories=False,
        ) as tracker:
            tracker.log_params({k: str(v) for k, v in meta.items()})
            tracker.log_metrics(_scalars(summary), step=0)
            for file in paths.values():
                tracker.log_artifact(file, artifact_path="report")
            result["mlflow_run_id"] = tracker.run_id
    return _emit(result)


# --- export -------------------------------------------------------------------------------------


def _export(argv: list[str]) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="mtrl export", description="a run's weights as an HF folder")
    p.add_argument("run_dir", type=Path, help="training run folder (with checkpoints/)")
    p.add_argument("out", type=Path, help="HF folder to write (transformers loads it)")
    args = p.parse_args(argv)
    if not (args.run_dir / "checkpoints").is_dir():
        raise UsageError(f"{args.run_dir}: not a run folder (no checkpoints/)")
    model, tokenizer, info = load_model(args.run_dir)
    from mtrl_jax.models import save_pretrained

    save_pretrained(model, args.out)
    tokenizer.save_pretrained(str(args.out))
    generation = Path(info["base_model"]) / "generation_config.json"
    if generation.is_file():  # the stop tokens transformers' generate() should use
        shutil.copy(generation, args.out / "generation_config.json")
    print(f"wrote {args.out} from checkpoint step {info['checkpoint_step']}")
    return _emit({"out": str(args.out), "checkpoint_step": info["checkpoint_step"]})


# --- dispatch -----------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[Callable[[list[str]], Any], str]] = {
    "envs": (_envs, "list the registered environments"),
    "play": (_play, "play the oracle or a random agent on an environment"),
    "sop-bench": (_sop_bench, "evaluate on SOP-Bench domains (evaluation only)"),
    "train": (_train, "RL training: mtrl train [CONFIG] [key=value ...]"),
    "sft": (_sft, "supervised warm start only, exported as an HF folder"),
    "eval": (_eval, "evaluate an HF folder or a run's checkpoint on an environment"),
    "export": (_export, "write a run's newest checkpoint as an HF folder"),
}


def _run_checked(command: Callable[[list[str]], Any], name: str, argv: list[str]) -> Any:
    """Runs a subcommand; bad input becomes one stderr line and exit status 2."""
    bad_input: tuple[type[BaseException], ...] = (UsageError,)
    if name in ("train", "sft", "eval", "export"):
        from mtrl_gym import EvalOnlyError
        from mtrl_jax.config import ConfigError

        bad_input += (ConfigError, EvalOnlyError)
    try:
        return command(argv)
    except bad_input as err:
        print(f"mtrl {name}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


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
    return _run_checked(command, args[0], args[1:])


def _quiet_dependencies() -> None:
    """Silences advice from dependencies that means nothing to someone running a job.

    transformers says "PyTorch was not found..." when imported without torch: mtrl only uses
    its tokenizers and configs, so that is expected, not a problem. Errors still show.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def entry() -> None:
    """Console-script entry point (returns nothing, so the shell sees exit status 0)."""
    _quiet_dependencies()
    main()


if __name__ == "__main__":
    entry()
