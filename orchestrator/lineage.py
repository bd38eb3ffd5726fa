"""Lineage: where a run's code, environment and data came from, in the places MLflow shows them.

- Source tags (``mlflow.source.*``): the git commit, branch, remote and whether the tree had
  uncommitted changes, of the metaorch source that ran; the entry point (``metaorch train``).
  A submitted job's working directory travels without ``.git``: ``metaorch submit`` tags the
  run from the submitting checkout, and the job adds only what it can see.
- ``requirements.txt``: every installed distribution as ``pip freeze`` lists it (from
  ``importlib.metadata``, no subprocess), so the environment can be rebuilt.
- Dataset inputs (what ``mlflow.log_input`` records): the task family as an MLflow dataset
  with a source and a profile. Omniglot: the archive folder, each archive's SHA-256 and the
  split; a meta-RL environment family: its options and the simulator's versions; sinusoids
  (generated from the seed): the family's options.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from metaorch.orchestrator import registry
from metaorch.orchestrator.config import Config
from metaorch.orchestrator.tracking import Tracker

log = logging.getLogger(__name__)
CODE_ROOT = Path(__file__).resolve().parents[1]  # the metaorch source tree (editable install: the checkout)
_PATHS = ("root", "cache_dir", "download", "url")  # where the data is and comes from: the source, not options
_SIMULATORS = ("gymnasium", "mujoco", "metaworld")


def git_tags(path: Path = CODE_ROOT) -> dict[str, str]:
    """MLflow's git source tags for the checkout holding ``path``; none outside a git checkout."""
    from mlflow.utils import mlflow_tags as t

    try:
        import git

        repo = git.Repo(path, search_parent_directories=True)
        tags = {t.MLFLOW_GIT_COMMIT: repo.head.commit.hexsha, t.MLFLOW_GIT_DIRTY: str(repo.is_dirty(untracked_files=False)).lower()}
        if not repo.head.is_detached:
            tags[t.MLFLOW_GIT_BRANCH] = repo.active_branch.name
        if repo.remotes:
            tags[t.MLFLOW_GIT_REPO_URL] = repo.remotes[0].url
        return tags
    except Exception:  # no git executable, no checkout (a job's working dir), an empty repository
        return {}


def source_tags(entry_point: str) -> dict[str, str]:
    """``mlflow.source.name`` / type, the entry point, and the git tags where a checkout is."""
    from mlflow.utils import mlflow_tags as t

    return {t.MLFLOW_SOURCE_NAME: f"metaorch {entry_point}", t.MLFLOW_SOURCE_TYPE: "LOCAL", t.MLFLOW_PROJECT_ENTRY_POINT: entry_point} | git_tags()


def requirements() -> str:
    """Installed distributions as ``name==version`` lines, sorted, as ``pip freeze`` prints them."""
    found = {d.metadata["Name"]: d.version for d in md.distributions() if d.metadata["Name"]}
    return "".join(f"{name}=={found[name]}\n" for name in sorted(found, key=str.lower))


def _options(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """The family constructor's arguments: the given ones, the rest at their defaults."""
    params = inspect.signature(cls).parameters.items()
    return {k: given.get(k, p.default) for k, p in params if k not in _PATHS and (k in given or p.default is not p.empty)}


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def dataset(config: Config) -> Any:
    """The run's data as an MLflow dataset (a :class:`MetaDataset` with a profile)."""
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class Described(MetaDataset):
        """MetaDataset does not carry a profile; the UI shows one beside the source."""

        def __init__(self, source: Any, name: str, profile: dict[str, Any]):
            self._profile = profile
            super().__init__(source, name=name)

        @property
        def profile(self) -> dict[str, Any]:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return super().to_dict() | {"profile": json.dumps(self._profile, sort_keys=True)}

        def _compute_digest(self) -> str:
            """The profile in it: another archive or option is another dataset."""
            return mlflow.data.digest_utils.get_normalized_md5_digest([json.dumps(self._profile, sort_keys=True).encode()])

    t, family = config.task, registry.task(config.task.name)
    cls = family.builder()
    if family.problem == "rl":
        profile = {"family": t.name, "options": _options(cls, t.options), "trial_episodes": t.trial_episodes, "versions": _versions(_SIMULATORS)}
        return Described(CodeDatasetSource({"family": t.name, "generator": f"{cls.__module__}:{cls.__qualname__}"}), t.name, profile)
    fields = config.data.model_dump() | t.model_dump()
    profile = {"family": t.name, "options": _options(cls, {k: v for k, v in fields.items() if k not in _PATHS})}
    if not family.needs_data:
        return Described(CodeDatasetSource({"family": t.name, "generator": f"{cls.__module__}:{cls.__qualname__}"}), t.name, profile)
    from metaorch.tasks.omniglot.archives import find_archives
    from metaorch.tasks.omniglot.data import data_root

    root = data_root(config.data.root, config.data.cache_dir).absolute()
    kind, archives = find_archives(root)
    profile |= {"set": kind, "split": config.data.split, "archives": {a.path.name: f"sha256:{a.fingerprint()}" for a in archives}}
    with warnings.catch_warnings():  # MLflow registers the local-file source twice and says so
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(root))
    return Described(source, t.name, profile)


def log_lineage(tracker: Tracker, config: Config, entry_point: str) -> None:
    """Source tags, requirements.txt and the dataset input of ``tracker``'s run (nothing when tracking is off)."""
    if tracker.client is None:
        return
    tracker.set_tags(source_tags(entry_point))
    tracker.log_text(requirements(), "requirements.txt")
    try:
        data = dataset(config)
    except Exception as exc:  # lineage never stops a run the data checks let through
        log.warning("no dataset input for run %s: %s", tracker.run_id, exc)
        return
    tracker.log_inputs([data], context="training")
