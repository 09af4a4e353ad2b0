"""Pipeline stages on threads, joined by bounded channels (docs/architecture.md, "CPU stages").

Decoding, face tracking, paste-back and encoding overlap with each other and with the engine: PyAV/libx264,
MediaPipe, PIL and OpenCV release the GIL for their heavy work, so threads are enough. Every channel holds a
few items at most, so memory stays bounded whatever the video's length.

Only the thread that called `restore_video` reports progress (the worker's progress callback writes to its
SQLite connection, and raises there when the job is cancelled); stages on other threads only count.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")


class ChannelClosed(Exception):
    """The consumer went away (an error or a cancel elsewhere): the producer should stop."""


class Channel(Generic[T]):
    """A bounded first-in first-out hand-over between two threads. The producer calls `put` then `finish` (or
    `fail` with its error); the consumer iterates, and calls `close` when it stops early."""

    def __init__(self, capacity: int):
        self._items: deque[T] = deque()
        self._capacity = max(1, capacity)
        self._lock = threading.Condition()
        self._finished = False
        self._error: BaseException | None = None
        self._closed = False

    def put(self, item: T) -> None:
        with self._lock:
            while len(self._items) >= self._capacity and not self._closed:
                self._lock.wait()
            if self._closed:
                raise ChannelClosed()
            self._items.append(item)
            self._lock.notify_all()

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            self._lock.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            self._error, self._finished = error, True
            self._lock.notify_all()

    def close(self) -> None:
        """The consumer stops: a blocked or later `put` raises ChannelClosed, and queued items are dropped."""
        with self._lock:
            self._closed = True
            self._items.clear()
            self._lock.notify_all()

    def __iter__(self) -> Iterator[T]:
        """The items in order; raises the producer's error, or ChannelClosed once either side closed it."""
        while True:
            with self._lock:
                while not self._items and not self._finished and not self._closed:
                    self._lock.wait()
                if self._closed:
                    raise ChannelClosed()
                if self._items:
                    item = self._items.popleft()
                    self._lock.notify_all()
                elif self._error is not None:
                    raise self._error
                else:
                    return
            yield item


class StageThread:
    """Runs `work` on a daemon thread and remembers how it ended and how long it was busy."""

    def __init__(self, name: str, work: Callable[[], None]):
        self.name = name
        self.busy_s = 0.0  # seconds spent working (not waiting on a channel), for benchmarks
        self.error: BaseException | None = None
        self._work = work
        self._thread = threading.Thread(target=self._run, name=f"svfrd-{name}", daemon=True)

    def start(self) -> "StageThread":
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        try:
            self._work()
        except ChannelClosed:
            pass  # stopped from outside; whoever closed the channel reports why
        except BaseException as err:  # noqa: BLE001 - handed to the thread that reports it
            self.error = err


def produce(name: str, items: Callable[[], Iterable[T]], capacity: int) -> tuple[Channel[T], StageThread]:
    """Iterate `items()` on a thread into a channel of `capacity`; the iterator is closed when the thread ends
    (a decoder closes its file). Start the returned thread; close the channel to stop it early, then join."""
    channel: Channel[T] = Channel(capacity)

    def work() -> None:
        source = iter(items())
        try:
            while True:
                started = time.perf_counter()
                item = next(source, _END)
                stage.busy_s += time.perf_counter() - started
                if item is _END:
                    break
                channel.put(item)
        except ChannelClosed:
            raise
        except BaseException as err:
            channel.fail(err)
            raise
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        channel.finish()

    stage = StageThread(name, work)
    return channel, stage


_END = object()


def threaded(name: str, items: Callable[[], Iterable[T]], capacity: int,
             busy: dict[str, float] | None = None) -> Iterator[T]:
    """`items()` computed on a thread, up to `capacity` items ahead of the caller. Closing the returned
    generator (or an error in either thread) stops and joins the thread; its busy seconds add to `busy`."""
    channel, stage = produce(name, items, capacity)
    stage.start()
    try:
        yield from channel
    finally:
        channel.close()
        stage.join()
        if busy is not None:
            busy[name] = busy.get(name, 0.0) + stage.busy_s
