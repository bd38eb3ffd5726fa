"""metaorch's driver: configuration, the meta-training loop, tracking, evaluation.

The Python API is the CLI's::

    from metaorch.orchestrator import load_config, train, evaluate
    run = train(load_config("configs/sinusoid_maml.yaml", ["outer.iterations=2000"]))
    evaluate(run.run_id, steps=[1, 5, 10])
"""

from metaorch import lazy_exports
from metaorch.orchestrator.config import Config, load_config
from metaorch.orchestrator.errors import UserError

# the training API pulls in Ray, torch and MLflow: loaded on first use, not on import
__getattr__ = lazy_exports(__name__, {name: "trainer" for name in ("EvalResult", "RunResult", "evaluate", "train")})

__all__ = ["Config", "EvalResult", "RunResult", "UserError", "evaluate", "load_config", "train"]
