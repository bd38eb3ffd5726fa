"""metaorch's driver: configuration, the meta-training loop, tracking, evaluation.

The Python API is the CLI's::

    from metaorch.orchestrator import load_config, train, evaluate
    run = train(load_config("configs/sinusoid_maml.yaml", ["outer.iterations=2000"]))
    evaluate(run.run_id, steps=[1, 5, 10])
"""

from typing import Any

from metaorch.orchestrator.config import Config, load_config
from metaorch.orchestrator.errors import UserError

_TRAINER = ("EvalResult", "RunResult", "evaluate", "train")  # from orchestrator.trainer


def __getattr__(name: str) -> Any:
    """The training API pulls in Ray, torch and MLflow; load it on first use, not on import."""
    if name in _TRAINER:
        from metaorch.orchestrator import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


__all__ = ["Config", "EvalResult", "RunResult", "UserError", "evaluate", "load_config", "train"]
