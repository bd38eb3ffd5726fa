"""metaorch's driver: configuration, the meta-training loop, tracking, evaluation.

The Python API is the CLI's::

    from orchestrator import load_config, train, evaluate
    run = train(load_config("configs/sinusoid_maml.yaml", ["outer.iterations=2000"]))
    evaluate(run.run_id, steps=[1, 5, 10])
"""

from orchestrator.config import Config, load_config
from orchestrator.errors import UserError
from orchestrator.trainer import EvalResult, RunResult, evaluate, train

__all__ = ["Config", "EvalResult", "RunResult", "UserError", "evaluate", "load_config", "train"]
