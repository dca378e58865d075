"""Optimizers and schedules: LARS as solo-learn runs it, the two parameter groups every method uses, torch's SGD and
AdamW on their fastest path, and the learning-rate, EMA and temperature schedules of the papers."""
import math

import torch
import torch.nn as nn


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in solo-learn: SGD with momentum where each weight's step is scaled by the trust ratio
    eta ||w|| / (||g|| + wd ||w||), clipped to at most 1x the global lr (`clip`). Groups with lars_exclude=True
    (biases, norm layers) get neither weight decay nor the trust ratio."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02, clip=True, eps=1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip, eps=eps,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One foreach pass per group over all its parameters: a few dozen kernels a step, none read by the host."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            if params and not group["lars_exclude"]:
                grads = self._trust_scaled(group, params, grads)
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)  # so that the first buffer is the first g
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])

    @staticmethod
    def _trust_scaled(group: dict, params, grads):
        """(g + wd w) x trust ratio for each parameter of the group, as new tensors."""
        wd = group["weight_decay"]
        w_norm = torch.stack(torch._foreach_norm(params))
        g_norm = torch.stack(torch._foreach_norm(grads))
        ok = (w_norm > 0) & (g_norm > 0)  # as solo-learn: a zero weight or gradient is left as is (no decay or ratio)
        trust = group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"])
        if group["clip"]:
            trust = torch.clamp(trust / group["lr"], max=1.0)
        trust = torch.where(ok, trust, 1.0)
        grads = torch._foreach_addcmul(grads, params, (wd * ok).unbind())  # g + wd w
        torch._foreach_mul_(grads, trust.unbind())
        return grads


def param_groups(module: nn.Module, weight_decay: float, **extra):
    """Two groups: weights (decayed) and biases/norm parameters (ndim <= 1: no decay, excluded from LARS)."""
    params = [p for p in module.parameters() if p.requires_grad]
    weights = [p for p in params if p.ndim > 1]
    others = [p for p in params if p.ndim <= 1]
    return [dict(params=weights, weight_decay=weight_decay, lars_exclude=False, **extra),
            dict(params=others, weight_decay=0.0, lars_exclude=True, **extra)]


def make_optimizer(name: str, groups, lr: float, momentum: float = 0.9, betas=(0.9, 0.999)):
    """LARS / SGD / AdamW over param groups (see `param_groups`); `lr` is the already batch-scaled rate. SGD and AdamW
    run torch's fused kernels where every parameter is on CUDA, else its foreach path (one pass over all parameters)."""
    for group in groups:
        group["base_lr"] = group.get("base_lr", lr)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    groups = [{k: v for k, v in group.items() if k != "lars_exclude"} for group in groups]
    on_cuda = all(p.is_cuda for group in groups for p in group["params"])
    fast = {"fused": True} if on_cuda else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, **fast)
    return torch.optim.AdamW(groups, lr, betas, **fast)


def warmup_cosine(step: int, total: int, warmup: int, start: float = 3e-5 / 0.4, end: float = 0.0) -> float:
    """Multiplier of the base lr at `step`: linear warmup from `start` to 1 over `warmup` steps, cosine to `end`.
    Default `start`: solo-learn's warmup begins at lr 3e-5 with SimCLR's base lr 0.4; here that fraction of any lr."""
    if step < warmup:
        return start + (1 - start) * step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_schedule(step: int, total: int, base: float, final: float) -> float:
    """solo-learn's EMA/temperature schedule: final - (final - base) * (cos(pi * step / total) + 1) / 2."""
    return final - (final - base) * (math.cos(math.pi * min(step, total) / max(1, total)) + 1) / 2


def linspace_warmup(epoch: int, warmup: int, start: float, final: float) -> float:
    """np.linspace(start, final, warmup)[epoch] in the first `warmup` epochs (final in the last one), then final."""
    if warmup <= 0:
        return final
    return start + (final - start) * min(1.0, epoch / max(1, warmup - 1))
