"""The episodic methods are meta-tested without transduction (orchestrator/evaluation.py):
Conv-4's batch norm takes its statistics from the support set, so a query's prediction does
not move when the other queries change; a transductively trained run also reports the
transductive figure beside the headline."""

from __future__ import annotations

import pytest
import torch

from conftest import OMNIGLOT, omniglot_root
from metaorch.algorithms import MAML, SGD, Conv4Classifier, FunctionalModel
from metaorch.algorithms.mann import MANN
from metaorch.algorithms.matching import MatchingNetworks
from metaorch.algorithms.protonet import ProtoNet
from metaorch.algorithms.siamese import SiameseNetworks
from metaorch.algorithms.snail import SNAIL
from metaorch.orchestrator.components import build_family
from metaorch.orchestrator.config import deep_merge, from_dict
from metaorch.orchestrator.evaluation import TRANSDUCTIVE, accuracies, classification_test, evaluation_modes
from metaorch.tasks.base import descriptors
from test_metric_methods import episode, logits_of

WAYS = 4
LEARNERS = {
    "protonet": lambda: ProtoNet(),
    "matching": lambda: MatchingNetworks(),
    "siamese": lambda: SiameseNetworks(),
    "mann": lambda: MANN(WAYS, filters=8, hidden=32, slots=16, width=8, reads=2),
    "snail": lambda: SNAIL(WAYS, 1, filters=8, scale=0.25),
}


def omniglot(cache: str = "unused", **sections) -> object:
    base = {
        "task": {"name": "omniglot", "ways": WAYS, "shots": 1, "queries": 3},
        "data": {"root": str(OMNIGLOT), "cache_dir": cache},
        "eval": {"queries": 3},
    }
    return from_dict(deep_merge(base, sections), "(test)")


@pytest.mark.parametrize("name", LEARNERS)
def test_the_headline_learner_keeps_each_query_to_itself(name: str):
    """A transductively trained learner: the headline mode's prediction for query 0 is the same
    whatever the other queries are; the transductive mode beside it moves with them."""
    learner = LEARNERS[name]()
    assert learner.transductive
    (head, headline), (suffix, beside) = evaluation_modes(omniglot(algorithm={"name": name}), learner)
    assert (head, suffix, beside) == ("", TRANSDUCTIVE, learner) and not headline.transductive
    params = learner.init_meta_params(0)
    task = episode(WAYS, 1, 3)
    changed = dict(task, query_x=task["query_x"].clone())
    changed["query_x"][1:] = torch.rand(changed["query_x"][1:].shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(logits_of(headline, params, task)[0], logits_of(headline, params, changed)[0], rtol=1e-5, atol=1e-5)
        assert (logits_of(learner, params, task)[0] - logits_of(learner, params, changed)[0]).abs().max() > 1e-4
    assert learner.transductive  # the trained learner is left as it was


def test_learners_tested_as_trained_keep_one_mode():
    """Inductively trained episodic methods and the gradient-based ones (tested as Finn et al. do):
    one figure each, of the learner as configured."""
    inductive = ProtoNet(transductive=False)
    assert evaluation_modes(omniglot(algorithm={"name": "protonet"}, model={"transductive": False}), inductive) == [("", inductive)]
    maml = MAML(FunctionalModel(Conv4Classifier(WAYS)), torch.nn.functional.cross_entropy, SGD(0.4), 1, "loop", classify=True)
    assert evaluation_modes(omniglot(algorithm={"name": "maml"}), maml) == [("", maml)]


def test_classification_test_reports_both_figures(omniglot_cache):
    """On Omniglot episodes: the headline keys are the accuracies of a learner built with
    ``transductive=False``, and the transductive figures sit beside them."""
    omniglot_root()
    config = omniglot(str(omniglot_cache), algorithm={"name": "protonet"}, eval={"tasks": 12, "queries": 3, "shots": [1, 2]})
    tasks = descriptors(config.seed, "test", 0, config.eval.tasks)
    params = ProtoNet().init_meta_params(0)
    out = classification_test(config, ProtoNet(), params, tasks, [1])
    assert list(out) == ["acc_4way_1shot", "acc_4way_2shot", "acc_4way_1shot_transductive", "acc_4way_2shot_transductive"]
    for shots in (1, 2):
        family = build_family(config, shots=shots, queries=3)
        for transductive, key in ((False, f"acc_4way_{shots}shot"), (True, f"acc_4way_{shots}shot_transductive")):
            expected = accuracies(ProtoNet(transductive=transductive), family, params, tasks, [None], 3)[:, 0].mean()
            assert out[key].mean == pytest.approx(float(expected), abs=1e-9)
