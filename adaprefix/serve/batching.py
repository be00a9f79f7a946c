"""Dynamic batching: rows that wait together go through one forward, whichever adapters they name, and every
request gets its turn.

Each request's rows wait in order behind it. One loop builds each batch: it starts with the request whose turn it
is, then takes rows round-robin, one from each waiting request that can share the forward (same model group; with
``batching='per-adapter'`` also the same adapter, as a single-adapter server would have to), until
``max_batch_size`` rows or ``max_wait_ms`` after the batch began. The next batch starts with the next request. So a
request of thousands of inputs runs as many batches, and a small request that arrives meanwhile joins the next one
instead of waiting for them all. A request whose client has gone away (its task cancelled) takes its waiting rows
with it, and its prompts in a generation under way end at their next token. Forwards run on one worker thread, so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator

from .admission import BusyError
from .decoding import Completion
from .engine import GENERATION, Engine, Row


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future


@dataclass
class _Request:
    key: Hashable  # requests with equal keys may share a forward
    run: Callable[[list[Any]], list[Any]]  # computes a batch of payloads on the worker thread
    waiting: collections.deque[_Item] = field(default_factory=collections.deque)


class Batcher:
    """Gathers rows into batches and runs them on the engine; see the module docstring."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.settings = engine.settings
        self.turns: collections.deque[_Request] = collections.deque()  # requests with rows waiting, in turn order
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaprefix-forward")
        self.task: asyncio.Task | None = None
        self.batches = 0  # forwards run so far, and their rows: for /health and the load test
        self.rows = 0
        self.admitted = 0  # rows of requests admitted and not answered yet: the queue that max_queue bounds
        self.forward_s = 0.0  # the last forward's seconds, to tell a refused client when to come back

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

    @contextlib.contextmanager
    def admit(self, rows: int) -> Iterator[None]:
        """Hold ``rows`` places in the queue while a request is worked on; :class:`BusyError` when they would take
        it past ``max_queue``."""
        limit = self.settings.max_queue
        if self.admitted + rows > limit:
            batches = math.ceil(self.admitted / self.settings.max_batch_size)
            raise BusyError(f"the queue holds {self.admitted} inputs; {rows} more would take it past this server's "
                            f"limit of {limit} (--max-queue): try again later",
                            retry_after=max(1, math.ceil(batches * self.forward_s)))
        self.admitted += rows
        try:
            yield
        finally:
            self.admitted -= rows

    async def predict(self, rows: list[Row]) -> list[dict[str, Any]]:
        """Answers for a request's rows (one /v1/predict request is for one adapter, hence one kind of forward). A
        generation task's rows generate, batched with other prompts of the same budget."""
        if not rows:
            return []
        served = self.engine.adapters[rows[0].adapter]
        adapter = rows[0].adapter if self.settings.batching == "per-adapter" else None
        if served.generative:
            budget = served.max_new_tokens
            return await self._submit((GENERATION, "predict", budget, adapter), rows,
                                      lambda payloads: self.engine.run_generation(payloads, budget))
        return await self._submit((served.group, adapter), rows, self.engine.run)

    async def generate(self, rows: list[Row], max_new_tokens: int) -> list[str]:
        """Completions of a request's prompt rows, batched with other prompts of the same ``max_new_tokens``."""
        return [completion.text for completion in await self.complete(rows, max_new_tokens)]

    async def complete(self, rows: list[Row], max_new_tokens: int) -> list[Completion]:
        """Completions of a request's prompt rows, each decoded as its row asks (greedy or sampled, stop strings,
        streamed), batched with other prompts of the same ``max_new_tokens`` from /v1/generate, /v1/completions
        and /v1/chat/completions alike."""
        if not rows:
            return []
        adapter = rows[0].adapter if self.settings.batching == "per-adapter" else None
        return await self._submit((GENERATION, "generate", max_new_tokens, adapter), rows,
                                  lambda payloads: self.engine.complete(payloads, max_new_tokens))

    async def _submit(self, key: Hashable, payloads: list[Any], run: Callable) -> list[Any]:
        loop = asyncio.get_running_loop()
        request = _Request(key, run, collections.deque(_Item(p, loop.create_future()) for p in payloads))
        futures = [item.future for item in request.waiting]
        self.turns.append(request)
        self.arrived.set()
        try:
            return list(await asyncio.gather(*futures))
        finally:  # answered, failed, or cancelled because the client went away: nothing of it waits any more
            request.waiting.clear()
            if request in self.turns:
                self.turns.remove(request)
            for payload, future in zip(payloads, futures):
                if not future.done() and isinstance(payload, Row):
                    payload.cancelled = True  # a generation it is in ends it at its next token
                future.cancel()  # no-op on those answered

    def _take(self, key: Hashable, room: int) -> list[tuple[_Request, _Item]]:
        """Up to ``room`` waiting rows that share forwards under ``key``: one from each such request in turn order,
        then a second from each, and so on."""
        taken: list[tuple[_Request, _Item]] = []
        while len(taken) < room:
            sharing = [request for request in self.turns if request.key == key]
            if not sharing:
                break
            for request in sharing:
                if len(taken) == room:
                    break
                taken.append((request, request.waiting.popleft()))
                if not request.waiting:
                    self.turns.remove(request)
        return taken

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.turns:
                self.arrived.clear()
                await self.arrived.wait()
            first = self.turns[0]
            batch = self._take(first.key, self.settings.max_batch_size)
            if first in self.turns:  # rows left: its next turn comes after every other request's
                self.turns.remove(first)
                self.turns.append(first)
            deadline = loop.time() + self.settings.max_wait_ms / 1000
            while len(batch) < self.settings.max_batch_size:
                self.arrived.clear()
                try:  # rows already waiting joined above; this waits for newcomers, up to max_wait_ms
                    await asyncio.wait_for(self.arrived.wait(), max(deadline - loop.time(), 0.0))
                except asyncio.TimeoutError:
                    break
                batch += self._take(first.key, self.settings.max_batch_size - len(batch))
            items = [item for _, item in batch if not item.future.done()]  # done: its client went away
            if not items:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, first.run, [item.payload for item in items])
            except Exception as err:  # noqa: BLE001 - the loop goes on; the error goes to the rows that caused it
                if len(items) == 1:
                    if not items[0].future.done():
                        items[0].future.set_exception(err)
                    continue
                # One bad row must not fail the others that shared its forward: each runs again on its own.
                for item in items:
                    await self._run_alone(first.run, item)
                continue
            self.forward_s = time.perf_counter() - started
            self.batches += 1
            self.rows += len(items)
            for item, result in zip(items, results):
                if not item.future.done():
                    item.future.set_result(result)

    async def _run_alone(self, run: Callable, item: _Item) -> None:
        if item.future.done():
            return
        try:
            result = (await asyncio.get_running_loop().run_in_executor(self.executor, run, [item.payload]))[0]
        except Exception as err:  # noqa: BLE001 - reported to this row's request only
            if not item.future.done():
                item.future.set_exception(err)
            return
        self.batches += 1
        self.rows += 1
        if not item.future.done():
            item.future.set_result(result)
