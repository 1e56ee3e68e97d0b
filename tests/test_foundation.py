"""Checks on the project's foundation: module boundaries, packaging, the README's commands."""

import ast
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "mtrl_jax", "torch", "transformers", "mlflow")


def test_import__mtrl_gym_and_envs_never_import_jax():
    code = (
        "import sys, gymnasium as gym, mtrl_gym, mtrl_envs\n"
        "for env_id in mtrl_gym.registered_env_ids():\n"
        "    env = gym.make(env_id); env.reset(seed=0); env.close()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import__core_works_with_the_learner_stack_missing():
    # Simulates the minimal install (gymnasium, numpy, jsonschema): importing any heavy package
    # fails, and every built-in environment must still make, play and check.
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {HEAVY!r}:
                    raise ImportError(f'{{name}} is blocked in this test')
        sys.meta_path.insert(0, Block())
        import mtrl_gym
        for env_id in mtrl_gym.registered_env_ids():
            mtrl_gym.check_reproducible(env_id, seeds=(0,))
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_pyproject__core_dependencies_and_extras():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    names = {re.split(r"[<>=\[ ]", d)[0] for d in project["dependencies"]}
    assert names == {"gymnasium", "numpy", "jsonschema"}
    extras = project["optional-dependencies"]
    jax_names = {re.split(r"[<>=\[ ]", d)[0] for d in extras["jax"]}
    assert {
        "jax",
        "flax",
        "optax",
        "orbax-checkpoint",
        "transformers",
        "tokenizers",
        "safetensors",
        "mlflow",
    } <= jax_names
    assert any(d.startswith("jax[cuda12]") for d in extras["cuda12"])
    assert "torch==2.13.0" in extras["test"]
    assert project["requires-python"] == ">=3.11"


def test_pyproject__every_package_directory_is_installed():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(meta["tool"]["setuptools"]["packages"])
    roots = {"mtrl_gym": "mtrl_gym", "mtrl_jax": "mtrl_jax", "mtrl_envs": "envs"}  # name: folder
    found = set()
    for name, top in roots.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    # Data folders have no __init__.py; they are listed as namespace packages so that
    # setuptools installs them, and each must name the files it ships.
    data = set(meta["tool"]["setuptools"]["package-data"]) - found
    assert listed == found | data
    for pkg in data:
        top, *rest = pkg.split(".")
        folder = ROOT / roots[top] / Path(*rest)
        assert folder.is_dir() and not (folder / "__init__.py").exists(), pkg
        assert any(folder.iterdir()), pkg


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_readme__exactly_two_commands_and_ci_runs_the_test_one_verbatim():
    commands = _readme_commands()
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in [line.strip() for line in ci]


def _git_ignores(path: str) -> bool:
    """Whether ``git check-ignore`` says the repository ignores ``path`` (existing or not)."""
    try:
        done = subprocess.run(
            ["git", "check-ignore", "--quiet", "--no-index", path], cwd=ROOT, capture_output=True
        )
    except OSError as err:
        pytest.skip(f"git is not available: {err}")
    if done.returncode not in (0, 1):
        pytest.skip(f"git check-ignore failed: {done.stderr.decode().strip()}")
    return done.returncode == 0


def test_gitignore__ignores_what_the_readme_commands_write():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    written = re.findall(r"--out\s+([^\s`]+)", readme)
    written += re.findall(r"mtrl export\s+\S+\s+([^\s`]+)", readme)
    written = [w for w in written if not w.isupper()]  # placeholders such as DIR
    assert {"eval/", "exported/"} <= set(written)  # the README's eval and export examples
    # A folder output is ignored when a file in it is (git cannot tell a missing path's kind).
    missed = [
        w for w in [*written, "runs/"] if not any(map(_git_ignores, (w, f"{w.rstrip('/')}/x")))
    ]
    assert missed == [], "add these README command outputs to .gitignore"


def test_conftest__sop_bench_data_path_and_skip_reason_are_defined_once():
    # Tests that need the SOP-Bench data import SOP_BENCH_DATA / SOP_BENCH_MISSING from
    # tests/conftest.py, so every skip names the one folder they all read.
    from tests.conftest import SOP_BENCH_DATA, SOP_BENCH_MISSING

    assert SOP_BENCH_DATA.is_absolute() and ".." not in SOP_BENCH_DATA.parts
    assert str(SOP_BENCH_DATA) in SOP_BENCH_MISSING
    pattern = re.compile(r"""["']shared["']\s*/\s*["']sop_bench["']|SOP-Bench data (not|is)""")
    conftest = ROOT / "tests" / "conftest.py"
    again = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path != conftest and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert again == []


def test_conftest__xla_flags_set_before_jax():
    import os

    assert "--xla_force_host_platform_device_count=8" in os.environ["XLA_FLAGS"]


@pytest.mark.multidevice
def test_conftest__jax_sees_eight_fake_cpu_devices():
    import jax

    assert jax.device_count() == 8
    assert {d.platform for d in jax.devices()} == {"cpu"}


# Imported inside try/except ImportError with a fallback, so deliberately not declared.
_OPTIONAL_IMPORTS = {"jaxtyping"}


def _third_party_imports(folder: Path) -> set[str]:
    """Top-level names of the non-stdlib modules imported anywhere under ``folder``."""
    ours = {"mtrl_gym", "mtrl_envs", "mtrl_jax", "envs", "__future__"}
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ours}


@pytest.mark.parametrize(
    ("folder", "extras"), [("mtrl_gym", ("remote",)), ("envs", ()), ("mtrl_jax", ("jax",))]
)
def test_pyproject__every_imported_package_is_declared(folder: str, extras: tuple[str, ...]):
    import importlib.metadata

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*meta["dependencies"]]
    for extra in extras:
        declared += meta["optional-dependencies"][extra]
    names = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in declared}
    distributions = importlib.metadata.packages_distributions()
    for module in sorted(_third_party_imports(ROOT / folder) - _OPTIONAL_IMPORTS):
        dists = {d.lower() for d in distributions.get(module, [module])}
        assert dists & names, f"{folder} imports {module!r} but pyproject declares none of {dists}"
