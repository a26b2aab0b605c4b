"""PyTorch peer of the training benchmark: the released code's round loop, in PyTorch.

The released CLAP code trains participants one after another: each loads the
global model, runs its local epochs of SGD over its segments in split order
(an ``nn.Sequential`` MLP, BCE on sigmoid scores, batch 128), and the server
averages the participants' parameters weighted by their segment counts.
:class:`TorchPeer` runs exactly that loop on the same features, labels and
participants as a clapjax :class:`~clapjax.engine.Engine`, so that
``experiments.bench`` can time both in one process with interleaved rounds.

Both networks are written the way ``clapjax.model.Scorer`` computes them:

* ``reference``: ``Linear(D, 512) → ReLU → Dropout → Linear(512, 32) → ReLU →
  Dropout → Linear(32, 1)`` (released code, ``nn.Sequential``).
* ``paper``: the same with the two hidden linears replaced by
  :class:`GatedLinear`: ``h = fc(x); h = h · softmax(att(x), feature axis) + h``
  (the authors' dormant attention module, "multiplication then addition").

The peer is as fast as plain PyTorch allows, never handicapped: batches are
zero-copy views of the feature tensor (participants' rows are contiguous in the
benchmark), a last partial batch is a shorter view (nothing masked is
computed), losses use ``binary_cross_entropy_with_logits`` for one crop,
and aggregation is in-place. Threads: PyTorch's intra-op pool
(``torch.get_num_threads()``, default: the physical cores), reported by
:func:`threads`.

PyTorch is optional (``pip install -e ".[bench]"``, CPU build ``torch==2.13.0``);
:func:`unavailable_reason` says why the peer cannot run.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from clapjax.model import ModelOptions

#: The version the ``bench`` extra pins (a CPU build that installs without CUDA).
PINNED_TORCH = "2.13.0"


def unavailable_reason() -> str | None:
    """None when PyTorch imports, else a one-line reason (install hint included)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        return (f"PyTorch is not installed ({e}); install the bench extra: "
                f"pip install -e \".[bench]\" (CPU build torch=={PINNED_TORCH})")
    return None


def threads() -> dict:
    """PyTorch's thread counts and version (``{}`` without PyTorch)."""
    if unavailable_reason() is not None:
        return {}
    import torch

    return {"torch": torch.__version__, "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads()}


def _modules():
    import torch
    from torch import nn

    class GatedLinear(nn.Module):
        """``h = fc(x); h · softmax(att(x), dim=-1) + h`` (clapjax.model.Scorer's attention gate)."""

        def __init__(self, fan_in: int, fan_out: int):
            super().__init__()
            self.fc = nn.Linear(fan_in, fan_out)
            self.att = nn.Linear(fan_in, fan_out)

        def forward(self, x):
            h = self.fc(x)
            return h * torch.softmax(self.att(x), dim=-1) + h

    return torch, nn, GatedLinear


def build_model(options: ModelOptions, input_dim: int):
    """The scorer as an ``nn.Sequential`` of ``options`` (train mode, xavier-uniform, zero bias)."""
    torch, nn, GatedLinear = _modules()
    h1, h2 = options.hidden
    layer = GatedLinear if options.attention else nn.Linear
    model = nn.Sequential(
        layer(input_dim, h1), nn.ReLU(), nn.Dropout(options.dropout_rate),
        layer(h1, h2), nn.ReLU(), nn.Dropout(options.dropout_rate),
        nn.Linear(h2, 1))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if options.init == "xavier_uniform":
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model.train()


def _torch_names(options: ModelOptions) -> dict[str, tuple[str, str]]:
    """clapjax parameter path ``layer/kernel`` → ``nn.Sequential`` state-dict key."""
    if options.attention:
        layers = {"fc1": "0.fc", "attention1": "0.att", "fc2": "3.fc", "attention2": "3.att", "fc3": "6"}
    else:
        layers = {"fc1": "0", "fc2": "3", "fc3": "6"}
    return {name: (f"{key}.weight", f"{key}.bias") for name, key in layers.items()}


def params_to_torch(params, options: ModelOptions) -> dict:
    """A clapjax (flax) parameter tree as a PyTorch state dict (kernels transposed)."""
    import torch

    out = {}
    for name, (w, b) in _torch_names(options).items():
        out[w] = torch.from_numpy(np.array(params[name]["kernel"], np.float32).T.copy())
        out[b] = torch.from_numpy(np.array(params[name]["bias"], np.float32))
    return out


def params_from_torch(state: dict, options: ModelOptions) -> dict:
    """A PyTorch state dict as a clapjax parameter tree of numpy arrays."""
    return {name: {"kernel": state[w].detach().numpy().T.copy(), "bias": state[b].detach().numpy().copy()}
            for name, (w, b) in _torch_names(options).items()}


def matmul_peak(shapes: Sequence[tuple[int, int, int]], repeats: int = 7) -> dict:
    """Best-of-``repeats`` float32 FLOP/s of ``torch.mm`` (PyTorch's own BLAS) per shape, and the max."""
    import time

    import torch

    per_shape = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
        per_shape[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best
    return {"per_shape_flops_per_s": per_shape, "best_flops_per_s": max(per_shape.values())}


class TorchPeer:
    """The released code's federated round loop in PyTorch, on clapjax's benchmark data.

    Args:
      features: ``[S, C, D] float32`` (shared, not copied).
      labels: ``[S] float32`` segment labels.
      participants: K row-index arrays into ``features``, in split order.
      options: the network (``ModelOptions.preset("paper" | "reference")``).
      batch_size, lr, l2 (SGD ``weight_decay``), local_epochs: local training.
      weighting: ``"segments"`` (released code: n_k / Σ n) or ``"uniform"``.
      init_params: clapjax parameters to start from (default: PyTorch's own
        xavier-uniform draw).
      seed: ``torch.manual_seed`` (dropout, default initialisation).

    ``init()`` returns the global state dict; ``run_round(state)`` trains
    every participant from it and returns ``(new state, mean losses [K])``.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, participants: Sequence[np.ndarray],
                 options: ModelOptions, *, batch_size: int = 128, lr: float = 0.01, l2: float = 0.0,
                 local_epochs: int = 1, weighting: str = "segments", init_params=None, seed: int = 0):
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        import torch

        if weighting not in ("segments", "uniform"):
            raise ValueError(f"weighting must be 'segments' or 'uniform', got {weighting!r}")
        torch.manual_seed(seed)
        self.options = options
        self.features = torch.from_numpy(np.asarray(features, np.float32))  # zero copy
        self.labels = torch.from_numpy(np.asarray(labels, np.float32))
        self.batch_size, self.lr, self.l2, self.local_epochs = batch_size, lr, l2, local_epochs
        # Contiguous participants train on zero-copy views; others gather their rows.
        self.slices: list[Any] = []
        for rows in participants:
            rows = np.asarray(rows, np.int64)
            if rows.size and np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
                self.slices.append(slice(int(rows[0]), int(rows[0]) + rows.size))
            else:
                self.slices.append(torch.from_numpy(rows))
        counts = np.array([np.asarray(p).size for p in participants], np.float64)
        w = counts if weighting == "segments" else (counts > 0).astype(np.float64)
        self.weights = (w / w.sum()).tolist()
        self.model = build_model(options, self.features.shape[-1])
        if init_params is not None:
            self.model.load_state_dict(params_to_torch(init_params, options))

    def init(self) -> dict:
        """The global parameters (a detached copy of the model's)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _loss(self, logits, y):
        import torch
        import torch.nn.functional as F

        if logits.shape[-1] == 1:
            return F.binary_cross_entropy_with_logits(logits[..., 0], y)
        # Mean of crop probabilities, as clapjax.model.log_probabilities (exact, no clipping).
        log_c = math.log(logits.shape[-1])
        log_p = torch.logsumexp(F.logsigmoid(logits), dim=-1) - log_c
        log_q = torch.logsumexp(F.logsigmoid(-logits), dim=-1) - log_c
        return -(y * log_p + (1 - y) * log_q).mean()

    def run_round(self, state: dict) -> tuple[dict, np.ndarray]:
        import torch

        model, params = self.model, list(self.model.parameters())
        names = [n for n, _ in model.named_parameters()]
        total = [torch.zeros_like(state[n]) for n in names]
        losses = []
        for rows, weight in zip(self.slices, self.weights):
            with torch.no_grad():
                for p, n in zip(params, names):
                    p.copy_(state[n])
            opt = torch.optim.SGD(params, lr=self.lr, weight_decay=self.l2)
            if isinstance(rows, slice):
                x_all, y_all = self.features[rows], self.labels[rows]
            else:
                x_all, y_all = self.features.index_select(0, rows), self.labels.index_select(0, rows)
            loss_sum, steps = torch.zeros(()), 0
            for _ in range(self.local_epochs):
                for lo in range(0, x_all.shape[0], self.batch_size):
                    x, y = x_all[lo: lo + self.batch_size], y_all[lo: lo + self.batch_size]
                    opt.zero_grad(set_to_none=True)
                    loss = self._loss(model(x)[..., 0], y)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.detach()
                    steps += 1
            losses.append(float(loss_sum) / max(steps, 1))
            with torch.no_grad():
                for t, p in zip(total, params):
                    t.add_(p, alpha=weight)
        return dict(zip(names, total)), np.array(losses)
