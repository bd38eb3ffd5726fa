"""The code file of every logged metaorch model (MLflow "models from code").

MLflow copies this file into the model and runs it to load the model: it names the class
(:class:`orchestrator.pyfunc_model.MetaorchModel`), which rebuilds the method from the
model's config and weights. Nothing is unpickled. metaorch itself never imports this module.
"""

import mlflow

from metaorch.orchestrator.pyfunc_model import MetaorchModel

mlflow.models.set_model(MetaorchModel())
