"""Meta-learning algorithms in pure PyTorch: no Ray, no MLflow."""

from __future__ import annotations

from metaorch.algorithms.anil import ANIL
from metaorch.algorithms.base import FewShotClassifier, LossFn, MetaLearner, OuterUpdate, Vectorize
from metaorch.algorithms.conv4 import Conv4, Conv4Classifier
from metaorch.algorithms.episodic import EpisodicLearner, EpisodicModel
from metaorch.algorithms.gradient_based import GradientBasedLearner
from metaorch.algorithms.inner_rules import SGD, Adam, InnerRule, MetaSGD
from metaorch.algorithms.maml import MAML
from metaorch.algorithms.meta_model import MetaModel
from metaorch.algorithms.models import FunctionalModel, mlp
from metaorch.algorithms.params import ParamLayout
from metaorch.algorithms.reptile import Reptile
from metaorch.tasks.base import TaskBatch

GRADIENT_BASED = ("maml", "fomaml", "metasgd", "reptile", "anil")
EPISODIC = ("protonet", "matching", "siamese", "mann", "snail")
ALGORITHMS = GRADIENT_BASED + EPISODIC


def build_learner(
    name: str,
    model: FunctionalModel,
    loss_fn: LossFn,
    inner_lr: float,
    inner_steps: int,
    vectorize: Vectorize = "vmap",
    transductive: bool = True,
    classify: bool = False,
    first_order: bool = False,
    track_pre: bool = True,
    inner_optimizer: str = "sgd",
    inner_batch: int | None = None,
) -> GradientBasedLearner:
    """A gradient-based meta-learner; ``first_order`` applies to ANIL (FOMAML is its own name)."""
    options = dict(vectorize=vectorize, transductive=transductive, classify=classify)
    if name == "reptile":
        rule = Adam(inner_lr) if inner_optimizer == "adam" else SGD(inner_lr)
        return Reptile(model, loss_fn, rule, inner_steps, inner_batch=inner_batch, **options)
    options["track_pre"] = track_pre
    if name == "anil":
        return ANIL(model, loss_fn, SGD(inner_lr), inner_steps, first_order=first_order, **options)
    if name in ("maml", "fomaml", "metasgd"):
        return MAML(
            model,
            loss_fn,
            MetaSGD(inner_lr) if name == "metasgd" else SGD(inner_lr),
            inner_steps,
            first_order=name == "fomaml",
            **options,
        )
    raise ValueError(f"unknown gradient-based algorithm {name!r}; expected one of {GRADIENT_BASED}")


def build_episodic(
    name: str, ways: int, shots: int = 1, transductive: bool = True, vectorize: Vectorize = "loop", fce: bool = False
) -> EpisodicLearner:
    """A metric or sequence learner on Conv-4; ``ways`` sizes the output of MANN and SNAIL,
    ``shots`` the depth of SNAIL's temporal convolutions (one network per shot count, as in the paper)."""
    options = dict(transductive=transductive, vectorize=vectorize)
    if name == "protonet":
        from metaorch.algorithms.protonet import ProtoNet

        return ProtoNet(**options)
    if name == "matching":
        from metaorch.algorithms.matching import MatchingNetworks, matching_model

        return MatchingNetworks(matching_model(fce=fce), **options)
    if name == "siamese":
        from metaorch.algorithms.siamese import SiameseNetworks

        return SiameseNetworks(**options)
    if name == "mann":
        from metaorch.algorithms.mann import MANN

        return MANN(ways, **options)
    if name == "snail":
        from metaorch.algorithms.snail import SNAIL

        return SNAIL(ways, shots=shots, **options)
    raise ValueError(f"unknown algorithm {name!r}; expected one of {EPISODIC}")


__all__ = [
    "ALGORITHMS",
    "ANIL",
    "Adam",
    "Conv4",
    "Conv4Classifier",
    "EPISODIC",
    "EpisodicLearner",
    "EpisodicModel",
    "FewShotClassifier",
    "GRADIENT_BASED",
    "GradientBasedLearner",
    "InnerRule",
    "MAML",
    "MetaSGD",
    "FunctionalModel",
    "LossFn",
    "MetaLearner",
    "MetaModel",
    "OuterUpdate",
    "ParamLayout",
    "Reptile",
    "SGD",
    "TaskBatch",
    "Vectorize",
    "build_episodic",
    "build_learner",
    "mlp",
]
