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

__all__ = [
    "ANIL",
    "Adam",
    "Conv4",
    "Conv4Classifier",
    "EpisodicLearner",
    "EpisodicModel",
    "FewShotClassifier",
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
    "mlp",
]
