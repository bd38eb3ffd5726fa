"""ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the final linear layer.

The body's features are computed once per task and the inner loop runs on the head alone,
so the inner loop and its second-order terms cost a linear layer instead of the whole
network; the outer gradient still reaches the body through the features. The model must
have submodules ``body`` and ``head`` (a ``nn.Linear``), as ``Conv4Classifier`` does.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from metaorch.algorithms.maml import MAML
from metaorch.algorithms.params import ParamLayout


class ANIL(MAML):
    adapted = "head"

    def adapt(self, meta_params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
        weights, head = self.weights(meta_params), self.model.slice("head")
        features = self.model.sub(weights, "body", x)
        head_module = self.model.module.head
        layout = ParamLayout.of(head_module)

        def head_loss(h: torch.Tensor, _: int) -> torch.Tensor:
            return self.loss_fn(functional_call(head_module, layout.unflatten(h), (features,)), y)

        h = self.descend(head_loss, weights[head], self.rule_params(meta_params)[head], steps, not self.first_order)
        return torch.cat([weights[: head.start], h, weights[head.stop :]])
