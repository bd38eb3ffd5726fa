"""Meta-RL algorithms (MAML-TRPO, RL², PEARL): pure torch over trajectories as arrays.

No Ray, no gymnasium here: rollout workers (``workers/``) step environments (``tasks/rl``)
and hand these functions :class:`Trajectories`; a test can build trajectories by hand.
"""

from metaorch.algorithms.rl.maml_trpo import MAMLPlan, MAMLTRPOConfig, MAMLTRPOLearner, adapt
from metaorch.algorithms.rl.pearl import PEARL, PEARLConfig, PEARLPlan, PEARLPolicy
from metaorch.algorithms.rl.rl2 import GRUPolicy, PPOConfig, RL2Learner, RL2Plan
from metaorch.algorithms.rl.trajectories import Plan, Policy, Sample, Trajectories

__all__ = ["Plan", "Policy", "Sample", "Trajectories"]
__all__ += ["MAMLPlan", "MAMLTRPOConfig", "MAMLTRPOLearner", "adapt", "GRUPolicy", "PPOConfig", "RL2Learner", "RL2Plan"]
__all__ += ["PEARL", "PEARLConfig", "PEARLPlan", "PEARLPolicy"]
