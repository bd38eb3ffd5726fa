"""Meta-learning algorithms in pure PyTorch: no Ray, no MLflow."""

from metaorch import lazy_exports

_EXPORTS = {
    "ANIL": "anil",
    "FewShotClassifier": "base", "LossFn": "base", "MetaLearner": "base", "OuterUpdate": "base", "Vectorize": "base",
    "Conv4": "conv4", "Conv4Classifier": "conv4",
    "EpisodicLearner": "episodic", "EpisodicModel": "episodic",
    "GradientBasedLearner": "gradient_based",
    "SGD": "inner_rules", "Adam": "inner_rules", "InnerRule": "inner_rules", "MetaSGD": "inner_rules",
    "MAML": "maml",
    "MetaModel": "meta_model",
    "FunctionalModel": "models", "mlp": "models",
    "ParamLayout": "params",
    "Reptile": "reptile",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
