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


class SawyerEnv(gym.Env):
    """A metaworld Sawyer environment as a family's env (it holds one; gymnasium's checker
    wants no wrapper).

    - The observation space is metaworld's, except that the hidden goal's three entries
      (always 0) are declared unbounded instead of [0, 0]: a Box with equal bounds is what
      gymnasium's checker rejects, and the observation is exactly metaworld's 39 numbers.
    - ``reset(seed=...)`` also seeds metaworld's generator (its own ``reset`` ignores the
      seed); a task's start state is fixed by its goal, so episodes differ only by their actions.
    - Episodes are truncated at ``max_path_length`` by metaworld itself; ``info["success"]``
      is its success flag.
    """

    metadata = {"render_modes": []}

    def __init__(self, sawyer: Any, max_path_length: int):
        self.sawyer, self.horizon, self.env_name = sawyer, max_path_length, ""
        sawyer.max_path_length = max_path_length
        space = sawyer.observation_space
        low, high = space.low.copy(), space.high.copy()
        low[_GOAL], high[_GOAL] = -np.inf, np.inf
        self.observation_space = gym.spaces.Box(low, high, dtype=space.dtype)
        self.action_space = sawyer.action_space

    def set_task(self, env_name: str, task: Any) -> None:
        self.sawyer.set_task(task)
        self.env_name = env_name

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.sawyer.seed(seed)
        return self.sawyer.reset(seed=seed, options=options)

    def step(self, action):
        return self.sawyer.step(action)

    def close(self) -> None:
        self.sawyer.close()


class MetaWorld(EnvFamily):
    """``benchmark``: ML1 (one class, ``env_name``; train and test goals differ), ML10 or
    ML45 (held-out test classes). ``seed``: the benchmark's seed (which 50 goals per class).
    ``max_path_length``: 500 as the benchmark defines it; shorter only for smoke tests."""

    name = "metaworld"

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
        self._idle: dict[str, list[SawyerEnv]] = {}  # this process's environments not in use, per class

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

    def _new(self, env_name: str) -> SawyerEnv:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        return SawyerEnv(ALL_V3_ENVIRONMENTS[env_name](), self.horizon)

    def build(self, params: TaskParams) -> SawyerEnv:
        idle = self._idle.get(params["env_name"])
        env = idle.pop() if idle else self._new(params["env_name"])
        tasks = _tasks_by_class(self.benchmark, self.env_name, self.seed)[params["split"], params["env_name"]]
        env.set_task(params["env_name"], tasks[params["task"]])
        return env

    def assign(self, env: gym.Env, params: TaskParams) -> gym.Env:
        """Reuses ``env`` for a task of its class; otherwise parks it and takes (or builds)
        one of the task's class, so a worker builds each class's environment once."""
        if isinstance(env, SawyerEnv):
            self._idle.setdefault(env.env_name, []).append(env)  # of the task's class: build() takes it straight back
        else:
            env.close()
        return self.build(params)

    def _probe(self) -> gym.Env:
        """Spaces without the benchmark: they do not depend on the task."""
        if getattr(self, "_probe_env", None) is None:
            self._probe_env = self._new(self.classes["train"][0])
        return self._probe_env

    def __repr__(self) -> str:
        what = f"ML1 {self.env_name}" if self.benchmark == "ML1" else self.benchmark
        return f"MetaWorld({what}, seed={self.seed}, max_path_length={self.horizon})"
