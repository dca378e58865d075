"""Processes and devices: which rank this is, joining torchrun's process group, picking the device and the autocast
precision, and the collectives a method calls (gathers with gradients, averaged gradients, broadcasts)."""
import datetime
import os
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn

from plumbing.errors import UserError

Tensor = torch.Tensor


def rank() -> int:
    if dist.is_initialized():
        return dist.get_rank()
    return 0


def world_size() -> int:
    if dist.is_initialized():
        return dist.get_world_size()
    return 1


def pick_device(name: str) -> torch.device:
    """--device: auto (cuda if there is one), cpu, cuda, cuda:1... A CUDA device on a machine without one: UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available; use --device cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device (auto, cpu, cuda, cuda:1, ...).") from None


def device_name(device: torch.device) -> str:
    """What results.json records as the device: the GPU's name (e.g. "NVIDIA H100 80GB HBM3"), or "cpu"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def init_distributed(device: str) -> torch.device:
    """Under torchrun: join the process group (NCCL on GPUs, gloo on CPU), return cuda:LOCAL_RANK; alone: `device`."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return pick_device(device)
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        chosen = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(chosen)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return chosen


def pick_precision(requested: str, device: torch.device) -> str:
    """--precision auto: fp32 on a CPU; on a GPU bf16 where it runs natively (sm 8.0+), else fp16 (loss scaling)."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "fp32"
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "fp16"


def set_determinism(deterministic: bool):
    """--deterministic: deterministic kernels, no TF32, no cuDNN autotuning; else the fast choices."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def gather(x: Tensor) -> Tensor:
    """The global batch: x of every rank concatenated along dim 0 in rank order, WITH gradients (the backward of
    torch.distributed.nn.functional.all_gather sums every rank's gradient into the local slice). Identity alone."""
    if world_size() == 1:
        return x
    with warnings.catch_warnings():  # deprecated in torch 2.14 for a private API; still the gather with gradients
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(torch.distributed.nn.functional.all_gather(x.contiguous()))


def average_gradients(*modules: nn.Module):
    """Between backward and the optimizer step: each gradient becomes its mean over the ranks (one flat all-reduce).
    A loss on gathered embeddings is the same on every rank and gather's backward sums, so each rank holds
    world_size x its share and the mean is exactly the one-process gradient of the global batch. No-op alone."""
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    if world_size() == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).div_(world_size())
    dist.all_reduce(flat)
    for g, v in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(v.view_as(g))


def all_reduce_sum(t: Tensor) -> Tensor:
    """t summed over the ranks, in place (no gradient); alone: t."""
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank if True on any (a collective: every rank calls it at the same point)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(obj):
    """Rank 0's value of a picklable object, on every rank (a collective)."""
    box = [obj]
    if world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(*tensors: Tensor):
    """Rank 0's values of these tensors on every rank, in place (a collective)."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.broadcast(t, 0)


def end_process_group():
    if dist.is_initialized():
        dist.destroy_process_group()
