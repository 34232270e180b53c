"""Linear CTC heads: the text-decodability probe's trainer and greedy decoder.

The probe (target `ctc`) asks whether a linear map from each audio position's residual to
characters can spell the transcript: a head `Linear(d, symbols + 1)` (blank = 0) on
standardised states, trained with the CTC loss (`interp.analysis.ctc_loss`), scored by the CER
of its greedy decoding on held-out items. A sweep fits ten heads per layer (five folds, probe
and shuffled-transcript control), so this module is built for many heads at once:

- `fit_ctc_heads`: trains many heads together. Each head has its own training items and
  targets; a batch is drawn from items that train the same heads (in cross-validation, one
  outer fold), whose logits come from one matrix product with those heads' weights side by
  side. Each head keeps its own Adam state and its own standardisation, folded into its
  weights, so one copy of the features serves every fold. Each head starts from zero weights
  and the bias that best fits its transcripts without reading the states (`_bias_start`),
  holds out a validation split of its training items, stops when the loss there stops
  falling, and keeps its best epoch.

The single-head reference the fast path is tested against is `interp.analysis.ctc_reference`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from interp.analysis.ctc_loss import ctc_loss, feasible

# ---- decoding and scoring --------------------------------------------------------------------


def greedy_decode(logits: torch.Tensor, lengths: Sequence[int]) -> list[np.ndarray]:
    """Best path per item of concatenated frames (sum(lengths), C): argmax, repeats collapsed
    (within an item), blanks dropped."""
    best = logits.argmax(-1).cpu().numpy()
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    new = np.ones(len(best), dtype=bool)
    new[1:] = best[1:] != best[:-1]
    new[bounds[:-1][np.asarray(lengths) > 0]] = True
    keep = new & (best != 0)
    return [best[a:b][keep[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


def cer(refs: Sequence[np.ndarray], hyps: Sequence[np.ndarray], chars: Sequence[str]) -> float:
    """Corpus character error rate (`jiwer.cer`: total edits / total reference characters)."""
    import jiwer

    text = lambda s: "".join(chars[k - 1] for k in s)  # noqa: E731
    return float(jiwer.cer([text(r) for r in refs], [text(h) for h in hyps]))


# ---- many heads at once -------------------------------------------------------------------


@dataclass(frozen=True)
class CTCHeadConfig:
    """Optimisation of the heads (`ProbeConfig` fills it from its `ctc_*` fields)."""

    epochs: int = 60  #: most passes over each head's training items
    lr: float = 5e-3  #: Adam learning rate without a validation split (fixed epochs, as the reference)
    start_lr: float = 1e-2  #: Adam learning rate with a validation split, divided by `lr_drop` at every plateau
    lr_drop: float = 4.0  #: factor of each drop
    patience: int = 2  #: drops after which a head that fails to improve again stops
    min_improvement: float = 0.005  #: relative fall of the validation loss below which an epoch counts as a plateau
    weight_decay: float = 1e-4  #: L2 on the head (Adam's coupled weight decay)
    batch_items: int = 16  #: items per optimisation step
    val_fraction: float = 0.1  #: share of each head's training items held out to stop on (0: none, fixed epochs)
    seed: int = 0
    device: str = "cpu"


@dataclass
class CTCHeads:
    """Trained heads: head h maps raw states x to logits ((x - mean[h]) / scale[h]) @ weight[h].T + bias[h]."""

    weight: torch.Tensor  #: (H, C, d) on standardised states
    bias: torch.Tensor  #: (H, C)
    mean: torch.Tensor  #: (H, d) standardisation of each head's training rows
    scale: torch.Tensor  #: (H, d)
    epochs: list[int] = field(default_factory=list)  #: epoch whose weights were kept, per head
    val_loss: list[float] = field(default_factory=list)  #: validation loss of the kept weights (NaN without a split)
    val_cer: list[float] = field(default_factory=list)  #: validation CER of the kept weights (NaN without a split)

    def logits(self, x: torch.Tensor, heads: Sequence[int]) -> torch.Tensor:
        """(n, len(heads), C) logits of the given heads for raw states x (n, d)."""
        w, b = _effective(self.weight[list(heads)], self.bias[list(heads)], self.mean[list(heads)],
                          self.scale[list(heads)])
        return torch.addmm(b.reshape(-1), x, w.reshape(-1, w.shape[-1]).T).view(len(x), len(heads), -1)

    def decode(self, x: torch.Tensor, lengths: Sequence[int], head: int) -> list[np.ndarray]:
        """Greedy transcripts of items whose frames are concatenated in x."""
        with torch.no_grad():
            return greedy_decode(self.logits(x, [head])[:, 0], lengths)


def _effective(w, b, mean, scale):
    """Fold standardisation into the head: W((x - m)/s) + b = (W/s) x + (b - (W/s) m)."""
    w_eff = w / scale[:, None, :]
    return w_eff, b - torch.einsum("hcd,hd->hc", w_eff, mean)


def fit_ctc_heads(X: np.ndarray | torch.Tensor, bounds: np.ndarray, targets: Sequence[Sequence[np.ndarray | None]],
                  train: Sequence[np.ndarray], n_symbols: int, config: CTCHeadConfig = CTCHeadConfig(),
                  on_epoch=None) -> CTCHeads:
    """Train len(train) linear CTC heads on one layer's states.

    X: (n_rows, d) states of all items, item i in rows bounds[i]:bounds[i+1]. Head h trains on
    items train[h] towards targets[h][i] (symbol ids 1..n_symbols). Features are standardised
    per head with the statistics of its training rows, as the reference does. Each head holds
    out a seeded `val_fraction` of its training items (heads with the same training items share
    the split), stops after `patience` epochs without a lower validation loss, and keeps its best
    epoch's weights. Items whose target does not fit their frames stay out of the loss but
    count in the batch mean, as `CTCLoss(zero_infinity=True)` counts them.
    """
    dev = torch.device(config.device)
    X = torch.as_tensor(X, dtype=torch.float32).to(dev)
    bounds = np.asarray(bounds, dtype=np.int64)
    n_items, d, H, C = len(bounds) - 1, X.shape[1], len(train), n_symbols + 1
    lengths = np.diff(bounds)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train = [np.asarray(tr, dtype=np.int64) for tr in train]

    mean, scale = _head_statistics(X, bounds, train)
    splits: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    for tr in train:
        if tr.tobytes() not in splits:
            splits[tr.tobytes()] = _validation_split(tr, config.val_fraction, rng)
    fit_items = [splits[tr.tobytes()][0] for tr in train]
    val_items = [splits[tr.tobytes()][1] for tr in train]
    use_val = np.array([len(v) > 0 for v in val_items])

    trains = np.zeros((n_items, H), dtype=bool)  # item i is in head h's training items
    fits = np.zeros((n_items, H), dtype=bool)  # ... and in its fit (not validation) split
    for h in range(H):
        trains[train[h], h] = True
        fits[fit_items[h], h] = True
    in_loss = fits.copy()  # ... and its target fits its frames
    for i, h in zip(*np.nonzero(fits)):
        in_loss[i, h] = feasible(lengths[i], targets[h][i])
    L = max([len(targets[h][i]) for h in range(H) for i in fit_items[h]] + [1])
    tgt = np.zeros((n_items, H, L), dtype=np.int64)
    tlen = np.zeros((n_items, H), dtype=np.int64)
    for h in range(H):
        for i in fit_items[h]:
            s = np.asarray(targets[h][i], dtype=np.int64)
            tgt[i, h, :len(s)] = s
            tlen[i, h] = len(s)
    # Items with the same training heads form a pool (in cross-validation: an outer fold); a
    # batch comes from one pool, so one product gives the logits of every head it trains.
    pools: dict[bytes, list[int]] = {}
    for i in np.flatnonzero(trains.any(1)):
        pools.setdefault(trains[i].tobytes(), []).append(int(i))
    pools_list = [(np.flatnonzero(trains[v[0]]), np.asarray(v)) for v in pools.values()]

    weight = [torch.zeros(C, d, device=dev, requires_grad=True) for _ in range(H)]
    start = _bias_start(targets, lengths, fit_items, in_loss, C, config.seed)
    bias = [start[h].to(dev).requires_grad_() for h in range(H)]
    lr = np.where(use_val, config.start_lr, config.lr)
    adam = lambda h: torch.optim.Adam([weight[h], bias[h]], lr=float(lr[h]), weight_decay=config.weight_decay)  # noqa: E731
    opts = [adam(h) for h in range(H)]
    best = [(weight[h].detach().clone(), bias[h].detach().clone()) for h in range(H)]
    best_loss, best_cer, best_epoch, drops = np.full(H, np.inf), np.full(H, np.nan), [0] * H, np.zeros(H, dtype=int)
    alive = np.ones(H, dtype=bool)

    for epoch in range(1, config.epochs + 1):
        for heads, items in _batches(pools_list, alive, lengths, config.batch_items, gen):
            pair = in_loss[np.ix_(items, heads)]  # (n, heads): the pairs that enter the loss
            counts = np.zeros(H)
            counts[heads] = fits[np.ix_(items, heads)].sum(0)
            if not pair.any():
                continue
            rows = torch.from_numpy(np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in items])).to(dev)
            w_eff, b_eff = _effective(torch.stack([weight[h] for h in heads]), torch.stack([bias[h] for h in heads]),
                                      mean[heads], scale[heads])
            logits = torch.addmm(b_eff.reshape(-1), X.index_select(0, rows), w_eff.reshape(-1, d).T)
            logp = logits.view(len(rows), len(heads), C).log_softmax(-1)
            padded = torch.nn.utils.rnn.pad_sequence(logp.split(lengths[items].tolist()))  # (T, n, heads, C)
            k_item, k_head = np.nonzero(pair)
            sel = torch.from_numpy(k_item * len(heads) + k_head).to(dev)
            lp = padded.reshape(padded.shape[0], -1, C).index_select(1, sel)
            it, hd = items[k_item], heads[k_head]
            tl = tlen[it, hd]
            nll = ctc_loss(lp, torch.from_numpy(tgt[it, hd, :tl.max()]).to(dev), torch.from_numpy(lengths[it]).to(dev),
                           torch.from_numpy(tl).to(dev))
            # CTCLoss(reduction="mean") for each head: loss / target length, averaged over its batch items
            w = torch.from_numpy(1.0 / (tl * counts[hd])).to(dev, nll.dtype)
            loss = (nll * w).sum()
            for h in heads:
                opts[h].zero_grad(set_to_none=True)
            loss.backward()
            for h in heads[pair.any(0)]:
                opts[h].step()
        for h in np.flatnonzero(alive & ~use_val):
            best[h] = (weight[h].detach().clone(), bias[h].detach().clone())
            best_epoch[h] = epoch
        scored = _validate(X, bounds, lengths, weight, bias, mean, scale, val_items, targets, alive & use_val, C)
        for h, (loss, c) in scored.items():
            plateau = not loss < best_loss[h] * (1 - config.min_improvement)
            if loss < best_loss[h]:
                best_loss[h], best_cer[h], best_epoch[h] = loss, c, epoch
                best[h] = (weight[h].detach().clone(), bias[h].detach().clone())
            if not plateau:
                continue
            if drops[h] >= config.patience:
                alive[h] = False
            else:
                # A plateau: go back to the best weights and continue with a smaller step (a
                # large step learns weak signals fast but leaves noise a small one averages out).
                drops[h] += 1
                lr[h] /= config.lr_drop
                with torch.no_grad():
                    weight[h].copy_(best[h][0])
                    bias[h].copy_(best[h][1])
                opts[h] = adam(h)
        if on_epoch:
            on_epoch(epoch, scored, CTCHeads(torch.stack(weight).detach(), torch.stack(bias).detach(), mean, scale))
        if not alive.any():
            break
    return CTCHeads(torch.stack([b[0] for b in best]), torch.stack([b[1] for b in best]), mean, scale, best_epoch,
                    [float(best_loss[h]) if use_val[h] else float("nan") for h in range(H)],
                    [float(best_cer[h]) for h in range(H)])


BIAS_START_ITEMS = 32  #: training items (sampled) on which a head's starting bias is fitted
BIAS_START_STEPS = 20  #: L-BFGS iterations of that fit


_bias_starts: dict[bytes, torch.Tensor] = {}  #: every layer of a sweep has the same heads' items and targets


def _bias_start(targets, lengths: np.ndarray, fit_items, in_loss: np.ndarray, C: int, seed: int) -> torch.Tensor:
    """(H, C) starting biases: for each head, the bias of a head with zero weights that best fits
    (CTC loss, L-BFGS) a seeded sample of its fit items, i.e. the symbols' rates and the
    blank's share of frames, with nothing read from the states. From zero, learning that
    alone took a head about ten epochs (the all-blank plateau), at full cost per epoch. The
    result depends on the items and targets only, so a sweep's later layers reuse it."""
    import hashlib

    rng = np.random.default_rng(seed)
    picks = []
    for h in range(len(targets)):
        items = np.asarray([i for i in fit_items[h] if in_loss[i, h]], dtype=np.int64)
        picks.append(np.sort(rng.choice(items, size=min(BIAS_START_ITEMS, len(items)), replace=False)))
    key = hashlib.sha256(repr((C, BIAS_START_ITEMS, BIAS_START_STEPS)).encode() + np.asarray(lengths).tobytes())
    for h, items in enumerate(picks):
        key.update(items.tobytes() + b"|" + b",".join(np.asarray(targets[h][i], dtype=np.int64).tobytes() for i in items))
    if key.digest() in _bias_starts:
        return _bias_starts[key.digest()].clone()
    out = torch.zeros(len(targets), C)
    for h, items in enumerate(picks):
        if len(items) == 0:
            continue
        seqs = [np.asarray(targets[h][i], dtype=np.int64) for i in items]
        tl = torch.tensor([len(q) for q in seqs])
        tg = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(q) for q in seqs], batch_first=True)
        il = torch.from_numpy(lengths[items].astype(np.int64))
        T = int(il.max())
        b = torch.zeros(C, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([b], max_iter=BIAS_START_STEPS, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            lp = b.log_softmax(-1).expand(T, len(items), C)
            loss = (ctc_loss(lp, tg, il, tl) / tl).mean()
            loss.backward()
            return loss

        opt.step(closure)
        out[h] = b.detach().float()
    _bias_starts[key.digest()] = out
    return out.clone()


def _head_statistics(X: torch.Tensor, bounds: np.ndarray, train: Sequence[np.ndarray]):
    """Mean and standard deviation of each head's training rows. Per-item sums are taken in
    float32 around a common offset (one item's mean, against cancellation), then pooled in float64."""
    n_items, d = len(bounds) - 1, X.shape[1]
    offset = X[bounds[0]:bounds[1]].mean(0)
    s1 = torch.zeros(n_items, d, device=X.device)
    s2 = torch.zeros_like(s1)
    step = 64
    for a in range(0, n_items, step):
        b = min(n_items, a + step)
        x = X[bounds[a]:bounds[b]] - offset
        owner = torch.from_numpy(np.repeat(np.arange(b - a), np.diff(bounds[a:b + 1]))).to(X.device)
        s1[a:b].index_add_(0, owner, x)
        s2[a:b].index_add_(0, owner, x.square_())
    s1, s2 = s1.double(), s2.double()
    lengths = torch.from_numpy(np.diff(bounds)).to(X.device, torch.float64)
    means, scales = [], []
    for tr in train:
        idx = torch.from_numpy(np.asarray(tr, dtype=np.int64)).to(X.device)
        n = lengths[idx].sum()
        m = s1[idx].sum(0) / n
        var = (s2[idx].sum(0) / n - m * m).clamp_min(0)
        means.append(m + offset.double())
        scales.append(var.sqrt().clamp_min(1e-6))
    return torch.stack(means).float(), torch.stack(scales).float()


MIN_VALIDATION_ITEMS = 8  #: a smaller validation split cannot tell epochs apart: train for all epochs instead


def _validation_split(items: np.ndarray, fraction: float, rng: np.random.Generator):
    """Fit and validation items: a seeded `fraction` of the items, or none (all items fit, a
    fixed number of epochs) when that would be fewer than MIN_VALIDATION_ITEMS."""
    n_val = int(round(fraction * len(items)))
    if n_val < MIN_VALIDATION_ITEMS:
        return items, items[:0]
    perm = rng.permutation(len(items))
    return np.sort(items[perm[n_val:]]), np.sort(items[perm[:n_val]])


def _batches(pools, alive: np.ndarray, lengths: np.ndarray, batch_items: int, gen: torch.Generator):
    """Shuffled batches of `batch_items` items, each from one pool (items with the same heads),
    paired with the pool's heads that are still training. Within a pool, items are shuffled,
    then every run of 8 batches is sorted by length so that a batch's sequences pad little."""
    out = []
    for heads, items in pools:
        heads = heads[alive[heads]]
        if len(heads) == 0:
            continue
        items = items[torch.randperm(len(items), generator=gen).numpy()]
        run = 8 * batch_items
        for a in range(0, len(items), run):
            chunk = items[a:a + run]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            out += [(heads, chunk[s:s + batch_items]) for s in range(0, len(chunk), batch_items)]
    order = torch.randperm(len(out), generator=gen).tolist()
    return [out[k] for k in order]


def _validate(X, bounds, lengths, weight, bias, mean, scale, val_items, targets, which: np.ndarray,
              C: int) -> dict[int, tuple[float, float]]:
    """(loss, CER) on its validation items for each head in `which`; heads with the same
    validation items read them in one product. The loss is the training objective (CTC loss
    per target character, averaged over items whose target fits their frames)."""
    from rapidfuzz.distance import Levenshtein

    groups: dict[bytes, list[int]] = {}
    for h in np.flatnonzero(which):
        groups.setdefault(val_items[h].tobytes(), []).append(int(h))
    out = {}
    with torch.no_grad():
        for heads in groups.values():
            items = val_items[heads[0]]
            rows = torch.from_numpy(np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in items])).to(X.device)
            w, b = _effective(torch.stack([weight[h] for h in heads]), torch.stack([bias[h] for h in heads]),
                              mean[heads], scale[heads])
            logits = torch.addmm(b.reshape(-1), X.index_select(0, rows), w.reshape(-1, X.shape[1]).T)
            logits = logits.view(len(rows), len(heads), C)
            padded = torch.nn.utils.rnn.pad_sequence(logits.log_softmax(-1).split(lengths[items].tolist()))
            for k, h in enumerate(heads):
                refs = [np.asarray(targets[h][i]) for i in items]
                hyps = greedy_decode(logits[:, k], lengths[items].tolist())
                edits = sum(Levenshtein.distance(r.tolist(), y.tolist()) for r, y in zip(refs, hyps))
                fits = np.flatnonzero([feasible(lengths[i], r) for i, r in zip(items, refs)])
                loss = np.inf
                if len(fits):
                    tl = torch.tensor([len(refs[j]) for j in fits])
                    tg = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(refs[j]) for j in fits], batch_first=True)
                    nll = ctc_loss(padded[:, torch.from_numpy(fits).to(X.device), k], tg,
                                   torch.from_numpy(lengths[items][fits]), tl)
                    loss = float((nll.cpu() / tl).mean())
                out[h] = (loss, edits / max(1, sum(len(r) for r in refs)))
    return out
