"""Builds the task family and meta-learner a config describes.

The driver and every worker call the same function (workers get it as a picklable
``functools.partial``), so both sides always agree on the model and the algorithm.
"""

from __future__ import annotations

import torch.nn.functional as F

from algorithms import FunctionalModel, MAML, build_learner, mlp
from orchestrator.config import Config
from tasks import TaskFamily, build_family

LOSSES = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


def build_components(config: Config) -> tuple[TaskFamily, MAML]:
    family = build_family(config.task.name, config.task.shots, config.task.queries)
    model = FunctionalModel(mlp(family.input_dim, config.model.hidden, family.output_dim))
    a = config.algorithm
    learner = build_learner(a.name, model, LOSSES[family.loss], a.inner_lr, a.inner_steps, a.vectorize)
    return family, learner
