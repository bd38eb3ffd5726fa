"""Meta-World v3 (Farama ``metaworld``): the ML1, ML10 and ML45 meta-RL benchmarks.

The tasks are metaworld's own: its Benchmark classes (``metaworld.ML1(env_name, seed)``,
``ML10``, ``ML45``) draw 50 goals per class for the train and for the test split, with the
goal hidden from the observation (``partially_observable``), and ``env.set_task`` switches a
Sawyer environment to one of them. A task's parameters name it: ``{"split", "env_name",
"task"}``, the index of the goal among that class's tasks in that split.

Descriptor -> task: descriptor ``index`` picks the class round-robin (``index % classes``),
so a meta-batch that is a multiple of the class count holds each class equally often, as
metaworld's own vector environments do; the goal is the ``index // classes``-th entry of a
permutation of the class's 50 goals drawn from (seed, split, iteration, class), so a
meta-batch repeats no goal of a class before it has used all 50 (metaworld's
pseudo-random task selection). Train descriptors use the train classes and tasks, test (and
val) ones the test classes and tasks only.

Costs, measured on the 2 shared cores: building the benchmark takes 3.6 s for ML1, 11 s
for ML10 and about 50 s for ML45 (metaworld resets every class 50 times to draw its goals),
so it is built once per process, on first use, never by config validation; a Sawyer
environment takes 0.08 s to build, so each worker keeps one per class it has used and
switches it with ``set_task``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from metaorch.tasks.base import TaskDescriptor
from metaorch.tasks.rl.base import EnvFamily, TaskParams, check_keys, check_option

BENCHMARKS = ("ML1", "ML10", "ML45")
GOALS_PER_CLASS = 50  # metaworld._N_GOALS: the goals its benchmarks draw per class and split
_SPLITS = ("train", "test")
_GOAL = slice(36, 39)  # the goal's place in the 39-number observation; zeros when hidden


def class_names(benchmark: str, env_name: str) -> dict[str, tuple[str, ...]]:
    """{split: class names} of a benchmark, from metaworld's tables (no benchmark built)."""
    from metaworld import env_dict

    if benchmark == "ML1":
        return {"train": (env_name,), "test": (env_name,)}
    table = {"ML10": env_dict.ML10_V3, "ML45": env_dict.ML45_V3}[benchmark]
    return {split: tuple(table[split]) for split in _SPLITS}


@functools.lru_cache(maxsize=4)
def load_benchmark(benchmark: str, env_name: str, seed: int) -> Any:
    """metaworld's Benchmark object, built once per process (seconds to a minute)."""
    import metaworld

    if benchmark == "ML1":
        return metaworld.ML1(env_name, seed=seed)
    return getattr(metaworld, benchmark)(seed=seed)


@functools.lru_cache(maxsize=4)
def _tasks_by_class(benchmark: str, env_name: str, seed: int) -> dict[tuple[str, str], list[Any]]:
    bench = load_benchmark(benchmark, env_name, seed)
    out: dict[tuple[str, str], list[Any]] = {}
    for split, tasks in (("train", bench.train_tasks), ("test", bench.test_tasks)):
        for task in tasks:
            out.setdefault((split, task.env_name), []).append(task)
    return out


def _hidden_goal_space(space: gym.spaces.Box) -> gym.spaces.Box:
    low, high = space.low.copy(), space.high.copy()
    low[_GOAL], high[_GOAL] = -np.inf, np.inf
    return gym.spaces.Box(low, high, dtype=space.dtype)


class _Sawyers:
    """A process's metaworld environments, per class: each class is built once (0.08 s) and
    lent to whichever family env plays one of its tasks."""

    def __init__(self, benchmark: str, env_name: str, seed: int):
        self.key = (benchmark, env_name, seed)
        self.idle: dict[str, list[Any]] = {}

    def take(self, env_name: str) -> Any:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        idle = self.idle.get(env_name)
        return idle.pop() if idle else ALL_V3_ENVIRONMENTS[env_name]()

    def give_back(self, env_name: str, sawyer: Any) -> None:
        self.idle.setdefault(env_name, []).append(sawyer)

    def task(self, params: TaskParams) -> Any:
        return _tasks_by_class(*self.key)[params["split"], params["env_name"]][params["task"]]


class SawyerEnv(gym.Env):
    """A Meta-World task as a family's env: it borrows a metaworld environment of the task's
    class and switches it with metaworld's ``set_task`` (another class: it gives its
    environment back and borrows one of that class). gymnasium's checker wants no wrapper,
    so it holds the environment rather than wrapping it.

    - The observation space is metaworld's (the same for every class), except that the hidden
      goal's three entries (always 0) are declared unbounded instead of [0, 0]: a Box with
      equal bounds is what gymnasium's checker rejects; the observation is metaworld's 39 numbers.
    - ``reset(seed=...)`` also seeds metaworld's generator (its own ``reset`` ignores the
      seed); a task's start state is fixed by its goal, so episodes differ only by their actions.
    - Episodes are truncated at ``max_path_length`` by metaworld itself; ``info["success"]``
      is its success flag.
    """

    metadata = {"render_modes": []}

    def __init__(self, sawyers: _Sawyers, params: TaskParams, max_path_length: int):
        self.sawyers, self.horizon = sawyers, max_path_length
        self.env_name = params["env_name"]
        self.sawyer = sawyers.take(self.env_name)
        self.observation_space = _hidden_goal_space(self.sawyer.observation_space)
        self.action_space = self.sawyer.action_space
        self.set_task(params)

    def set_task(self, params: TaskParams) -> None:
        if params["env_name"] != self.env_name:
            self.sawyers.give_back(self.env_name, self.sawyer)
            self.env_name, self.sawyer = params["env_name"], self.sawyers.take(params["env_name"])
        self.sawyer.set_task(self.sawyers.task(params))
        self.sawyer.max_path_length = self.horizon

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.sawyer.seed(seed)
        return self.sawyer.reset(seed=seed, options=options)

    def step(self, action):
        return self.sawyer.step(action)

    def close(self) -> None:
        self.sawyers.give_back(self.env_name, self.sawyer)  # a later env of this process reuses it


class MetaWorld(EnvFamily):
    """``benchmark``: ML1 (one class, ``env_name``; train and test goals differ), ML10 or
    ML45 (held-out test classes). ``seed``: the benchmark's seed (which 50 goals per class).
    ``max_path_length``: 500 as the benchmark defines it; shorter only for smoke tests."""

    name = "metaworld"
    # A Sawyer environment holds ~21 MB (60 ML10 ones, RSS): 100 per worker is ~2 GB, a training
    # iteration's share on 2 workers (ML1 / ML10: 10 tasks x 10 episodes each); the meta-test's 50
    # tasks at once took 250 per worker and ran a 24 GB machine out of memory.
    max_envs = 100

    def __init__(self, benchmark: str = "ML1", env_name: str = "reach-v3", seed: int = 0, max_path_length: int = 500):
        check_option(self.name, "benchmark", benchmark in BENCHMARKS, benchmark, f"one of {list(BENCHMARKS)}")
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if benchmark == "ML1":
            check_option(self.name, "env_name", env_name in ALL_V3_ENVIRONMENTS, env_name, "a Meta-World v3 environment, e.g. reach-v3")
        check_option(self.name, "seed", isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, seed, "an integer >= 0")
        ok = isinstance(max_path_length, int) and 1 <= max_path_length <= 500
        check_option(self.name, "max_path_length", ok, max_path_length, "an integer from 1 to 500")
        self.benchmark, self.env_name, self.seed = benchmark, env_name if benchmark == "ML1" else "", seed
        self.horizon = max_path_length
        self.classes = class_names(benchmark, env_name)
        self._sawyers = _Sawyers(benchmark, self.env_name, seed)

    def _split(self, split: str) -> str:
        return "train" if split == "train" else "test"  # val: held out like test

    def task(self, descriptor: TaskDescriptor) -> TaskParams:
        split = self._split(descriptor.split)
        classes = self.classes[split]
        c = descriptor.index % len(classes)
        seq = np.random.SeedSequence([descriptor.seed, _SPLITS.index(split), descriptor.iteration, c])
        order = np.random.default_rng(seq).permutation(GOALS_PER_CLASS)
        return {"split": split, "env_name": classes[c], "task": int(order[(descriptor.index // len(classes)) % GOALS_PER_CLASS])}

    def sample(self, rng: np.random.Generator) -> TaskParams:
        classes = self.classes["train"]
        return {"split": "train", "env_name": classes[int(rng.integers(len(classes)))], "task": int(rng.integers(GOALS_PER_CLASS))}

    def check(self, params: Mapping[str, Any]) -> TaskParams:
        check_keys(self.name, params, ["split", "env_name", "task"])
        split, env_name, task = params["split"], params["env_name"], params["task"]
        check_option(self.name, "split", split in _SPLITS, split, f"one of {list(_SPLITS)}")
        check_option(self.name, "env_name", env_name in self.classes[split], env_name, f"one of the {split} classes {list(self.classes[split])}")
        ok = isinstance(task, (int, np.integer)) and not isinstance(task, bool) and 0 <= task < GOALS_PER_CLASS
        check_option(self.name, "task", ok, task, f"an integer from 0 to {GOALS_PER_CLASS - 1}")
        return {"split": split, "env_name": env_name, "task": int(task)}

    def label(self, params: TaskParams) -> str:
        """The task's class: success is also reported per class."""
        return params["env_name"]

    def build(self, params: TaskParams) -> SawyerEnv:
        return SawyerEnv(self._sawyers, params, self.horizon)

    @functools.cached_property
    def _spaces(self) -> tuple[gym.spaces.Box, gym.spaces.Box]:
        """Without building the benchmark: the spaces are the same for every class and task."""
        name = self.classes["train"][0]
        sawyer = self._sawyers.take(name)
        self._sawyers.give_back(name, sawyer)
        return _hidden_goal_space(sawyer.observation_space), sawyer.action_space

    @property
    def observation_space(self) -> gym.spaces.Box:
        return self._spaces[0]

    @property
    def action_space(self) -> gym.spaces.Box:
        return self._spaces[1]

    def __repr__(self) -> str:
        what = f"ML1 {self.env_name}" if self.benchmark == "ML1" else self.benchmark
        return f"MetaWorld({what}, seed={self.seed}, max_path_length={self.horizon})"
