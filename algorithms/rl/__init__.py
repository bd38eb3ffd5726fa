"""Meta-RL algorithms (MAML-TRPO, RL², PEARL): pure torch over trajectories as arrays.

No Ray, no gymnasium here: rollout workers (``workers/``) step environments (``tasks/rl``)
and hand these functions :class:`Trajectories`; a test can build trajectories by hand.
"""

from metaorch import lazy_exports

_EXPORTS = {
    "Plan": "trajectories", "Policy": "trajectories", "Sample": "trajectories", "Trajectories": "trajectories",
    "MAMLTRPOConfig": "config", "PPOConfig": "config",
    "MAMLPlan": "maml_trpo", "MAMLTRPOLearner": "maml_trpo", "adapt": "maml_trpo",
    "GRUPolicy": "rl2", "RL2Learner": "rl2", "RL2Plan": "rl2",
    "PEARL": "pearl", "PEARLConfig": "pearl", "PEARLPlan": "pearl", "PEARLPolicy": "pearl",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
