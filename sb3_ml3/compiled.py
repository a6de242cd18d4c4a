"""``torch.compile`` for the pure meta-step, with a silent fallback to eager and one compile per process.

At the sizes of the paper's optimizees every operator's dispatch through the ``torch.func``
transforms costs more than its arithmetic, so the eager meta-step is several times slower than the
same arithmetic compiled (BENCHMARKS.md, "Cost of the inner/outer step"). :class:`CompiledOrEager`
wraps a pure function so that

* it runs through ``torch.compile`` (the inductor backend by default); the compile is paid by the
  first call, and inductor's on-disk caches (``TORCHINDUCTOR_CACHE_DIR``, by default
  ``/tmp/torchinductor_<user>``) make later processes pay much less;
* if compiling fails (no C++ compiler, a platform without Dynamo, an operator the backend cannot
  lower) it runs eagerly from then on, with the same result; the reason is logged once at INFO
  level and kept in :attr:`CompiledOrEager.fallback_reason`;
* an error of the function itself (bad shapes, say) is raised as the eager function raises it.

:func:`cached` keeps one wrapper per key for the whole process, so that meta-training several
seeds, or calling ``meta_train`` again, reuses the compiled step instead of compiling it again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["CompiledOrEager", "cached", "compile_supported", "clear_cache"]

#: At most this many compiled functions are kept per process (least recently used dropped first).
MAX_CACHED = 32
#: The ``torch.compile`` backend of :func:`cached` when none is given.
DEFAULT_BACKEND = "inductor"

_cache: OrderedDict[Hashable, CompiledOrEager] = OrderedDict()
_lock = threading.Lock()


def compile_supported() -> tuple[bool, str]:
    """Whether this interpreter and platform can run ``torch.compile`` at all, and why not."""
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return False, "torch.compile (Dynamo) is not supported on this Python/platform"
    except Exception as error:  # an incomplete torch build
        return False, f"torch._dynamo is unavailable: {error}"
    return True, ""


class CompiledOrEager:
    """Call ``fn`` compiled, or eagerly once compiling it has failed; results are those of ``fn``.

    :param fn: a pure function of tensors and pytrees of tensors (no side effects the compile could drop).
    :param backend: the ``torch.compile`` backend (``"inductor"``: fused C++ kernels on CPU).
    :param dynamic: passed to ``torch.compile``; ``False`` specialises on shapes, which is what a
        meta-training loop with fixed batch shapes wants.
    """

    def __init__(self, fn: Callable[..., Any], backend: str | Callable[..., Any] = "inductor",
                 dynamic: bool | None = False) -> None:
        self.fn = fn
        self.backend = backend
        self.fallback_reason: str | None = None
        self.compiled_calls = 0
        self.eager_calls = 0
        supported, why = compile_supported()
        self._compiled: Callable[..., Any] | None = None
        if supported:
            self._compiled = torch.compile(fn, backend=backend, dynamic=dynamic)
        else:
            self._fall_back(why)

    @property
    def is_compiled(self) -> bool:
        """``True`` while calls go through the compiled function (``False`` after a fallback)."""
        return self._compiled is not None

    def _fall_back(self, reason: str) -> None:
        self._compiled = None
        self.fallback_reason = reason
        logger.info("torch.compile unavailable for %s, running eagerly: %s",
                    getattr(self.fn, "__qualname__", self.fn), reason)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        compiled = self._compiled
        if compiled is not None:
            try:
                result = compiled(*args, **kwargs)
                self.compiled_calls += 1
                return result
            except Exception as error:  # noqa: BLE001 - any compile failure, decided below
                compile_error = error
            # The same call eagerly: if it raises too, the error is the function's own (raise it and keep
            # compiling later calls); if it succeeds, compiling is what failed, so stop trying.
            result = self.fn(*args, **kwargs)
            self._fall_back(f"{type(compile_error).__name__}: {str(compile_error).strip()[:500]}")
            self.eager_calls += 1
            return result
        self.eager_calls += 1
        return self.fn(*args, **kwargs)


def cached(key: Hashable, build: Callable[[], Callable[..., Any]], backend: str | Callable[..., Any] | None = None,
           dynamic: bool | None = False) -> CompiledOrEager:
    """The process-wide :class:`CompiledOrEager` for ``key``; ``build()`` makes its function the first time.

    The key must identify everything the function closes over (functions, hyper-parameters), so that
    equal keys mean equal computations.
    """
    backend = DEFAULT_BACKEND if backend is None else backend
    full_key = (key, backend, dynamic)
    with _lock:
        wrapper = _cache.get(full_key)
        if wrapper is not None:
            _cache.move_to_end(full_key)
            return wrapper
    wrapper = CompiledOrEager(build(), backend=backend, dynamic=dynamic)
    with _lock:
        wrapper = _cache.setdefault(full_key, wrapper)
        _cache.move_to_end(full_key)
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
    return wrapper


def clear_cache() -> None:
    """Forget every cached wrapper (their compiled code is freed when nothing else holds it)."""
    with _lock:
        _cache.clear()
