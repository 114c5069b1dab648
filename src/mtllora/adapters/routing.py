"""How task ids reach the adapted layers.

One `TaskRouter` per adapted model. Task ids enter it one way only: as the `task_ids=` keyword of the model's
forward (a forward pre-hook reads it) or through `use_tasks(model, ids)` for code that cannot pass the keyword,
such as `generate()`. Every task-aware layer asks the router for the ids of its batch rows.

The ids are per call: the router keeps them in a `contextvars.ContextVar`, so threads that run the same model at
once (nn.DataParallel replicas, a threaded server) each see the ids of their own forward, and `use_tasks` acts on
the calling thread only.

Gradient checkpointing re-runs layers during backward, after the forward that set the ids has returned. Hugging
Face models run that recomputation through a per-layer `_gradient_checkpointing_func`; the router wraps it
(`TaskAwareCheckpoint`) so the recomputation sees the ids of its own forward, with reentrant and non-reentrant
checkpointing alike.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Iterator, Sequence

import torch
from torch import nn


class TaskIdError(ValueError):
    """Task ids are missing, malformed or out of range."""


def check_task_id_range(task_ids: torch.Tensor, num_tasks: int, owner: str) -> None:
    """Raises TaskIdError naming the first id outside 0..num_tasks-1; `owner` says what fixes the range (e.g.
    "num_tasks=8"). Shared by the adapters' router and task-headed models so both report bad ids alike."""
    bad = (task_ids < 0) | (task_ids >= num_tasks)
    if bool(bad.any()):
        raise TaskIdError(
            f"task id {int(task_ids[bad][0])} is out of range: this model has {owner} (valid ids 0..{num_tasks - 1})"
        )


class _Frame:
    """Task ids current in one context: (ids [n] or None, may_expand), the frame they replace, and a cache of the
    ids as each layer asks for them. may_expand lets n ids cover a batch of k·n rows whose rows are grouped by
    sample (generate() expands beams and return sequences that way)."""

    __slots__ = ("cache", "ids", "may_expand", "outer")

    def __init__(self, ids: torch.Tensor | None, may_expand: bool, outer: _Frame | None) -> None:
        self.ids = ids
        self.may_expand = may_expand
        self.outer = outer
        self.cache: dict[tuple[int, torch.device], torch.Tensor] = {}


_NO_IDS = _Frame(None, False, None)


def _frame_var() -> contextvars.ContextVar[_Frame]:
    return contextvars.ContextVar("mtllora_task_ids", default=_NO_IDS)


class TaskRouter:
    """Holds the task ids of the forward in progress, per thread and per `contextvars` context.

    The current frame lives in a ContextVar, so forwards running at the same time in different threads
    (nn.DataParallel replicas, a threaded server) each see their own ids. Frames form a stack within a context:
    a nested call restores the outer ids when it returns.
    """

    def __init__(self, num_tasks: int | None, checkpoint_modules: Sequence[nn.Module] = ()) -> None:
        self.num_tasks = num_tasks
        self.checkpoint_modules = list(checkpoint_modules)
        self._current = _frame_var()

    def __getstate__(self) -> dict:
        # A ContextVar cannot be copied or pickled; a copy of the model (deepcopy, merge_task) gets a fresh one.
        return {k: v for k, v in self.__dict__.items() if k != "_current"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._current = _frame_var()

    def validate(self, task_ids: torch.Tensor | Sequence[int] | int, model: nn.Module | None = None) -> torch.Tensor:
        """Returns task_ids as a 1-D LongTensor after checking type, shape, device and range (raises TaskIdError);
        `model`, the adapted model, names the device expected in the error for ids without values (meta)."""
        if isinstance(task_ids, bool):
            raise TaskIdError(f"task_ids must be integers, got {task_ids!r}")
        if isinstance(task_ids, int):
            task_ids = torch.tensor([task_ids])
        elif not isinstance(task_ids, torch.Tensor):
            task_ids = torch.as_tensor(list(task_ids))
        if task_ids.dtype.is_floating_point or task_ids.dtype.is_complex or task_ids.dtype == torch.bool:
            raise TaskIdError(f"task_ids must be an integer tensor, got dtype {task_ids.dtype}")
        if task_ids.dim() != 1:
            raise TaskIdError(f"task_ids must have shape [batch], got shape {tuple(task_ids.shape)}")
        if task_ids.device.type == "meta":
            params = model.parameters() if model is not None else iter(())
            device = next((p.device for p in params if p.device.type != "meta"), torch.device("cpu"))
            raise TaskIdError(
                f"task_ids are on the meta device (a shape without values), so no layer can read a task from them: "
                f"pass them on the CPU or on the model's device ({device})"
            )
        task_ids = task_ids.long()
        if self.num_tasks is not None:
            check_task_id_range(task_ids, self.num_tasks, f"num_tasks={self.num_tasks}")
        return task_ids

    @contextlib.contextmanager
    def frame(self, task_ids: torch.Tensor | None, may_expand: bool) -> Iterator[None]:
        """Makes `task_ids` current for the duration of the block."""
        self.push(task_ids, may_expand)
        try:
            yield
        finally:
            self.pop()

    def push(self, task_ids: torch.Tensor | None, may_expand: bool) -> None:
        """Makes `task_ids` current in this context until the matching `pop`."""
        self._current.set(_Frame(task_ids, may_expand, self._current.get()))

    def pop(self) -> None:
        """Restores the task ids that were current in this context before the last `push`."""
        self._current.set(self._current.get().outer)

    def replace_current(self, task_ids: torch.Tensor | None, may_expand: bool) -> None:
        """Sets the ids of the innermost frame (the one the current forward pushed)."""
        self._current.set(_Frame(task_ids, may_expand, self._current.get().outer))

    def current(self) -> tuple[torch.Tensor | None, bool]:
        """Returns the current frame of this context as (ids, may_expand)."""
        frame = self._current.get()
        return frame.ids, frame.may_expand

    def task_ids(self, batch: int, device: torch.device, layer: str, method: str) -> torch.Tensor:
        """Returns the task id of each of `batch` sample rows, on `device`; raises if none or mismatched."""
        frame = self._current.get()
        cached = frame.cache.get((batch, device))
        if cached is not None:
            return cached
        ids, may_expand = frame.ids, frame.may_expand
        if ids is None:
            raise TaskIdError(
                f"{layer} ({method}) needs task ids: pass task_ids=LongTensor[batch] to the model's forward, or "
                f"wrap the call in `with use_tasks(model, task_ids):` (for generate() and code that cannot pass it)"
            )
        n = ids.shape[0]
        if n != batch:
            if not (may_expand and n and batch % n == 0):
                raise TaskIdError(
                    f"task_ids has {n} entries but {layer} ({method}) sees a batch of {batch} samples;"
                    f" pass one task id per sample"
                )
            ids = ids.repeat_interleave(batch // n)
        ids = ids.to(device, non_blocking=True)
        frame.cache[(batch, device)] = ids  # every adapted layer of the forward asks; convert and copy once
        return ids

    def wrap_checkpointing(self) -> None:
        """Wraps each HF layer's checkpoint function (set by gradient_checkpointing_enable) once."""
        for module in self.checkpoint_modules:
            fn = module.__dict__.get("_gradient_checkpointing_func")
            if fn is not None and not isinstance(fn, TaskAwareCheckpoint):
                module._gradient_checkpointing_func = TaskAwareCheckpoint(fn, self)


class TaskAwareCheckpoint:
    """A checkpoint function whose recomputation in backward runs with the task ids of its forward."""

    def __init__(self, checkpoint_fn, router: TaskRouter) -> None:
        self.checkpoint_fn = checkpoint_fn
        self.router = router

    def __call__(self, function, *args, **kwargs):
        task_ids, may_expand = self.router.current()

        def run_with_task_ids(*a, **kw):
            with self.router.frame(task_ids, may_expand):
                return function(*a, **kw)

        return self.checkpoint_fn(run_with_task_ids, *args, **kwargs)


class RouterPreHook:
    """Forward pre-hook of the adapted model: takes `task_ids=` out of the call and makes them current."""

    def __init__(self, router: TaskRouter, forward_takes_task_ids: bool) -> None:
        self.router = router
        self.forward_takes_task_ids = forward_takes_task_ids

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        router = self.router
        router.wrap_checkpointing()
        # Push before validating: the always-called post hook pops even when validation raises.
        router.push(*router.current())
        ids = kwargs.get("task_ids") if self.forward_takes_task_ids else kwargs.pop("task_ids", None)
        if ids is not None:
            router.replace_current(router.validate(ids, module), False)
        return args, kwargs


class RouterPostHook:
    """Forward hook (always called, also on error) that restores the ids current before the forward."""

    def __init__(self, router: TaskRouter) -> None:
        self.router = router

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output):
        self.router.pop()
        return output


def forward_accepts_task_ids(model: nn.Module) -> bool:
    """True when the model's own forward has a `task_ids` parameter (it then keeps them, e.g. for task heads)."""
    return "task_ids" in inspect.signature(model.forward).parameters


def get_router(model: nn.Module) -> TaskRouter:
    """Returns the router of a model prepared by `apply_adapters`, or raises."""
    state = getattr(model, "_mtllora", None)
    if state is None:
        raise ValueError(f"{type(model).__name__} has no mtllora adapters; call apply_adapters(model, config) first")
    return state.router


@contextlib.contextmanager
def use_tasks(model: nn.Module, task_ids: torch.Tensor | Sequence[int] | int) -> Iterator[None]:
    """Runs the block with these task ids for every forward of `model` that does not pass `task_ids=` itself.

    One id per sample; an int means every sample. Inside the block a forward may see k·batch rows grouped by
    sample, as `generate()` makes them for beams and return sequences: each sample's id then covers its k rows.
    """
    router = get_router(model)
    with router.frame(router.validate(task_ids, model), True):
        yield
