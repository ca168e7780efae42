"""Elastic weight consolidation (EWC) as pure functions over named parameter tensors.

Conventions (the ones EWC code in the wild leaves unsaid):

- **Fisher**: the *empirical* Fisher diagonal, the mean over samples of the squared
  *per-sample* gradient of that sample's loss (its negative log-likelihood):
  ``F = 1/N * sum_n (d loss_n / d theta)^2``. Never the square of a batch gradient.
- **Penalty**: ``lam / 2 * sum_i F_i * (theta_i - theta*_i)^2`` (lambda over two), summed over
  every entry of every parameter that has both an anchor and a Fisher value.
- **Online EWC** across consolidations: ``F <- gamma * F_old + F_new`` (Schwarz et al. 2018),
  one anchor (the current champion), one accumulated Fisher.
- **Growing tables**: id tables (embeddings) gain rows between consolidations. Rows beyond
  an anchor or Fisher tensor have no anchor and count as zero Fisher: they are free to move.
  `online_fisher` pads the smaller tensor with zeros to the larger shape.

All functions take and return ``dict[str, torch.Tensor]`` keyed by parameter name
(``dict(net.named_parameters())``), never mutate their inputs, and leave the module in the
train/eval mode they found it in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from fastslow.errors import ConfigError

logger = logging.getLogger(__name__)

#: Batches are tuples of tensors sharing their first (sample) dimension.
Batch = tuple[torch.Tensor, ...]
#: ``loss_fn(net, batch) -> (B,)`` per-sample losses (negative log-likelihoods) of a batch.
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
Tensors = Mapping[str, torch.Tensor]


class _BoundLoss(nn.Module):
    """Wraps ``loss_fn(net, batch)`` as a module, so `torch.func.functional_call` can swap the
    net's parameters whichever of its methods the loss calls."""

    def __init__(self, net: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.net, batch)


def _per_sample_grads_vmap(net: nn.Module, loss_fn: LossFn, params: dict[str, torch.Tensor],
                           batch: Batch) -> dict[str, torch.Tensor]:
    bound = _BoundLoss(net, loss_fn)

    def one_sample_loss(p: dict[str, torch.Tensor], *sample: torch.Tensor) -> torch.Tensor:
        named = {f"net.{name}": value for name, value in p.items()}
        return torch.func.functional_call(bound, named, tuple(x.unsqueeze(0) for x in sample)).sum()

    in_dims = (None,) + (0,) * len(batch)
    return torch.func.vmap(torch.func.grad(one_sample_loss), in_dims=in_dims)(params, *batch)


def _per_sample_grads_loop(net: nn.Module, loss_fn: LossFn, params: dict[str, torch.Tensor],
                           batch: Batch) -> dict[str, torch.Tensor]:
    live = dict(net.named_parameters())
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in params}
    for n in range(len(batch[0])):
        loss = loss_fn(net, tuple(x[n:n + 1] for x in batch)).sum()
        grads = torch.autograd.grad(loss, [live[name] for name in params], allow_unused=True)
        for name, g in zip(params, grads):
            rows[name].append(torch.zeros_like(params[name]) if g is None else g)
    return {name: torch.stack(gs) for name, gs in rows.items()}


def fisher_diagonal(net: nn.Module, batches: Iterable[Batch], loss_fn: LossFn,
                    method: str = "vmap") -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal: mean over samples of squared per-sample gradients.

    Parameters
    ----------
    net
        The module at the parameters the Fisher is taken at (usually the anchor). Its
        parameters, gradients and train/eval mode are left as they were; the Fisher is
        computed in eval mode.
    batches
        Tuples of tensors whose first dimension is the sample; the caller sizes them so that
        ``len(batch) x number of parameters`` floats fit in memory (``vmap`` materialises
        every per-sample gradient of a batch at once).
    loss_fn
        ``loss_fn(net, batch) -> (B,)``: each sample's negative log-likelihood. It must
        treat samples independently (no batch statistics).
    method
        ``"vmap"`` (torch.func: functional_call + vmap + grad) or ``"loop"`` (one backward
        pass per sample, for losses vmap cannot trace). Both give the same numbers.

    Returns
    -------
    dict
        Parameter name -> tensor of the parameter's shape. Zero everywhere if ``batches``
        held no samples (no evidence that any parameter matters).

    Examples
    --------
    Squared loss of a two-weight linear model, per-sample gradient ``-(y - w.x) x``:

    >>> net = nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[1.0, -1.0]]))
    >>> x, y = torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([0.0, 1.0])
    >>> loss = lambda m, b: 0.5 * (b[1] - m(b[0]).squeeze(-1)) ** 2
    >>> fisher_diagonal(net, [(x, y)], loss)["weight"].tolist()   # grads (-1,-2) and (6,0)
    [[18.5, 2.0]]
    """
    if method not in ("vmap", "loop"):
        raise ConfigError("fisher_diagonal method", method, "'vmap' or 'loop'")
    params = {name: p.detach() for name, p in net.named_parameters() if p.requires_grad}
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    count = 0
    was_training = net.training
    net.eval()
    try:
        for batch in batches:
            if not len(batch[0]):
                continue
            if method == "vmap":
                grads = _per_sample_grads_vmap(net, loss_fn, params, batch)
            else:
                grads = _per_sample_grads_loop(net, loss_fn, params, batch)
            for name, g in grads.items():
                sums[name] += g.detach().pow(2).sum(dim=0)
            count += len(batch[0])
    finally:
        net.train(was_training)
    return {name: s / count if count else s for name, s in sums.items()}


def _overlap(*shapes: torch.Size) -> tuple[slice, ...]:
    return tuple(slice(0, min(sizes)) for sizes in zip(*shapes))


def ewc_penalty(params: Tensors, anchors: Tensors, fisher: Tensors, lam: float) -> torch.Tensor:
    """``lam / 2 * sum F * (theta - theta*)^2`` over the entries that have an anchor and a Fisher.

    Parameters
    ----------
    params
        Current parameters (differentiable), e.g. ``dict(net.named_parameters())``.
    anchors
        The parameters to stay close to (the champion's), detached.
    fisher
        Fisher diagonal per parameter (see `fisher_diagonal`, `online_fisher`).
    lam
        Strength lambda; the penalty is lambda *over two* times the weighted squared distance.

    Notes
    -----
    A parameter that grew since the anchor (new embedding rows) is compared on the leading
    block it shares with its anchor and Fisher; the new rows contribute nothing (no anchor:
    zero Fisher). Parameters missing from ``anchors`` or ``fisher`` contribute nothing.

    Examples
    --------
    >>> theta = {"w": torch.tensor([2.0, 1.0])}
    >>> anchor = {"w": torch.tensor([1.0, -1.0])}
    >>> ewc_penalty(theta, anchor, {"w": torch.tensor([18.5, 2.0])}, lam=0.5).item()  # 0.25*(18.5+8)
    6.625
    >>> grown = {"w": torch.tensor([2.0, 1.0, 100.0])}   # a row added after the anchor
    >>> ewc_penalty(grown, anchor, {"w": torch.tensor([18.5, 2.0])}, lam=0.5).item()
    6.625
    """
    total: torch.Tensor | None = None
    for name, f in fisher.items():
        p, a = params.get(name), anchors.get(name)
        if p is None or a is None:
            continue
        region = _overlap(p.shape, a.shape, f.shape)
        term = (f[region] * (p[region] - a[region]).pow(2)).sum()
        total = term if total is None else total + term
    if total is None:
        some = next(iter(params.values()), None)
        return torch.zeros((), device=some.device if some is not None else None)
    return 0.5 * lam * total


def _pad_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(t.shape) == shape:
        return t
    out = t.new_zeros(shape)
    out[_overlap(t.shape, torch.Size(shape))] = t
    return out


def online_fisher(old: Tensors | None, new: Tensors, gamma: float) -> dict[str, torch.Tensor]:
    """Online EWC accumulation ``gamma * old + new``, aligning shapes of grown tables.

    Each result tensor has the elementwise larger shape of ``old[name]`` and ``new[name]``
    (the smaller one is zero-padded: rows it does not have carry no Fisher). Names present
    in only one input are kept (times gamma for ``old``). ``old=None`` (the first
    consolidation) returns a copy of ``new``.

    Examples
    --------
    >>> old = {"emb": torch.tensor([[1.0], [2.0]]), "gone": torch.tensor([4.0])}
    >>> new = {"emb": torch.tensor([[10.0], [10.0], [10.0]])}   # the table grew by one row
    >>> out = online_fisher(old, new, gamma=0.5)
    >>> out["emb"].flatten().tolist(), out["gone"].tolist()
    ([10.5, 11.0, 10.0], [2.0])
    """
    if gamma < 0:
        raise ConfigError("ewc gamma", gamma, "a decay factor >= 0 (usually in (0, 1])")
    out = {name: t.detach().clone() for name, t in new.items()}
    for name, t in (old or {}).items():
        if name not in out:
            out[name] = gamma * t.detach()
            continue
        shape = tuple(max(a, b) for a, b in zip(t.shape, out[name].shape))
        out[name] = gamma * _pad_to(t.detach(), shape) + _pad_to(out[name], shape)
    return out
