"""The rollout worker: steps environments for meta-RL and runs algorithms' per-task plans.

A plain class, like :class:`workers.worker.MetaWorker`, built from a picklable ``build``
callable (returning an env family and a policy); :class:`RolloutPool` runs it in actors
(:mod:`workers.actor`) or in the driver (the ``inprocess`` transport).

Speed: every plan of a call runs in its own thread, and each ``sample`` it makes waits at
a barrier (:mod:`workers.barrier`); when every plan is waiting (or done), all their requests are stepped together
in one loop: one policy forward per distinct parameter vector per step (one in all for a
pre-adaptation batch), then one call of :func:`tasks.rl.batched.stepper`'s stepper for all
environments (HalfCheetah: MuJoCo steps each env's data, numpy computes all observations
and rewards at once; other envs: each one's own ``step``), no vector-env layer, into
preallocated numpy buffers. Environments are reused across tasks (``family.assign``); a
family whose environments are heavy caps how many a worker steps together (``max_envs``).

Determinism: an episode is fixed by its task descriptor, the number of the plan's
``sample`` call and the episode's number: its reset seed and its action noise come from
its own generator (policies that take ``noise``, see ``algorithms.rl.policies``), and
forwards are padded to at least :data:`MIN_ROWS` rows (small batches take other BLAS
kernels). So trajectories do not depend on which tasks share a worker or a batch, nor on
the number of workers.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from metaorch.algorithms.rl.trajectories import Plan, Policy, Trajectories
from metaorch.tasks.base import TaskDescriptor
from metaorch.workers.barrier import Barrier, Request
from metaorch.workers.chunks import chunk
from metaorch.workers.pool import WorkerPool

if TYPE_CHECKING:  # gymnasium and MuJoCo load in the actors that step environments, not in every importer
    import gymnasium as gym

    from metaorch.tasks.rl.base import EnvFamily, TaskParams

Build = Callable[[], tuple["EnvFamily", Policy]]
MIN_ROWS = 8
_RESET, _NOISE = 0, 1  # spawn-key tags of an episode's two random streams


@dataclass(frozen=True)
class RolloutTask:
    """A task: drawn from its descriptor, or (meta-test) given as explicit ``params``,
    in which case the descriptor still seeds the episodes."""

    descriptor: TaskDescriptor
    params: TaskParams | None = None


@dataclass(frozen=True)
class RolloutItem:
    """A chunk of tasks and the plan to run on each: the unit of sharding and of order."""

    index: int
    tasks: tuple[RolloutTask | TaskDescriptor, ...]
    plan: Plan


@dataclass
class RolloutResult:
    index: int
    outputs: list[dict[str, Any]] = field(default_factory=list)  # the plan's output, one per task


def episode_streams(descriptor: TaskDescriptor, call: int, episode: int) -> tuple[int, np.random.Generator]:
    """(reset seed, action-noise generator) of one episode, independent of the task's own stream."""
    root = descriptor.rng().bit_generator.seed_seq
    reset = np.random.SeedSequence(root.entropy, spawn_key=(call, episode, _RESET))
    noise = np.random.SeedSequence(root.entropy, spawn_key=(call, episode, _NOISE))
    return int(reset.generate_state(1)[0]), np.random.default_rng(noise)


class RolloutWorker:
    def __init__(self, build: Build, device: torch.device = torch.device("cpu"), batched: bool = True):
        """``batched=False`` steps every environment through its own gymnasium ``step`` even
        where :mod:`tasks.rl.batched` has a batched stepper (the same trajectories, slower)."""
        self.device, self.batched = device, batched
        self.family, self.policy = build()
        if hasattr(self.policy, "to"):
            self.policy.to(self.device)
        self.horizon = self.family.horizon
        self.obs_dim = int(np.prod(self.family.observation_space.shape))
        space = self.family.action_space
        self.discrete = hasattr(space, "n")  # Discrete; otherwise a Box
        self.act_shape: tuple[int, ...] = () if self.discrete else tuple(space.shape)
        self.low, self.high = (None, None) if self.discrete else (space.low, space.high)
        self.noisy = getattr(self.policy, "takes_noise", False) or "noise" in inspect.signature(self.policy.act).parameters
        self.envs: list[gym.Env] = []

    def run(self, params: np.ndarray, items: Sequence[RolloutItem]) -> list[RolloutResult]:
        """Every item's plan on every one of its tasks, at ``params``; results in item order."""
        theta = torch.as_tensor(np.array(params, copy=True), device=self.device)
        jobs = [(item.plan, task) for item in items for task in item.tasks]
        outputs = iter(self.run_plans(theta, jobs))
        return [RolloutResult(item.index, [next(outputs) for _ in item.tasks]) for item in items]

    # -- plans: one thread each, their samples batched ---------------------------------------
    def run_plans(self, params: torch.Tensor, jobs: Sequence[tuple[Plan, RolloutTask | TaskDescriptor]]) -> list[dict[str, Any]]:
        tasks = [t if isinstance(t, RolloutTask) else RolloutTask(t) for _, t in jobs]
        resolved = [self.family.task(t.descriptor) if t.params is None else self.family.check(t.params) for t in tasks]
        barrier = Barrier(len(jobs))
        outputs: list[dict[str, Any] | None] = [None] * len(jobs)
        errors: list[BaseException] = []

        def work(k: int, plan: Plan) -> None:
            calls = iter(range(1 << 30))

            def sample(theta: torch.Tensor, episodes: int, deterministic: bool = False) -> Trajectories:
                request = Request(k, resolved[k], tasks[k].descriptor, next(calls), theta, episodes, deterministic)
                return barrier.wait_for(request)

            barrier.enter()
            try:
                # a plan that ``takes_descriptor`` (PEARL's: its per-task prior z) also gets its task's descriptor
                outputs[k] = plan(sample, params, tasks[k].descriptor) if getattr(plan, "takes_descriptor", False) else plan(sample, params)
            except BaseException as exc:  # re-raised by the calling thread
                errors.append(exc)
            finally:
                barrier.leave()

        threads = [threading.Thread(target=work, args=(k, plan), daemon=True) for k, (plan, _) in enumerate(jobs)]
        for th in threads:
            th.start()
        failure: BaseException | None = None
        while (batch := barrier.next_batch()) is not None:
            try:
                results = [traj for part in self._parts(batch) for traj in self.rollout(part)]
            except BaseException as exc:
                failure = exc
                barrier.deliver(batch, [None] * len(batch), exc, final=True)
                break
            barrier.deliver(batch, results, None)
        for th in threads:
            th.join()
        if failure is not None:
            raise failure
        if errors:
            raise errors[0]
        return outputs  # type: ignore[return-value]

    # -- the batched stepping loop -------------------------------------------------------
    def _parts(self, batch: Sequence[Request]) -> list[Sequence[Request]]:
        """The batch in consecutive runs of at most ``family.max_envs`` episodes (a larger request
        runs alone), stepped one after the other: a worker holds that many environments, not one per
        episode of its whole shard (a meta-test of 50 Meta-World tasks on 2 workers held 250 each)."""
        cap = self.family.max_envs
        if cap is None:
            return [batch]
        parts: list[list[Request]] = []
        size = 0
        for request in batch:
            if not parts or size + request.episodes > cap:
                parts.append([])
                size = 0
            parts[-1].append(request)
            size += request.episodes
        return parts

    def _envs_for(self, tasks: Sequence[TaskParams]) -> list[gym.Env]:
        while len(self.envs) < len(tasks):
            self.envs.append(self.family.build(tasks[len(self.envs)]))
        for i, task in enumerate(tasks):
            self.envs[i] = self.family.assign(self.envs[i], task)
        return self.envs[: len(tasks)]

    def rollout(self, requests: Sequence[Request]) -> list[Trajectories]:
        """Step every episode of every request to the end; one forward per parameter group per step,
        one call of the family's stepper (:mod:`tasks.rl.batched`) for all environments."""
        from metaorch.tasks.rl.batched import stepper  # MuJoCo loads where environments step
        slots = [(r, e) for r in requests for e in range(r.episodes)]
        n, horizon, d = len(slots), self.horizon, self.obs_dim
        envs = self._envs_for([r.task for r, _ in slots])
        obs = np.zeros((horizon, n, d), np.float32)
        next_obs = np.zeros((horizon, n, d), np.float32)
        actions = np.zeros((horizon, n, *self.act_shape), np.int64 if self.discrete else np.float32)
        rewards = np.zeros((horizon, n), np.float32)
        log_probs = np.zeros((horizon, n), np.float32)
        terminated = np.zeros((horizon, n), bool)
        success = np.zeros((horizon, n), np.float32)
        mask = np.zeros((horizon, n), np.float32)
        current = np.zeros((max(n, MIN_ROWS), d), np.float32)  # padded rows stay zero
        noise = np.zeros((horizon, max(n, MIN_ROWS), *self.act_shape), np.float32)
        for i, (r, e) in enumerate(slots):
            seed, gen = episode_streams(r.descriptor, r.call, e)
            current[i] = np.asarray(envs[i].reset(seed=seed)[0], np.float32).reshape(-1)
            noise[:, i] = gen.uniform(size=horizon) if self.discrete else gen.standard_normal((horizon, *self.act_shape))
        groups = self._groups(requests)
        noise_t = torch.as_tensor(noise, device=self.device)
        state = self.policy.initial_state(max(n, MIN_ROWS))
        steps = stepper(envs, d, self.batched)
        active = np.arange(n)
        with torch.inference_mode():
            for t in range(horizon):
                if not len(active):
                    break
                obs[t] = current[:n]
                act, logp, state = self._act(groups, torch.as_tensor(current, device=self.device), state, noise_t[t])
                act, logp = act[:n].cpu().numpy(), logp[:n].cpu().numpy()
                actions[t], log_probs[t] = act, logp
                to_env = act if self.discrete else np.clip(act, self.low, self.high)
                mask[t, active] = 1.0
                step = steps.step(to_env, active)
                current[active] = step.observations
                rewards[t, active], success[t, active], terminated[t, active] = step.rewards, step.success, step.terminated
                next_obs[t] = current[:n]
                active = active[~(step.terminated | step.truncated)]
        real = mask > 0
        obs[~real], next_obs[~real], actions[~real] = 0, 0, 0
        out, start = [], 0
        for r in requests:
            cut = slice(start, start + r.episodes)
            start += r.episodes
            out.append(
                Trajectories(
                    observations=np.ascontiguousarray(obs[:, cut]),
                    actions=np.ascontiguousarray(actions[:, cut]),
                    rewards=np.ascontiguousarray(rewards[:, cut]),
                    log_probs=np.ascontiguousarray(log_probs[:, cut]),
                    next_observations=np.ascontiguousarray(next_obs[:, cut]),
                    terminated=np.ascontiguousarray(terminated[:, cut]),
                    mask=np.ascontiguousarray(mask[:, cut]),
                    success=np.ascontiguousarray(success[:, cut]),
                )
            )
        return out

    def _groups(self, requests: Sequence[Request]) -> list[tuple[int, int, torch.Tensor, bool]]:
        """Row ranges that share a parameter vector (the same tensor object) and mode.

        A single group covers the padded rows too; otherwise each group of fewer than
        MIN_ROWS rows is padded on its own at forward time."""
        groups: list[tuple[int, int, torch.Tensor, bool]] = []
        start = 0
        for r in requests:
            end = start + r.episodes
            if groups and groups[-1][2] is r.params and groups[-1][3] == r.deterministic:
                groups[-1] = (groups[-1][0], end, r.params, r.deterministic)
            else:
                groups.append((start, end, r.params, r.deterministic))
            start = end
        return groups

    def _act(self, groups, obs: torch.Tensor, state, noise: torch.Tensor):
        kwargs = {}
        if len(groups) == 1:
            _, _, params, det = groups[0]
            if self.noisy:
                kwargs["noise"] = noise
            return self.policy.act(params.to(self.device), obs, state, det, **kwargs)
        acts, logps, states = [], [], []
        for start, end, params, det in groups:
            o, nz = _pad_rows(obs[start:end], MIN_ROWS), _pad_rows(noise[start:end], MIN_ROWS)
            st = None if state is None else _pad_rows(state[start:end], MIN_ROWS)
            if self.noisy:
                kwargs["noise"] = nz
            a, lp, st = self.policy.act(params.to(self.device), o, st, det, **kwargs)
            k = end - start
            acts.append(a[:k])
            logps.append(lp[:k])
            states.append(None if st is None else st[:k])
        n_pad = obs.shape[0] - groups[-1][1]
        act, logp = torch.cat(acts), torch.cat(logps)
        if n_pad:  # keep the padded tail so shapes stay [rows, ...]
            act = torch.cat([act, act.new_zeros((n_pad, *act.shape[1:]))])
            logp = torch.cat([logp, logp.new_zeros(n_pad)])
        new_state = None
        if state is not None:
            new_state = torch.cat(states + ([state[groups[-1][1] :]] if n_pad else []))
        return act, logp, new_state


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] >= rows:
        return x
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])


class RolloutPool(WorkerPool):
    """:class:`WorkerPool` (placement, replacement of dead or straggling actors, ordered
    results, any transport) over rollout workers; parameters go out once per call.

    Tasks are cut into chunks of ``chunk_size`` (the unit a lost worker's shard is re-run
    in); each worker steps all the tasks of its shard together.
    """

    worker_cls = RolloutWorker

    def run_plan(
        self, params: np.ndarray | torch.Tensor, tasks: Sequence[RolloutTask | TaskDescriptor], plan: Plan, chunk_size: int = 1
    ) -> list[dict[str, Any]]:
        """``plan``'s output for every task, in task order."""
        if isinstance(params, torch.Tensor):
            params = params.detach().cpu().numpy()
        items = chunk(tasks, chunk_size, partial(RolloutItem, plan=plan))
        return [out for result in self.run(np.asarray(params, np.float32), items) for out in result.outputs]
