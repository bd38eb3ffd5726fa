"""PEARL (Rakelly et al. 2019): off-policy meta-RL with a probabilistic task encoder.

A context encoder maps each transition (s, a, r[, s']) of a task to a Gaussian factor over
a latent task variable z; the posterior is their product (order-free, so any amount of
context works) and is regularised towards the unit Gaussian prior by a KL term (an
information bottleneck). SAC (Haarnoja et al. 2018) trains a tanh-Gaussian policy and Q
functions that all take z as an extra input; the encoder learns only through the Q loss
(and the KL), never through the policy loss, as in the authors' code (oyster).

Differences from oyster, on purpose: twin Q functions with target Q networks (the later
SAC) instead of oyster's twin Q + V + target V; the temperature stays fixed at
``alpha`` (1, with oyster's reward scale 5, which is the same objective). Context includes
s' by default (``use_next_obs``), as the brief for this project asks; oyster's default is off.

Split as oyster keeps it: workers run the agent (``agent.py``: :class:`PEARLPolicy`, the
actor and the encoder as one flat vector, and :class:`PEARLPlan`); the driver's learner
(``sac.py``: :class:`PEARL`) keeps per-task replay buffers (``replay.py``) in numpy and runs
:meth:`PEARL.update` on its own device. ``config.py`` holds the hyperparameters of both.
"""

from metaorch import lazy_exports

_EXPORTS = {
    "PEARLPlan": "agent", "PEARLPolicy": "agent", "kl_to_unit_gaussian": "agent", "make_context": "agent",
    "product_of_gaussians": "agent", "squash": "agent",
    "PEARLConfig": "config",
    "ReplayBuffer": "replay",
    "PEARL": "sac",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
