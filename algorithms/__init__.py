"""Meta-learning algorithms in pure PyTorch: no Ray, no MLflow."""

from __future__ import annotations

from algorithms.base import LossFn, MetaLearner, OuterUpdate, TaskBatch, Vectorize
from algorithms.maml import MAML
from algorithms.meta_model import MetaModel
from algorithms.models import FunctionalModel, mlp
from algorithms.params import ParamLayout
from algorithms.reptile import Reptile

ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile")


def build_learner(
    name: str,
    model: FunctionalModel,
    loss_fn: LossFn,
    inner_lr: float,
    inner_steps: int,
    vectorize: Vectorize = "vmap",
) -> MAML:
    if name == "reptile":
        return Reptile(model, loss_fn, inner_lr, inner_steps, vectorize)
    if name in ("maml", "fomaml", "metasgd"):
        return MAML(
            model,
            loss_fn,
            inner_lr,
            inner_steps,
            first_order=name == "fomaml",
            learn_inner_lr=name == "metasgd",
            vectorize=vectorize,
        )
    raise ValueError(f"unknown algorithm {name!r}; expected one of {ALGORITHMS}")


__all__ = [
    "ALGORITHMS",
    "MAML",
    "FunctionalModel",
    "LossFn",
    "MetaLearner",
    "MetaModel",
    "OuterUpdate",
    "ParamLayout",
    "Reptile",
    "TaskBatch",
    "Vectorize",
    "build_learner",
    "mlp",
]
