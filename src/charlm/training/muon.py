"""torch.optim.Muon at the machine's speed: the same update, state and checkpoints, with the
Newton-Schulz orthogonalisation of all same-shaped matrices done together (batched matrix products)
in the dtype the device multiplies fastest.

torch's class orthogonalises one matrix at a time, always in bfloat16. A CPU without native bfloat16
arithmetic emulates it, 3 to 30 times slower than float32 (docs/performance.md), and small matrices
one at a time spend their time in call overhead.
"""

import math

import torch

from charlm.core.run_config import MUON_DTYPES

# CPU features that multiply bfloat16 in hardware: x86 AVX512-BF16 and AMX, ARM's BF16 extensions.
NATIVE_BFLOAT16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def native_bfloat16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (not by converting to float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # torch >= 2.10; older: float32
        return any(capabilities.get(feature) is True for feature in NATIVE_BFLOAT16_FEATURES)
    return False


def newton_schulz_dtype(setting: str, device: torch.device | str) -> torch.dtype:
    """`auto`: bfloat16 where the device has it natively (GPUs, recent CPUs), else float32."""
    if setting == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    if setting not in MUON_DTYPES:
        raise ValueError(f"Newton-Schulz dtype must be one of {', '.join(MUON_DTYPES)}, got {setting!r}")
    return getattr(torch, setting)


def newton_schulz(x: torch.Tensor, coefficients: tuple[float, float, float], steps: int) -> torch.Tensor:
    """torch.optim.Muon's iteration on a stack x (N, m, n), m <= n, of spectral norm <= 1, batched:
    x <- (a + b x x^T + c (x x^T)^2) x, which drives every singular value towards 1."""
    a, b, c = coefficients
    for _ in range(steps):
        gram = x @ x.mT  # (N, m, m)
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, polynomial, x, beta=a)
    return x


def gram_newton_schulz(stacks: list[torch.Tensor], coefficients: tuple[float, float, float],
                       steps: int) -> list[torch.Tensor]:
    """The same iteration for stacks (N_i, m, n_i) that share m, run on their m x m Gram matrices.

    Every iterate is x_k = q_k x_0 with q_k a polynomial in x_0 x_0^T, so the iteration can update q and
    the Gram matrix g = x_k x_k^T (q <- p q, g <- p g p with p = a + b g + c g^2) and multiply by x_0
    once at the end: four m x m products a step instead of two m x n and one m x m, and one batch
    for all the stacks. Exact in exact arithmetic; in float32 it agrees with the direct iteration to
    about 1e-6 (1e-4 for matrices with singular values down to 1e-6), far inside bfloat16's 1e-2.
    Not for bfloat16, where g's rounding errors grow at each step."""
    a, b, c = coefficients
    gram = torch.cat([x @ x.mT for x in stacks])  # (sum N_i, m, m)
    identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    q = None
    for step in range(steps):
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c).add_(identity, alpha=a)
        q = polynomial if q is None else polynomial @ q
        if step + 1 < steps:
            gram = polynomial @ gram @ polynomial
    if q is None:
        return stacks
    return [part @ x for part, x in zip(q.split([len(x) for x in stacks]), stacks, strict=True)]


def orthogonalize(updates: list[torch.Tensor], dtype: torch.dtype, coefficients: tuple[float, float, float],
                  steps: int, eps: float) -> list[torch.Tensor]:
    """Newton-Schulz orthogonalisation of stacks of same-shaped matrices (N_i, m_i, n_i), m_i <= n_i, in
    `dtype`: each matrix scaled to Frobenius norm 1 (so spectral norm <= 1), then iterated. bfloat16
    iterates each stack directly; float32 batches the stacks that share m in their Gram matrices where
    that takes fewer multiplications (n > 1.5 m at 5 steps), and iterates the others directly."""
    stacks = [u.to(dtype) for u in updates]
    stacks = [x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps) for x in stacks]
    result = [None] * len(stacks)
    by_rows: dict[int, list[int]] = {}
    for i, x in enumerate(stacks):
        m, n = x.shape[1:]
        # multiply-adds per matrix, in units of m^2: direct steps * (2n + m); Gram (4 steps - 3) m + 2n
        if dtype == torch.bfloat16 or steps * (2 * n + m) <= (4 * steps - 3) * m + 2 * n:
            result[i] = newton_schulz(x, coefficients, steps)
        else:
            by_rows.setdefault(m, []).append(i)
    for indices in by_rows.values():
        for i, x in zip(indices, gram_newton_schulz([stacks[i] for i in indices], coefficients, steps), strict=True):
            result[i] = x
    return result


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-shape learning rate: "original" (Keller Jordan's), or "match_rms_adamw"."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz step batched over same-shaped matrices and run in
    `ns_dtype` (auto, float32 or bfloat16). Every other part of the update (momentum, Nesterov,
    decoupled weight decay, the learning-rate adjustment) and the state (`momentum_buffer`) are
    torch's, so checkpoints load into either class."""

    def __init__(self, params, *, ns_dtype: str = "auto", **settings):
        super().__init__(params, **settings)
        self.ns_dtype = newton_schulz_dtype(ns_dtype, self.param_groups[0]["params"][0].device)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[tuple, list[torch.Tensor]] = {}  # tall matrices join their transposes
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse or torch.is_complex(p):
                        raise RuntimeError("Muon supports only dense, real gradients")
                    by_shape.setdefault((*sorted(p.shape), p.dtype, p.device), []).append(p)
            alike = list(by_shape.values())
            updates = [self.momentum_updates(params, group) for params in alike]
            orthogonal = orthogonalize(updates, self.ns_dtype, group["ns_coefficients"], group["ns_steps"],
                                       group["eps"])
            lr, decay = group["lr"], 1 - group["lr"] * group["weight_decay"]
            for params, stack in zip(alike, orthogonal, strict=True):
                for p, update in zip(params, stack, strict=True):
                    if decay != 1:  # multiplying by 1 changes nothing: skipped
                        wide(p).mul_(decay)
                    wide(p).add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss

    def momentum_updates(self, params: list[torch.Tensor], group: dict) -> torch.Tensor:
        """Update the momentum buffers of same-shaped matrices; return the stack (N, m, n), m <= n, to
        orthogonalise: the Nesterov update, or the momentum itself."""
        momentum, updates = group["momentum"], []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            buffer = state["momentum_buffer"].lerp_(p.grad, 1 - momentum)  # in place: no stack to copy back
            updates.append(wide(p.grad.lerp(buffer, momentum) if group["nesterov"] else buffer))
        return torch.stack(updates)


def wide(t: torch.Tensor) -> torch.Tensor:
    """A matrix with no more rows than columns: a tall one's transpose (a view)."""
    return t.t() if t.shape[0] > t.shape[1] else t
