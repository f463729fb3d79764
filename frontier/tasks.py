"""Running models: train (or resume) each run directory once, evaluate it, many at a time.

A :class:`Task` is one model: a training config, a run directory, the λ values to evaluate it at
and the :class:`Protocol` to evaluate them with. :func:`run_tasks` brings every task's directory
up to date — trained, and evaluated with that protocol at those λ — doing only what is missing
(``run_status``), in ``workers`` processes. A model evaluated at several λ (an OAT model) is
trained by one job and then evaluated by one job per λ, so its evaluation spreads over the
workers instead of keeping one busy for as long as all the others together; each λ's evaluation
is independent of the others (every attack draws an example's random start from the example
itself), so the merged ``eval.json`` is exactly what one process evaluating every λ would write.
A :class:`FollowUp` adds tasks that can only be made once others are up to date (the mixture of
two trained end models, a second protocol): they join the same pool the moment they can.

Training takes the run directory's lock (:class:`oat.lock.RunLock`): a second process sweeping
the same directory skips the runs another holds and waits for them at the end, so every run is
trained once.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from oat.config import Config, ConfigError, config_differences
from oat.distributed import set_threads
from oat.experiment import check
from oat.lock import RunLock
from oat.protocol import Protocol
from oat.runs import (CHECKPOINT, EVAL_RESULT, RUN_FILES, checkpoint_file, is_mixture, read_result, trained_config,
                      trained_epochs, write_result)


@dataclass(frozen=True)
class Task:
    """One model to train (or resume) into ``run_dir`` and evaluate at ``lambdas`` with ``protocol``."""

    name: str
    run_dir: str
    config: Config
    protocol: Protocol
    lambdas: tuple[float, ...]
    result: str = EVAL_RESULT  # where in run_dir the evaluation goes (a second protocol: another file)




def stale_keys(run_dir: Path, config: Config) -> list[str]:
    """The result-changing keys in which the run in ``run_dir`` was trained differently from
    ``config`` (empty for a run that has no checkpoint yet: it trains from scratch anyway)."""
    saved = trained_config(run_dir)
    return [] if saved is None else config_differences(saved, config)


def run_status(run_dir: Path, config: Config, protocol: Protocol, lambdas=None, result: str = EVAL_RESULT) -> str:
    """``done`` (trained, and evaluated with this protocol at these λ), ``evaluate``, ``resume``,
    ``train``, or ``stale`` (trained under another config: see :func:`stale_keys`). A mixture of
    two runs (:mod:`oat.mixture`) has nothing to train: ``done`` or ``evaluate``."""
    if not is_mixture(run_dir) and not (run_dir / CHECKPOINT).exists():
        return "train"
    if not is_mixture(run_dir) and stale_keys(run_dir, config):
        return "stale"
    if not is_mixture(run_dir) and trained_epochs(run_dir) < config.train.epochs:
        return "resume"
    try:
        stored = read_result(run_dir, result)
    except (OSError, ValueError):
        return "evaluate"
    same_lambdas = lambdas is None or [p.get("lambda") for p in stored.get("points", [])] == list(lambdas)
    # An evaluation from before test subsets were fingerprinted cannot be matched: evaluate again.
    fingerprinted = "subset" in stored
    return "done" if stored.get("protocol") == protocol.as_dict() and same_lambdas and fingerprinted else "evaluate"


def clear_run(run_dir: Path) -> None:
    """Remove what a run directory's training and evaluation wrote, so it trains afresh."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def _stale_message(task: Task, others: int = 0) -> str:
    keys = stale_keys(Path(task.run_dir), task.config)
    shown = "; ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    more = f" (and {others} more point{'s' if others > 1 else ''})" if others else ""
    return (f"{task.name} in {task.run_dir} was trained with another config ({shown}){more}; "
            "pass --retrain-stale to retrain it")


def check_tasks(tasks: list[Task], retrain_stale: bool = False) -> None:
    """Refuse, before anything trains, configs that cannot train and points trained under
    another config (unless ``retrain_stale``)."""
    for task in tasks:
        check(task.config)
    stale = [t for t in tasks if stale_keys(Path(t.run_dir), t.config)]
    if stale and not retrain_stale:
        raise ConfigError(_stale_message(stale[0], len(stale) - 1))



def _train_job(task: Task, retrain_stale: bool, wait: bool) -> str:
    """Train (or resume) the task's run under its lock; returns the status it found, or
    ``held by …`` when another process holds the lock and ``wait`` is False."""
    from oat.experiment import train

    lock = RunLock(task.run_dir)
    if not lock.try_acquire():
        if not wait:
            return f"held by {lock.holder()}"
        lock.acquire()
    try:
        run_dir = Path(task.run_dir)
        status = run_status(run_dir, task.config, task.protocol, task.lambdas, task.result)
        if status == "stale":
            if not retrain_stale:
                raise ConfigError(_stale_message(task))
            clear_run(run_dir)
        if status in ("train", "resume", "stale"):
            train(task.config, run_dir, resume=(status == "resume"), show_progress=False)
        return status
    finally:
        lock.release()


def _evaluate(task: Task, lambdas: list[float]) -> dict:
    """The task's model evaluated at ``lambdas`` with its protocol (nothing written)."""
    from oat.runs import evaluate_run, load_run

    model, state = load_run(Path(task.run_dir))
    protocol = task.protocol
    result = evaluate_run(model, state, lambdas, protocol)
    result["checkpoint"] = str(checkpoint_file(task.run_dir))
    result["protocol"] = protocol.as_dict()
    return result


def merge_results(parts: list[dict]) -> dict:
    """One evaluation result from results of the same model and protocol at different λ (in
    order): their points, their seconds summed, the consistency flags of all points."""
    from oat.evaluation import consistency_flags

    merged = dict(parts[0])
    merged["points"] = [point for part in parts for point in part["points"]]
    merged["seconds"] = sum(part["seconds"] for part in parts)
    merged["flags"] = consistency_flags(merged["points"], merged["n"])
    return merged


def _write_result(task: Task, result: dict) -> None:
    write_result(task.run_dir, result, task.result)


def run_one(task: Task, retrain_stale: bool = False, wait: bool = True) -> str:
    """Bring one task up to date in this process (train, then evaluate every λ); returns the
    status it found (``held by …`` when its lock is held and ``wait`` is False)."""
    status = _train_job(task, retrain_stale, wait)
    if status != "done" and not status.startswith("held"):
        _write_result(task, _evaluate(task, list(task.lambdas)))
    return status


def _job(job: tuple):
    """One job in a worker process: ``whole`` (train and evaluate), ``train``, or ``eval`` (one λ).
    ``index`` is the task's place in the scheduler's list, handed back with the outcome."""
    kind, index, task, lam, threads, retrain_stale, wait = job
    if threads:  # this worker's share of the cores, for every job it runs: a worker whose first job is
        # an evaluation (a mixture, a model trained earlier) never passes through the trainer's call
        os.environ["OMP_NUM_THREADS"] = str(threads)
        set_threads(threads)
    started = time.perf_counter()
    if kind == "eval":
        outcome = _evaluate(task, [lam])
    elif kind == "train":
        outcome = _train_job(task, retrain_stale, wait)
    else:
        outcome = run_one(task, retrain_stale, wait)
    return kind, index, lam, time.perf_counter() - started, outcome


@dataclass(frozen=True)
class FollowUp:
    """More tasks, known only once the tasks named in ``after`` are up to date (a mixture of two
    trained models, a second protocol on a trained model): ``make()``, called in the scheduling
    process at that moment, returns them. They join the same pool, so they fill the workers that
    the longest models' last jobs leave idle instead of waiting for every model to finish."""

    after: frozenset[str]
    make: Callable[[], list[Task]]


def run_tasks(tasks: list[Task], workers: int = 1, log=print, retrain_stale: bool = False,
              follow_ups: list[FollowUp] = ()) -> None:
    """Bring every task up to date, ``workers`` processes at a time (see the module docstring),
    and each of ``follow_ups``' tasks as soon as the tasks it waits for are.

    Each worker process gets an equal share of the CPU threads, so parallel runs don't fight
    over cores. A task whose lock another process holds is skipped at first and waited for at the
    end, when it is usually finished and only read."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    unknown = {name for f in follow_ups for name in f.after} - {t.name for t in tasks}
    if unknown:
        raise ValueError(f"follow-ups wait for tasks that are not run: {sorted(unknown)}")
    check_tasks(tasks, retrain_stale)
    schedule = _Schedule(tasks, follow_ups, retrain_stale, log)
    if workers == 1 or len(tasks) == 1 and len(tasks[0].lambdas) == 1 and not follow_ups:
        schedule.in_process(wait=False)
        schedule.in_process(wait=True)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        schedule.in_pool(workers, threads, wait=False)
        schedule.in_pool(workers, threads, wait=True)


class _Schedule:
    """The tasks of one :func:`run_tasks` call: which are queued, which finished, which another
    process held (run again, waiting for the lock, in a second pass), which follow-ups wait."""

    def __init__(self, tasks: list[Task], follow_ups, retrain_stale: bool, log):
        self.tasks, self.waiting, self.retrain_stale, self.log = list(tasks), list(follow_ups), retrain_stale, log
        self.queued = list(range(len(self.tasks)))  # task indices not yet started in this pass
        self.finished: set[str] = set()
        self.held: list[int] = []

    def _finish(self, index: int) -> None:
        """Mark a task up to date and queue the follow-ups it completes."""
        self.finished.add(self.tasks[index].name)
        ready = [f for f in self.waiting if f.after <= self.finished]
        self.waiting = [f for f in self.waiting if not f.after <= self.finished]
        for follow_up in ready:
            new = follow_up.make()
            check_tasks(new, self.retrain_stale)
            self.queued += range(len(self.tasks), len(self.tasks) + len(new))
            self.tasks += new

    def _outcome_of(self, index: int, seconds: float, status: str) -> None:
        if status.startswith("held"):
            self.held.append(index)
        else:
            self._finish(index)
        _report(self.log, self.tasks[index].name, seconds, status)

    def _next_pass(self, wait: bool) -> bool:
        """Start a pass: in the waiting pass, only the tasks another process held."""
        if wait:
            self.queued, self.held = self.held, []
        return bool(self.queued)

    def in_process(self, wait: bool) -> None:
        """Run each queued task whole in this process, in order."""
        if not self._next_pass(wait):
            return
        while self.queued:
            index = self.queued.pop(0)
            _, _, _, seconds, status = _job(("whole", index, self.tasks[index], None, None, self.retrain_stale, wait))
            self._outcome_of(index, seconds, status)

    def in_pool(self, workers: int, threads: int, wait: bool) -> None:
        """Run the queued tasks' jobs in a pool of ``workers`` processes, an evaluation job as soon
        as its model is trained (ahead of the waiting training jobs: it finishes a model)."""
        if not self._next_pass(wait):
            return
        pending_tasks, self.queued = self.queued, []
        pending = deque(self._first_job(i) for i in pending_tasks)
        parts: dict[int, dict] = {}
        trained: dict[int, tuple[str, float]] = {}
        done, in_flight = queue.SimpleQueue(), 0
        # No more processes than jobs can run at once (unknown while follow-ups may still come).
        size = workers if self.waiting else min(workers, sum(len(self.tasks[i].lambdas) for i in pending_tasks))
        with multiprocessing.get_context("spawn").Pool(size) as pool:
            while pending or in_flight:
                while pending and in_flight < workers:
                    kind, index, lam = pending.popleft()
                    pool.apply_async(_job, ((kind, index, self.tasks[index], lam, threads, self.retrain_stale, wait),),
                                     callback=done.put, error_callback=done.put)
                    in_flight += 1
                outcome = done.get()
                in_flight -= 1
                if isinstance(outcome, BaseException):
                    raise outcome
                kind, index, lam, seconds, result = outcome
                task = self.tasks[index]
                if kind == "eval":
                    parts.setdefault(index, {})[lam] = result
                    if len(parts[index]) == len(task.lambdas):
                        _write_result(task, merge_results([parts[index][v] for v in task.lambdas]))
                        status, train_seconds = trained[index]
                        self._finish(index)
                        _report(self.log, task.name, train_seconds + sum(p["seconds"] for p in parts[index].values()),
                                status, parts=len(task.lambdas))
                elif kind == "train" and result != "done" and not result.startswith("held"):
                    trained[index] = (result, seconds)
                    pending.extendleft(("eval", index, v) for v in reversed(task.lambdas))
                else:
                    self._outcome_of(index, seconds, result)
                pending.extend(self._first_job(i) for i in self.queued)  # follow-ups just released
                self.queued = []

    def _first_job(self, index: int) -> tuple:
        return ("train" if len(self.tasks[index].lambdas) > 1 else "whole", index, None)


def _report(log, name: str, seconds: float, status: str, parts: int = 1) -> None:
    if log is not None:
        what = {"done": "already finished", "evaluate": "evaluated", "resume": "resumed and evaluated",
                "train": "trained and evaluated", "stale": "retrained (stale config) and evaluated"}
        if status.startswith("held"):
            log(f"  {name}: {status}; waiting for it")
        else:
            work = f"{seconds:.0f}s of work, its {parts} λ evaluated in parallel jobs" if parts > 1 else f"{seconds:.0f}s"
            log(f"  {name}: {what[status]} ({work})")
