"""A dispatch mode that counts the ATen ops which move data, for tests that a path copies nothing."""

import torch


class CopyCount(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ``copy_`` and ``clone`` calls (explicit, or inside ``reshape`` / ``contiguous``) run under it."""

    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.copies += func.__name__.split(".")[0] in ("copy_", "clone")
        return func(*args, **(kwargs or {}))
