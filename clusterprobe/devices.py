"""The device torch computes on: one rule for extraction, training and the metrics.

``"auto"`` means the GPU when torch sees one, else the CPU. Under ``torchrun`` a bare ``"cuda"``
(or ``"auto"`` on a GPU machine) means this process's own GPU, ``cuda:$LOCAL_RANK``. Asking for a
GPU that is not there is an error, never a silent fall-back to the CPU.
"""

from __future__ import annotations

import os

import torch

from .errors import DeviceError

#: The device names accepted everywhere (plus ``cuda:N``).
DEVICE_NAMES = ("auto", "cpu", "cuda")


def check_device_name(device: str | torch.device | None) -> str:
    """Return ``device`` as a lower-case name after checking its spelling (not its presence).

    Raises:
        DeviceError: not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """
    name = "auto" if device is None else str(device).strip().lower()
    kind, colon, index = name.partition(":")
    if kind not in DEVICE_NAMES or (colon and (kind != "cuda" or not index.isascii() or not index.isdigit())):
        raise DeviceError(f"Unknown device {device!r}: use auto (GPU when present), cpu, cuda or cuda:N.")
    return name


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` for ``device`` ('auto', 'cpu', 'cuda' or 'cuda:N').

    Raises:
        DeviceError: the name is unknown, or it names a GPU and torch sees none.
    """
    name = check_device_name(device)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device={name!r} was asked for, but torch sees no CUDA GPU here. Use device 'auto' "
            "(GPU when present, CPU otherwise) or 'cpu'."
        )
    count = torch.cuda.device_count()
    if name in ("auto", "cuda"):
        index = int(os.environ.get("LOCAL_RANK", "0"))
        if index >= count:
            raise DeviceError(
                f"device={name!r} under torchrun means this process's GPU, cuda:{index} (LOCAL_RANK), "
                f"but torch sees {count} GPU{'s' if count != 1 else ''}. Start at most {count} "
                f"process{'es' if count != 1 else ''} per machine (--nproc_per_node {count})."
            )
        return torch.device("cuda", index)
    index = int(name.partition(":")[2])
    if index >= count:
        raise DeviceError(
            f"device={name!r} was asked for, but torch sees {count} GPU{'s' if count != 1 else ''} "
            f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}; CUDA_VISIBLE_DEVICES renumbers them "
            "from 0). Use one of those, or 'cuda' for the first."
        )
    return torch.device(name)


def limit_threads(threads: int | None) -> None:
    """Use at most ``threads`` CPU threads for torch, FAISS and the BLAS/OpenMP pools of NumPy
    and scikit-learn (None: leave each library's own default).

    On a machine shared with other jobs, fewer threads than cores avoids oversubscription, which
    can make each job several times slower. Applies to the whole process until changed again.
    """
    if threads is None:
        return
    if int(threads) < 1:
        raise DeviceError(f"threads must be a positive number, got {threads}.")
    threads = int(threads)
    torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)
