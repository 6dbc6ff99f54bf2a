"""The LaMo paper's comparators (BC, CQL, IQL, TD3+BC) trained through d3rlpy on a LaMo run's data.

- :mod:`~lamo_scale.baselines.config`: the config tree (algorithm hyper-parameters + the LaMo
  ``data`` / ``eval`` / ``tracking`` sections), recipes in ``lamo_scale/recipes/baselines/``;
- :mod:`~lamo_scale.baselines.algos`: a :class:`~lamo_scale.data.trajectories.TrajectoryIndex` as a
  d3rlpy dataset, and the d3rlpy algorithms;
- :mod:`~lamo_scale.baselines.train`: ``lamo-scale baseline``: train, checkpoint, evaluate, log;
- :mod:`~lamo_scale.baselines.policy`: a baseline checkpoint behind the acting loop's interface
  (what :func:`lamo_scale.rollout.evaluate.evaluate_checkpoint` calls for ``kind: baseline``).

d3rlpy is an optional dependency (``scripts/install.sh .venv baselines``; the ``dev`` profile has it).
"""
from lamo_scale.baselines.config import ALGOS

__all__ = ["ALGOS"]
