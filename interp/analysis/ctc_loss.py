"""The CTC loss of the text-decodability probe, compiled for a CPU.

`ctc_loss` is the CTC negative log-likelihood per sequence, equal to
`torch.nn.functional.ctc_loss(..., reduction="none", blank=0)` in value and gradient (tested),
computed on a CPU by a compiled (numba) forward-backward in probability space, rescaled at
every frame (Graves et al. 2006), split over threads by sequence. PyTorch's CPU kernel does a
log-sum-exp per lattice cell and was most of the probe's time. A sequence whose rescaled
recursion underflows (a path over ~700 nats below the frame's best) is recomputed with
PyTorch's kernel, so the result never silently differs. On other devices it is PyTorch's kernel.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

# ---- the loss -----------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"nsz", "arcp", "contract", "reassoc"})
def _ctc_kernel(log_probs, targets, input_lengths, target_lengths, want_grad, nll, grad, first, stop):  # pragma: no cover
    """Per sequence b in first..stop-1: nll[b] = -log p(target | log_probs), and, if want_grad,
    grad[:, b] = d nll / d log_probs = -(state occupancy summed per symbol).

    Graves' forward-backward in probability space: emissions shifted by the frame's largest
    log-probability, alpha and beta divided by the previous frame's total as they are computed
    (the logs of those totals sum to the likelihood). An underflow (every reachable state ~0 at
    some frame) leaves nll[b] = inf.
    """
    C = log_probs.shape[2]
    for b in range(first, stop):
        T, L = input_lengths[b], target_lengths[b]
        S = 2 * L + 1
        ext = np.zeros(S, dtype=np.int64)  # blank, c1, blank, c2, ..., blank
        skip = np.zeros(S)  # 1.0 where state s may be entered from s - 2 (a character unlike the previous one)
        for j in range(L):
            ext[2 * j + 1] = targets[b, j]
            if j > 0 and targets[b, j] != targets[b, j - 1]:
                skip[2 * j + 1] = 1.0
        emit = np.empty((T, S))
        prob = np.empty(C)
        log_scale = 0.0
        for t in range(T):
            m = -np.inf
            for c in range(C):
                m = max(m, log_probs[t, b, c])
            for c in range(C):
                prob[c] = np.exp(log_probs[t, b, c] - m)
            for s in range(S):
                emit[t, s] = prob[ext[s]]
            log_scale += m
        alpha = np.zeros((T, S))
        alpha[0, 0] = emit[0, 0]
        alpha[0, 1] = emit[0, 1]
        z = alpha[0, 0] + alpha[0, 1]
        for t in range(1, T):
            if not z > 0.0:
                break
            log_scale += np.log(z)
            inv = 1.0 / z
            prev, cur, e = alpha[t - 1], alpha[t], emit[t]
            cur[0] = prev[0] * e[0] * inv
            cur[1] = (prev[1] + prev[0]) * e[1] * inv
            z = cur[0] + cur[1]
            for s in range(2, S):
                v = (prev[s] + prev[s - 1] + skip[s] * prev[s - 2]) * e[s] * inv
                cur[s] = v
                z += v
        end = alpha[T - 1, S - 1] + alpha[T - 1, S - 2]
        if not (z > 0.0 and end > 0.0):
            nll[b] = np.inf
            continue
        nll[b] = -(log_scale + np.log(end))
        if not want_grad:
            continue
        # beta[t, s]: mass of the lattice after frame t given state s at t (emission at t
        # excluded), up to a factor per frame; occupancy is normalised per frame below.
        beta = np.zeros((T, S))
        beta[T - 1, S - 1] = 1.0
        beta[T - 1, S - 2] = 1.0
        q = np.zeros(S + 2)
        for t in range(T - 2, -1, -1):
            nxt, cur, e = beta[t + 1], beta[t], emit[t + 1]
            z = 0.0
            for s in range(S):
                q[s] = nxt[s] * e[s]
                z += q[s]
            if not z > 0.0:
                break
            inv = 1.0 / z
            for s in range(S):
                cur[s] = (q[s] + q[s + 1] + skip[s + 2] * q[s + 2] if s + 2 < S else q[s] + q[s + 1]) * inv
        for t in range(T):
            z = 0.0
            for s in range(S):
                alpha[t, s] *= beta[t, s]
                z += alpha[t, s]
            if not z > 0.0:  # underflow: no gradient here, and inf tells the caller to redo it
                nll[b] = np.inf
                break
            alpha[t] *= 1.0 / z
        if not np.isfinite(nll[b]):
            continue
        for t in range(T):
            for s in range(S):
                grad[t, b, ext[s]] -= alpha[t, s]


@functools.lru_cache(maxsize=None)
def _pool(n: int) -> ThreadPoolExecutor:
    # Python threads, not numba's parallel loops: those run on an OpenMP pool whose idle threads
    # spin, and on a busy 2-core machine they starved PyTorch's operations (6x slower epochs).
    return ThreadPoolExecutor(n, thread_name_prefix="ctc")


class _CTC(torch.autograd.Function):
    """`_ctc_kernel` as an autograd function; the gradient is computed with the loss."""

    @staticmethod
    def forward(ctx, log_probs, targets, input_lengths, target_lengths):
        lp = log_probs.detach().to(torch.float64).contiguous().numpy()
        nll = np.zeros(lp.shape[1])
        want = bool(ctx.needs_input_grad[0])
        grad = np.zeros(lp.shape if want else (0, 0, 0))
        args = (lp, targets.numpy(), input_lengths.numpy(), target_lengths.numpy(), want, nll, grad)
        B, n = lp.shape[1], min(torch.get_num_threads(), lp.shape[1])
        if n > 1:  # the kernel releases the GIL: one share of the sequences per thread
            cuts = np.linspace(0, B, n + 1).astype(int)
            list(_pool(n).map(lambda k: _ctc_kernel(*args, cuts[k], cuts[k + 1]), range(n)))
        else:
            _ctc_kernel(*args, 0, B)
        if want:
            ctx.save_for_backward(torch.from_numpy(grad).to(log_probs.dtype))
        return torch.from_numpy(nll).to(log_probs.dtype)

    @staticmethod
    def backward(ctx, grad_nll):
        (grad,) = ctx.saved_tensors
        # through log_softmax, d nll / d logits = softmax - occupancy
        return torch.nan_to_num(grad * grad_nll[None, :, None], nan=0.0, posinf=0.0, neginf=0.0), None, None, None


def ctc_loss(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
             target_lengths: torch.Tensor) -> torch.Tensor:
    """CTC negative log-likelihood per sequence (blank = 0), as
    `torch.nn.functional.ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction="none")`.

    log_probs: (T, B, C) log-softmax outputs; targets: (B, L) padded symbol ids (1..C-1);
    lengths: (B,) int64. Every sequence must be feasible (at least one character, and as many
    frames as characters plus repeated pairs): callers drop the others, as `zero_infinity` would.
    On a CPU this runs a compiled forward-backward in parallel over sequences (PyTorch's CPU
    kernel, a scalar log-sum-exp per lattice cell, is several times slower); elsewhere it is
    PyTorch's own kernel.
    """
    input_lengths = torch.as_tensor(input_lengths, dtype=torch.long).cpu()
    target_lengths = torch.as_tensor(target_lengths, dtype=torch.long).cpu()
    targets = torch.as_tensor(targets, dtype=torch.long)
    if log_probs.device.type != "cpu":
        return torch.nn.functional.ctc_loss(log_probs, targets.to(log_probs.device), input_lengths, target_lengths,
                                            reduction="none")
    # the compiled kernel does not check bounds: refuse what it would read past
    T, B, C = log_probs.shape
    if not (targets.dim() == 2 and len(targets) == B == len(input_lengths) == len(target_lengths)):
        raise ValueError("ctc_loss: targets (B, L) and lengths (B,) must match log_probs (T, B, C)")
    if B and not (int(input_lengths.max()) <= T and int(target_lengths.max()) <= targets.shape[1]
                  and int(target_lengths.min()) >= 1 and int(input_lengths.min()) >= 1
                  and int(targets.min()) >= 0 and int(targets.max()) < C):
        raise ValueError("ctc_loss: lengths must be in 1..T and 1..L, and targets in 0..C-1")
    nll = _CTC.apply(log_probs, targets.cpu().contiguous(), input_lengths, target_lengths)
    bad = ~torch.isfinite(nll)
    if bad.any():  # rescaling underflowed (a path > 700 nats below the best): redo those in log space
        idx = torch.nonzero(bad).squeeze(1)
        exact = torch.nn.functional.ctc_loss(log_probs[:, idx], targets[idx], input_lengths[idx], target_lengths[idx],
                                             reduction="none")
        nll = nll.masked_fill(bad, 0.0).index_put((idx,), exact, accumulate=True)
    return nll


def feasible(n_frames: int, seq: np.ndarray) -> bool:
    """Whether CTC can align `seq` to `n_frames` frames: one per character plus one blank
    between each repeated pair."""
    seq = np.asarray(seq)
    return len(seq) > 0 and n_frames >= len(seq) + int((seq[1:] == seq[:-1]).sum())
