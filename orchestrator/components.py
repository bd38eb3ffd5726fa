"""Builds the task family, meta-learner and policy a config describes.

The driver and every worker call the same function (workers get it as a picklable
``functools.partial``), so both sides always agree on the data, the model and the algorithm.
Which builder applies is the registry's business (:mod:`orchestrator.registry`); the
functions below are the builders it names, one per method, and one per kind of model.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch.nn.functional as F

from metaorch.algorithms import ANIL, MAML, Conv4Classifier, FunctionalModel, MetaLearner, Reptile, mlp
from metaorch.algorithms.inner_rules import SGD, Adam, InnerRule, MetaSGD
from metaorch.orchestrator import registry
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.errors import UserError
from metaorch.tasks import TaskFamily, descriptors

LOSSES = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


def build_family(
    config: Config, ways: int | None = None, shots: int | None = None, queries: int | None = None, data: Any = None
) -> TaskFamily:
    """The config's task family, optionally at another N, K or Q (meta-test settings): the
    registered class, given the ``task`` and ``data`` fields its constructor names. ``data``:
    what :func:`prepare_data` read, or its object-store reference (:func:`share_data`), attached
    instead of reading ``data.root``."""
    cls = registry.task(config.task.name).builder()
    fields = config.data.model_dump() | config.task.model_dump()
    fields |= {k: v for k, v in (("ways", ways), ("shots", shots), ("queries", queries)) if v is not None}
    family = cls(**{k: fields[k] for k in inspect.signature(cls).parameters if k in fields})
    if data is not None:
        import ray

        family.attach(ray.get(data) if isinstance(data, ray.ObjectRef) else data)
    return family


def model_for(config: Config, family: TaskFamily) -> FunctionalModel:
    """The adapting methods' network: an MLP for vector inputs, Conv-4 for images."""
    if registry.task(config.task.name).model == "mlp":
        return FunctionalModel(mlp(family.input_dim, config.model.hidden, family.output_dim))
    return FunctionalModel(Conv4Classifier(config.task.ways, filters=config.model.filters))


def vectorize(config: Config) -> str:
    """``algorithm.vectorize=auto``: vmap for the MLP, a loop for Conv-4 (vmap's batched convolutions are slower)."""
    a = config.algorithm
    return a.vectorize if a.vectorize != "auto" else registry.task(config.task.name).vectorize


def _gradient(config: Config, family: TaskFamily, rule: InnerRule | None = None) -> dict[str, Any]:
    """The arguments every gradient-based learner takes; the inner rule is plain SGD unless given."""
    a = config.algorithm
    return dict(
        model=model_for(config, family), loss_fn=LOSSES[family.loss], rule=rule or SGD(a.inner_lr), inner_steps=a.inner_steps,
        vectorize=vectorize(config), transductive=config.model.transductive, classify=family.loss == "cross_entropy",
    )  # fmt: skip


def maml(config: Config, family: TaskFamily) -> MAML:
    return MAML(**_gradient(config, family), track_pre=config.algorithm.track_pre)


def fomaml(config: Config, family: TaskFamily) -> MAML:
    return MAML(**_gradient(config, family), first_order=True, track_pre=config.algorithm.track_pre)


def metasgd(config: Config, family: TaskFamily) -> MAML:
    """MAML with per-weight inner learning rates, themselves meta-parameters."""
    return MAML(**_gradient(config, family, MetaSGD(config.algorithm.inner_lr)), track_pre=config.algorithm.track_pre)


def anil(config: Config, family: TaskFamily) -> ANIL:
    a = config.algorithm
    return ANIL(**_gradient(config, family), first_order=a.first_order, track_pre=a.track_pre)


def reptile(config: Config, family: TaskFamily) -> Reptile:
    """``algorithm.inner_optimizer``: plain SGD, or Adam with beta1 = 0 (Nichol et al.)."""
    a = config.algorithm
    rule = Adam(a.inner_lr, carry=a.carry_inner_state) if a.inner_optimizer == "adam" else SGD(a.inner_lr)
    return Reptile(**_gradient(config, family, rule), inner_batch=a.inner_batch)


def _episodic(config: Config) -> dict[str, Any]:
    return dict(transductive=config.model.transductive, vectorize=vectorize(config))


def protonet(config: Config, family: TaskFamily) -> MetaLearner:
    from metaorch.algorithms.protonet import ProtoNet, protonet_model

    return ProtoNet(protonet_model(config.model.filters), **_episodic(config))


def matching(config: Config, family: TaskFamily) -> MetaLearner:
    from metaorch.algorithms.matching import MatchingNetworks, matching_model

    a = config.algorithm
    return MatchingNetworks(matching_model(fce=a.fce, filters=config.model.filters), scale=a.scale, **_episodic(config))


def siamese(config: Config, family: TaskFamily) -> MetaLearner:
    from metaorch.algorithms.siamese import SiameseNetworks, siamese_model

    return SiameseNetworks(siamese_model(config.model.filters), **_episodic(config))


def mann(config: Config, family: TaskFamily) -> MetaLearner:
    from metaorch.algorithms.mann import MANN

    return MANN(config.task.ways, filters=config.model.filters, **_episodic(config))


def snail(config: Config, family: TaskFamily) -> MetaLearner:
    """One network per shot count (the depth of its temporal convolutions), as in the paper."""
    from metaorch.algorithms.snail import SNAIL

    return SNAIL(config.task.ways, shots=config.task.shots, filters=config.model.filters, **_episodic(config))


def build_components(config: Config, data: Any = None) -> tuple[TaskFamily, MetaLearner]:
    """The family and learner; ``data`` as in :func:`build_family` (a worker's build carries the reference)."""
    family = build_family(config, data=data)
    return family, registry.method(config.algorithm.name).builder()(config, family)


def prepare_data(config: Config) -> Any:
    """For families that read data: build the cache once, in the driver, and fail with exit 2 on
    bad data before any worker starts: one episode of every split and meta-test setting is built here.
    Returns the data read (None for generated families): the driver's copy, which workers receive."""
    if not registry.task(config.task.name).needs_data:
        return None
    e, t = config.eval, config.task
    try:
        family = build_family(config)
        data = family.data
        for split in ("train", "val", "test") if config.data.validates else ("train", "test"):
            family.batch(descriptors(config.seed, split, 0, 1))
        for ways in e.ways or [t.ways]:
            for shots in e.shots or [t.shots]:
                build_family(config, ways=ways, shots=shots, queries=e.queries, data=data).batch(descriptors(config.seed, "test", 0, 1))
        return data
    except ValueError as exc:  # the families' data errors (DatasetError) are ValueErrors
        field = "data.download" if config.data.root is None else f"data.root={config.data.root}"
        raise UserError(f"{field}: {exc}") from None


def share_data(data: Any) -> Any:
    """What :func:`prepare_data` read, put once into Ray's object store (None stays None). Every
    worker's build carries the reference, as the meta-parameters travel once per iteration: a node
    holds one shared copy that its workers read zero-copy, so no worker node needs ``data.root``."""
    if data is None:
        return None
    import ray

    return ray.put(data)


def build_env_family(config: Config):
    """The config's meta-RL environment family (as trials when the method plays them); bad options exit 2."""
    from metaorch.tasks.rl import EnvFamilyError, make_family  # gymnasium and MuJoCo load only for meta-RL jobs

    t = config.task
    try:
        return make_family(registry.task(t.name).builder(), t.trial_episodes, **t.options)
    except EnvFamilyError as exc:
        raise UserError(f"task.options={config.task.options}: {exc}") from None


def _spaces(family) -> tuple[int, Any]:
    return int(np.prod(family.observation_space.shape)), family.action_space


def mlp_policy(config: Config, family):
    """MAML-TRPO's policy: an MLP, Gaussian for Box actions, categorical for Discrete ones."""
    from metaorch.algorithms.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy

    obs_dim, space = _spaces(family)
    if hasattr(space, "n"):
        return CategoricalMLPPolicy(obs_dim, int(space.n), tuple(config.model.hidden))
    return GaussianMLPPolicy(obs_dim, int(np.prod(space.shape)), tuple(config.model.hidden))


def gru_policy(config: Config, family):
    """RL²'s GRU with a value head; ``model.hidden`` is its one width."""
    from metaorch.algorithms.rl import GRUPolicy

    obs_dim, space = _spaces(family)
    act = {"num_actions": int(space.n)} if hasattr(space, "n") else {"act_dim": int(np.prod(space.shape))}
    return GRUPolicy(obs_dim, hidden=config.model.hidden[0], **act)


def pearl_policy(config: Config, family):
    """PEARL's actor and context encoder (continuous actions)."""
    from metaorch.algorithms.rl import PEARLPolicy

    obs_dim, space = _spaces(family)
    return PEARLPolicy(obs_dim, int(np.prod(space.shape)), config.rl.pearl, space.low, space.high)


def build_policy(config: Config, family):
    """The method's policy, sized to the family's spaces; ``model.hidden`` sets the widths."""
    return registry.method(config.algorithm.name).builder()(config, family)


def build_rl(config: Config):
    """(environment family, policy): what a rollout worker is built from."""
    family = build_env_family(config)
    return family, build_policy(config, family)
