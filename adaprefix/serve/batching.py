"""Dynamic batching: rows that arrive together go through one forward, whichever adapters they name.

Requests put their rows on a queue. One loop takes the first waiting row, then gathers more that can share its
forward (same model group; with ``batching='per-adapter'`` also the same adapter, as a single-adapter server would
have to) until ``max_batch_size`` rows or ``max_wait_ms`` after the first; rows that cannot join wait, in order,
for the next batch. Forwards run on one worker thread, so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from .engine import GENERATION, Engine, Row


@dataclass
class _Item:
    key: Hashable  # rows with equal keys may share a forward
    payload: Any
    run: Callable[[list[Any]], list[Any]]  # computes a batch of payloads on the worker thread
    future: asyncio.Future


class Batcher:
    """Gathers rows into batches and runs them on the engine; see the module docstring."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.settings = engine.settings
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.backlog: collections.deque[_Item] = collections.deque()  # taken from the queue, left for a later batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaprefix-forward")
        self.task: asyncio.Task | None = None
        self.batches = 0  # forwards run so far, and their rows: for /health and the load test
        self.rows = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def predict(self, rows: list[Row]) -> list[dict[str, Any]]:
        """Answers for a request's rows (one forward for them and whatever else waits). A generation task's rows
        generate, batched with other prompts of the same budget."""
        per_adapter = self.settings.batching == "per-adapter"
        items = []
        for row in rows:
            served = self.engine.adapters[row.adapter]
            adapter = row.adapter if per_adapter else None
            if served.generative:
                budget = served.max_new_tokens
                run = lambda payloads, budget=budget: self.engine.run_generation(payloads, budget)  # noqa: E731
                items.append(self._item((GENERATION, "predict", budget, adapter), row, run))
            else:
                items.append(self._item((served.group, adapter), row, self.engine.run))
        return list(await asyncio.gather(*(item.future for item in items)))

    async def generate(self, rows: list[Row], max_new_tokens: int) -> list[str]:
        """Completions of a request's prompt rows, batched with other prompts of the same ``max_new_tokens``."""
        per_adapter = self.settings.batching == "per-adapter"
        run = lambda payloads: self.engine.generate(payloads, max_new_tokens)  # noqa: E731
        items = [self._item((GENERATION, "generate", max_new_tokens, row.adapter if per_adapter else None), row, run)
                 for row in rows]
        return list(await asyncio.gather(*(item.future for item in items)))

    def _item(self, key, payload, run) -> _Item:
        item = _Item(key, payload, run, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(item)
        return item

    async def _next(self, key=None, timeout: float | None = None) -> _Item | None:
        """The oldest waiting item (with ``key``, if given); None when none comes within ``timeout``."""
        for item in self.backlog:
            if key is None or item.key == key:
                self.backlog.remove(item)
                return item
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:  # what is already waiting joins even when the wait is over (or max_wait_ms is 0)
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                if deadline is None:
                    item = await self.queue.get()
                else:
                    left = deadline - loop.time()
                    if left <= 0:
                        return None
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        return None
            if key is None or item.key == key:
                return item
            self.backlog.append(item)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next()
            batch = [first]
            deadline = loop.time() + self.settings.max_wait_ms / 1000
            while len(batch) < self.settings.max_batch_size:
                item = await self._next(first.key, max(deadline - loop.time(), 0.0))
                if item is None:
                    break
                batch.append(item)
            batch = [item for item in batch if not item.future.cancelled()]  # the client went away
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, first.run, [item.payload for item in batch])
            except Exception as err:  # noqa: BLE001 - the loop goes on; the error goes to the rows that caused it
                if len(batch) == 1:
                    if not batch[0].future.done():
                        batch[0].future.set_exception(err)
                    continue
                # One bad row must not fail the others that shared its forward: each runs again on its own.
                for item in batch:
                    await self._run_alone(item)
                continue
            self.batches += 1
            self.rows += len(batch)
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)

    async def _run_alone(self, item: _Item) -> None:
        try:
            result = (await asyncio.get_running_loop().run_in_executor(self.executor, item.run, [item.payload]))[0]
        except Exception as err:  # noqa: BLE001 - reported to this row's request only
            if not item.future.done():
                item.future.set_exception(err)
            return
        self.batches += 1
        self.rows += 1
        if not item.future.done():
            item.future.set_result(result)
