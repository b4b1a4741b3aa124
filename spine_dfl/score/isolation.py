"""Decoder-crash isolation: decode + transforms in supervised worker processes.

A decoder written in C or Rust can kill its process (segfault, abort) on a corrupt file. torch's
DataLoader and ``concurrent.futures`` give up on the whole run when a worker dies, so scoring runs
its own small pool:

- ``workers`` processes (forkserver, with the decode modules preloaded, so a replacement starts in
  milliseconds; spawn where there is no forkserver), one intra-op thread each, at a lower CPU
  priority than the scoring process: where decoding and the model share the cores, the model runs
  whenever it has a batch and decoding fills the rest, so the two stages add up instead of
  fighting over OpenMP threads;
- each task is a chunk of a few files; every finished file comes back at once (its arrays
  pickled through the worker's pipe), so a worker holds few files that are not yet back;
- when a worker dies, the files it held and had not yet returned become *suspects*. New chunks wait;
  each suspect is then decoded again, alone, in a fresh single-use worker. A suspect that kills that
  worker too is a failed file with the reason ``decoder crashed``; the others are scored as usual,
  and the run goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from spine_dfl.io.errors import InputError
from spine_dfl.score.errors import DECODER_CRASHED
from spine_dfl.score.files import FileSamples, failed_item

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext, SpawnContext

log = logging.getLogger(__name__)

# Modules a forkserver imports once, so that every worker forked from it starts with them loaded.
_PRELOAD = ["spine_dfl.score.files", "spine_dfl.data.transforms", "spine_dfl.io"]
# Niceness added to decode workers (see the module docstring); 0 would let them compete as equals.
WORKER_NICENESS = 10


def _context() -> ForkServerContext | SpawnContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _worker_main(connection: Connection, dataset: FileSamples, niceness: int) -> None:
    """Decode the files of each task (a list of indices), sending every file item back as it is done."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the scoring process's to handle
    try:
        os.nice(niceness)
    except OSError:
        pass
    import torch

    torch.set_num_threads(1)
    while True:
        try:
            task = connection.recv()
        except EOFError:  # the scoring process is gone
            return
        if task is None:
            return
        for index in task:
            connection.send(dataset[index])


class _Worker:
    """One decode process, its pipe and the files it holds (sent, not yet returned)."""

    def __init__(self, context: ForkServerContext | SpawnContext, dataset: FileSamples, single_use: bool, niceness: int) -> None:
        self.connection, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child, dataset, niceness), daemon=True,
                                       name="spine-dfl-decode")
        self.process.start()
        child.close()
        self.held: deque[int] = deque()
        self.single_use = single_use

    def send(self, indices: list[int]) -> None:
        self.held.extend(indices)
        self.connection.send(indices)

    def receive(self) -> tuple[list[dict[str, Any]], bool]:
        """The file items waiting in the pipe, and whether the process is gone."""
        items: list[dict[str, Any]] = []
        try:
            while self.connection.poll():
                item = self.connection.recv()
                self.held.remove(item["index"])
                items.append(item)
        except (EOFError, OSError):
            return items, True
        return items, not self.process.is_alive() and not self.connection.poll()

    def stop(self) -> None:
        try:
            self.connection.send(None)
        except (OSError, ValueError):
            pass
        self.connection.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class DecodePool:
    """File items of ``dataset`` from ``workers`` supervised processes, in completion order.

    ``files_per_task``: files sent to a worker at once (fewer messages, and enough work queued per
    worker to keep the model fed); a worker gets its next task while it still holds one.
    """

    def __init__(self, dataset: FileSamples, workers: int, files_per_task: int = 4) -> None:
        if workers < 1:
            raise InputError(f"a decode pool needs at least one worker, got {workers}")
        self.dataset = dataset
        self.size = workers
        self.files_per_task = max(1, files_per_task)
        self.context = _context()
        self.niceness = WORKER_NICENESS
        self.crashes = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        todo: deque[int] = deque(range(len(self.dataset)))
        suspects: deque[int] = deque()
        workers: list[_Worker] = []
        try:
            while todo or suspects or any(w.held for w in workers):
                self._dispatch(workers, todo, suspects)
                ready = set(wait([w.connection for w in workers] + [w.process.sentinel for w in workers]))
                for worker in [w for w in workers if w.connection in ready or w.process.sentinel in ready]:
                    items, dead = worker.receive()
                    yield from items
                    if dead:
                        workers.remove(worker)
                        yield from self._bury(worker, suspects)
                    elif worker.single_use and not worker.held:
                        workers.remove(worker)
                        worker.stop()
        finally:
            for worker in workers:
                worker.stop()

    def _dispatch(self, workers: list[_Worker], todo: deque[int], suspects: deque[int]) -> None:
        """Suspects first, each alone in a fresh process (idle workers make room); then chunks."""
        if suspects:
            for worker in [w for w in workers if not w.held]:
                workers.remove(worker)
                worker.stop()
            while suspects and len(workers) < self.size:
                worker = _Worker(self.context, self.dataset, single_use=True, niceness=self.niceness)
                worker.send([suspects.popleft()])
                workers.append(worker)
            return
        while todo and len(workers) < self.size:
            workers.append(_Worker(self.context, self.dataset, single_use=False, niceness=self.niceness))
        for worker in workers:
            while todo and not worker.single_use and len(worker.held) <= self.files_per_task:
                worker.send([todo.popleft() for _ in range(min(self.files_per_task, len(todo)))])

    def _bury(self, worker: _Worker, suspects: deque[int]) -> Iterator[dict[str, Any]]:
        """A worker died: its lone file failed (single use), or its files become suspects."""
        self.crashes += 1
        worker.process.join()
        worker.connection.close()
        code = worker.process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        if worker.single_use:
            for index in worker.held:
                log.warning("%s: the decoder crashed (%s) on this file alone; marked failed",
                            self.dataset.files[index], how)
                yield failed_item(index, str(self.dataset.files[index]), self.dataset.input_size, DECODER_CRASHED)
        elif worker.held:
            log.warning("a decode worker died (%s) holding %d file(s); retrying them one by one", how, len(worker.held))
            suspects.extend(worker.held)


def iterate_items(dataset: FileSamples, workers: int, files_per_task: int = 4) -> Iterator[dict[str, Any]]:
    """File items of ``dataset``: decoded in this process with ``workers == 0`` (no crash isolation),
    else in a ``DecodePool``."""
    if workers <= 0:
        for index in range(len(dataset)):
            yield dataset[index]
        return
    yield from DecodePool(dataset, workers, files_per_task)
