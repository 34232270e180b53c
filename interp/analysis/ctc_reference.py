"""The CTC probe's single-head reference: `fit_ctc_head`, one linear head trained alone with
PyTorch's `CTCLoss` for a fixed number of epochs, no validation split. It is the
specification the batched trainer (`interp.analysis.ctc.fit_ctc_heads`) is tested against
(`ProbeConfig(ctc_method="reference")`), and slow.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from interp.analysis.ctc import greedy_decode


def fit_ctc_head(seqs: Sequence[np.ndarray], targets: Sequence[np.ndarray], n_symbols: int, epochs: int = 60,
                 lr: float = 5e-3, weight_decay: float = 1e-4, batch_items: int = 16, seed: int = 0,
                 device: str = "cpu"):
    """Train one linear CTC head (blank = 0) on standardised states with `torch.nn.CTCLoss`,
    a fixed number of epochs; returns a callable that decodes a list of (T_i, d) arrays into
    symbol sequences (greedy, repeats collapsed, blanks dropped).

    The reference for `fit_ctc_heads`: one head, PyTorch's loss, no validation split.
    """
    device = torch.device(device)
    rows = np.concatenate(seqs)
    mu = torch.as_tensor(rows.mean(0, dtype=np.float64), dtype=torch.float32, device=device)
    sd = torch.as_tensor(rows.std(0, dtype=np.float64), dtype=torch.float32, device=device).clamp_min(1e-6)
    xs = [(torch.as_tensor(s, dtype=torch.float32, device=device) - mu) / sd for s in seqs]
    ys = [torch.as_tensor(t, dtype=torch.long) for t in targets]
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(rows.shape[1], n_symbols + 1).to(device)
    torch.nn.init.zeros_(head.weight)
    loss_fn = torch.nn.CTCLoss(blank=0, zero_infinity=True)
    pad = torch.nn.utils.rnn.pad_sequence
    n = len(xs)
    with torch.enable_grad():
        # the bias starts where a head that reads nothing fits the transcripts best (L-BFGS, all items)
        frames, chars = torch.tensor([len(x) for x in xs]), torch.tensor([len(y) for y in ys])
        bias = torch.zeros(n_symbols + 1, dtype=torch.float64, requires_grad=True)
        lbfgs = torch.optim.LBFGS([bias], max_iter=50, line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad()
            loss = loss_fn(bias.log_softmax(-1).expand(int(frames.max()), n, -1), torch.cat(ys), frames, chars)
            loss.backward()
            return loss

        lbfgs.step(closure)
        with torch.no_grad():
            head.bias.copy_(bias)
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen).tolist()
            for s in range(0, n, batch_items):
                b = order[s:s + batch_items]
                x = pad([xs[i] for i in b])  # (T, B, d)
                logp = head(x).log_softmax(-1)
                loss = loss_fn(logp, torch.cat([ys[i] for i in b]).to(device),
                               torch.tensor([len(xs[i]) for i in b]), torch.tensor([len(ys[i]) for i in b]))
                opt.zero_grad()
                loss.backward()
                opt.step()

    def decode(states: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            x = torch.cat([(torch.as_tensor(s, dtype=torch.float32, device=device) - mu) / sd for s in states])
            return greedy_decode(head(x), [len(s) for s in states])

    return decode


