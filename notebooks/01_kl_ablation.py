# %% [markdown]
# # Ablation: the KL penalty to the warm start in the quickstart
#
# The quickstart's warm start learns the protocol (tool calls, copying ids) but answers at random,
# so at first a correct tool call earns no more reward than a broken one. Without something that
# holds the protocol in place, RL at a useful learning rate breaks the tool-call JSON before it
# learns the decision. This notebook warm-starts once, then runs the same RL phase with several
# KL coefficients (``train.loss.kl_coef``) and seeds, and compares held-out success.
#
# Jupytext percent format: open it as a notebook (``jupytext --to ipynb``) or run it as a script.
# ``MTRL_NOTEBOOK_SMOKE=1`` shrinks every run to seconds (a test does that); the real ablation
# takes about 5 minutes per RL run on a 2-core CPU.

# %%
import json
import os
from pathlib import Path

from mtrl_jax.config import load_config
from mtrl_jax.trainer import run

SMOKE = os.environ.get("MTRL_NOTEBOOK_SMOKE") == "1"
OUT = Path(os.environ.get("MTRL_NOTEBOOK_OUT", "runs/notebooks/kl_ablation"))
KL_COEFS = [0.0, 0.5, 2.0] if not SMOKE else [0.0, 2.0]
SEEDS = [0, 1] if not SMOKE else [0]
# Smoke runs: two tasks of two 16-token episodes per step, one evaluation task.
TINY = [
    "steps=1",
    "sft.steps=2",
    "sft.batch_size=2",
    "sft.demo_tasks=2",
    "env.tasks_per_step=2",
    "rollout.group_size=2",
    "rollout.max_new_tokens=16",
    "sampler.max_new_tokens=16",
    "engine.num_slots=4",
    "packing.rows_multiple=1",
    "train.num_micro_batches=1",
    "eval.max_tasks=1",
]
COMMON = [f"out_dir={OUT}", "tracking.enabled=false", *(TINY if SMOKE else [])]

# %% [markdown]
# ## 1. One warm start, shared by every RL run
#
# ``steps=0`` runs the supervised warm start and the held-out evaluation only; the warm-started
# weights land in ``<run>/warm_start`` as an HF folder.

# %%
warm = run(load_config("quickstart", [*COMMON, "name=warm", "steps=0"]), progress=False)
warm_model = OUT / "warm" / "warm_start"
print("held-out success after the warm start:", warm["before"]["success_rate"])

# %% [markdown]
# ## 2. The RL phase, per KL coefficient and seed
#
# Each run starts from the exported warm start (``model.path``, no SFT of its own), so the runs
# differ only in the KL coefficient and the RL seed. With ``kl_coef: 0`` there is no reference.

# %%
results = []
for kl in KL_COEFS:
    for seed in SEEDS:
        overrides = [
            *COMMON,
            f"name=kl{kl}_seed{seed}",
            f"seed={seed}",
            f"model.path={warm_model}",
            "sft.steps=0",
            f"train.loss.kl_coef={kl}",
        ]
        out = run(load_config("quickstart", overrides), progress=False)
        results.append(
            {
                "kl_coef": kl,
                "seed": seed,
                "before": out["before"]["success_rate"],
                "after": out["after"]["success_rate"],
            }
        )
        print(json.dumps(results[-1]))

# %% [markdown]
# ## 3. Held-out success by KL coefficient

# %%
print(f"{'kl_coef':>8} {'seed':>5} {'before':>7} {'after':>6}")
for r in results:
    print(f"{r['kl_coef']:>8} {r['seed']:>5} {r['before']:>7.2f} {r['after']:>6.2f}")

# %%
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(5, 3))
for seed in SEEDS:
    rows = [r for r in results if r["seed"] == seed]
    ax.plot([r["kl_coef"] for r in rows], [r["after"] for r in rows], "o-", label=f"seed {seed}")
ax.axhline(warm["before"]["success_rate"], color="gray", ls="--", label="warm start")
ax.set_xlabel("train.loss.kl_coef")
ax.set_ylabel("held-out success after RL")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "kl_ablation.png")
(OUT / "kl_ablation.json").write_text(json.dumps(results, indent=2) + "\n")
print("wrote", OUT / "kl_ablation.png", "and", OUT / "kl_ablation.json")
