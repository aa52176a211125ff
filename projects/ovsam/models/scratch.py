"""Reused scratch buffers for the inference fast paths.

On CPU a fresh activation-sized tensor is not free: glibc serves allocations
above its mmap threshold (at most 32 MiB) with new pages, and every page faults
on first touch. At 64x64x1280 the SAM2CLIP adapter allocates and discards
~2 GiB of such temporaries per image (qkv maps, attention biases, MLP hidden
maps); writing them into buffers that outlive one block is measurably faster
(e.g. a 4096x1280 @ 1280x3840 GEMM: ~230 instead of ~290 ms).

Buffers live only inside :func:`reuse_scratch` (the outermost one frees them),
per thread, so concurrent forwards never share memory and nothing stays
allocated after the forward that asked for it. Outside a scope :func:`scratch`
is a plain ``torch.empty``.
"""
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor


class _Scratch(threading.local):

    def __init__(self):
        self.depth = 0
        self.buffers = {}


_STATE = _Scratch()


@contextmanager
def reuse_scratch() -> Iterator[None]:
    """Keep the buffers handed out by :func:`scratch` until the outermost
    ``reuse_scratch`` exits (nesting is allowed)."""
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1
        if _STATE.depth == 0:
            _STATE.buffers.clear()


def scratch(name: str, shape: Sequence[int], like: Tensor) -> Tensor:
    """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device.

    Inside :func:`reuse_scratch`, the same memory is returned for the same
    ``name`` (grown when too small), so the caller must be done with the
    previous tensor of that name before asking again.
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    if _STATE.depth == 0:
        return like.new_empty(shape)
    key = (name, like.dtype, like.device, torch.is_inference_mode_enabled())
    buf = _STATE.buffers.get(key)
    if buf is None or buf.numel() < numel:
        _STATE.buffers.pop(key, None)  # free the old one before allocating the new one
        buf = like.new_empty(numel)
        _STATE.buffers[key] = buf
    return buf[:numel].view(shape)


def scratch_bytes() -> int:
    """Bytes held by this thread's scratch buffers (0 outside a scope)."""
    return sum(b.numel() * b.element_size() for b in _STATE.buffers.values())
