"""mtrl_jax: the JAX/Flax learner (models, sampler, rollout, losses, trainer).

Installed with the ``jax`` extra (``pip install -e .[jax]``). The learner itself lands with the
models, sampler, learner and trainer issues; this package depends on ``mtrl_gym`` and never the
other way round.
"""
