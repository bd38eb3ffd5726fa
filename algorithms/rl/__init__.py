"""Meta-RL algorithms (MAML-TRPO, RL², PEARL): pure torch over trajectories as arrays.

No Ray, no gymnasium here: rollout workers (``workers/``) step environments (``tasks/rl``)
and hand these functions :class:`Trajectories`; a test can build trajectories by hand.
"""

from algorithms.rl.trajectories import Plan, Policy, Sample, Trajectories

__all__ = ["Plan", "Policy", "Sample", "Trajectories"]
