"""Builds the task family and meta-learner a config describes.

The driver and every worker call the same function (workers get it as a picklable
``functools.partial``), so both sides always agree on the data, the model and the algorithm.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from metaorch.algorithms import GRADIENT_BASED, Conv4Classifier, FunctionalModel, MetaLearner, build_learner, mlp
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.errors import UserError
from metaorch.tasks import SinusoidTasks, TaskFamily, descriptors

LOSSES = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


def build_family(config: Config, ways: int | None = None, shots: int | None = None, queries: int | None = None) -> TaskFamily:
    """The config's task family, optionally at another N, K or Q (meta-test settings)."""
    t = config.task
    shots = t.shots if shots is None else shots
    queries = t.queries if queries is None else queries
    if t.name == "sinusoid":
        return SinusoidTasks(shots=shots, queries=queries)
    from metaorch.tasks.omniglot import OmniglotTasks  # imports PIL; only Omniglot jobs pay for it

    d = config.data
    return OmniglotTasks(
        d.root, ways=t.ways if ways is None else ways, shots=shots, queries=queries,
        rotations=t.rotations, split=d.split, cache_dir=d.cache_dir, shift=t.shift,
    )  # fmt: skip


def build_learner_for(config: Config, family: TaskFamily) -> MetaLearner:
    a, m = config.algorithm, config.model
    if config.task.name == "sinusoid":
        model = FunctionalModel(mlp(family.input_dim, m.hidden, family.output_dim))
        vectorize = "vmap" if a.vectorize == "auto" else a.vectorize
    else:
        model = None
        vectorize = "loop" if a.vectorize == "auto" else a.vectorize
    if a.name in GRADIENT_BASED:
        model = model or FunctionalModel(Conv4Classifier(config.task.ways))
        return build_learner(
            a.name, model, LOSSES[family.loss], a.inner_lr, a.inner_steps, vectorize,
            transductive=m.transductive, classify=family.loss == "cross_entropy", first_order=a.first_order, track_pre=a.track_pre,
            inner_optimizer=a.inner_optimizer, inner_batch=a.inner_batch,
        )  # fmt: skip
    from metaorch.algorithms import build_episodic

    return build_episodic(a.name, ways=config.task.ways, shots=config.task.shots, transductive=m.transductive, vectorize=vectorize, fce=a.fce)


def build_components(config: Config) -> tuple[TaskFamily, MetaLearner]:
    family = build_family(config)
    return family, build_learner_for(config, family)


def prepare_data(config: Config) -> None:
    """Build the data cache once, in the driver, and fail with exit 2 on bad data before any
    worker starts: one episode of every split and every meta-test setting is built here."""
    if config.task.name == "sinusoid":
        return
    from metaorch.tasks.omniglot import DatasetError

    e, t = config.eval, config.task
    try:
        family = build_family(config)
        for split in ("train", "val", "test"):
            family.batch(descriptors(config.seed, split, 0, 1))
        for ways in e.ways or [t.ways]:
            for shots in e.shots or [t.shots]:
                build_family(config, ways=ways, shots=shots, queries=e.queries).batch(descriptors(config.seed, "test", 0, 1))
    except DatasetError as exc:
        raise UserError(f"data.root={config.data.root}: {exc}") from None


def build_env_family(config: Config):
    """The config's meta-RL environment family (as RL² trials for rl2); bad options exit 2."""
    from metaorch.tasks.rl import EnvFamilyError, make_family  # gymnasium and MuJoCo load only for meta-RL jobs

    try:
        return make_family(config.task.name, config.task.trial_episodes, **config.task.options)
    except EnvFamilyError as exc:
        raise UserError(f"task.options={config.task.options}: {exc}") from None


def build_policy(config: Config, family):
    """The algorithm's policy, sized to the family's spaces: an MLP (maml_trpo), a GRU with a
    value head (rl2) or PEARL's actor and context encoder; ``model.hidden`` sets the widths."""
    from metaorch.algorithms.rl import GRUPolicy, PEARLPolicy
    from metaorch.algorithms.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy

    obs_dim = int(np.prod(family.observation_space.shape))
    space = family.action_space
    discrete = hasattr(space, "n")
    act = {"num_actions": int(space.n)} if discrete else {"act_dim": int(np.prod(space.shape))}
    name, hidden = config.algorithm.name, tuple(config.model.hidden)
    if name == "rl2":
        return GRUPolicy(obs_dim, hidden=hidden[0], **act)
    if name == "pearl":
        return PEARLPolicy(obs_dim, act["act_dim"], config.rl.pearl, space.low, space.high)
    if discrete:
        return CategoricalMLPPolicy(obs_dim, act["num_actions"], hidden)
    return GaussianMLPPolicy(obs_dim, act["act_dim"], hidden)


def build_rl(config: Config):
    """(environment family, policy): what a rollout worker is built from."""
    family = build_env_family(config)
    return family, build_policy(config, family)
