"""Kronecker layers: W = Σ_r A_r ⊗ B_r, used without ever building W.

``KroneckerLinear`` replaces an ``nn.Linear`` or a Hugging Face ``Conv1D``; ``KroneckerEmbedding``
replaces a token embedding as in KnGPT2 (Edalati et al. 2021, "Kronecker Decomposition for GPT
Compression"): the v × d table is A (v × d/f) ⊗ B (1 × f), so each row is one row of A scaled by
B, and a lookup needs only that row. ``KroneckerTiedHead`` is the output projection of a model
whose head is tied to a Kronecker embedding: it reads the embedding's factors, so the tie survives.

Convention (see ``nkp``): W (m×n) = (out, in), W[i1·m2+i2, j1·n2+j2] = A[i1,j1]·B[i2,j2].

The forward y = x·Wᵀ. Reshape each input row x (n) to X (n1 × n2); then
    Y[i1, i2] = Σ_r Σ_{j1, j2} A_r[i1, j1] · X[j1, j2] · B_r[i2, j2],   y = vec(Y)
i.e. Y = Σ_r A_r X B_rᵀ: two contractions, in either order. Multiply-accumulates per token:

    B first ("b_first"): r·n1·m2·n2  (X B_rᵀ)  +  r·n1·m2·m1  (A_r ·)   = r·n1·m2·(n2 + m1)
    A first ("a_first"): r·m1·n1·n2  (A_r X)   +  r·m1·n2·m2  (· B_rᵀ)  = r·m1·n2·(n1 + m2)
    dense:               m·n = m1·m2·n1·n2

The backward pass doubles each term (gradient w.r.t. the input and w.r.t. the factor), so the same
ratio holds for forward+backward. The cheaper order is fixed at construction (``order``).

Each contraction is ONE matrix multiply over all tokens at once (the token axis is folded into the
free dimension), with a transpose-copy between them (none when B is a single row, m2 = 1). When A
is a single row or column, or B a single column (rank 1), there is one GEMM and no copy. On CPU
this beat batched small matmuls and einsum in a probe here, because one large GEMM keeps the BLAS
kernel efficient whatever m1, n1 are. Limits: the FLOP count ignores per-op overhead, so at a single
token a small layer (576 → 576: ~0.2 ms dense forward+backward) can be slower than dense, since the
Kronecker forward+backward runs about twice as many PyTorch ops; and very balanced shapes (ideal
speed-up > 10×) are bound by memory traffic in their short-K GEMMs (see docs/results/kron_speed.md).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.swap import Conv1D, linear_weight
from .nkp import kron_sum, nearest_kronecker, resolve_rank, resolve_shapes

Order = Literal["b_first", "a_first"]


def contraction_flops(a_shape: Sequence[int], b_shape: Sequence[int], rank: int = 1) -> dict[str, int]:
    """Multiply-accumulates per token of each contraction order and of the dense layer."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    return {"b_first": rank * n1 * m2 * (n2 + m1), "a_first": rank * m1 * n2 * (n1 + m2),
            "dense": m1 * m2 * n1 * n2}


def choose_order(a_shape: Sequence[int], b_shape: Sequence[int], rank: int = 1) -> Order:
    f = contraction_flops(a_shape, b_shape, rank)
    return "b_first" if f["b_first"] <= f["a_first"] else "a_first"


def kron_flops(a_shape: Sequence[int], b_shape: Sequence[int], rank: int = 1) -> int:
    """Per-token multiply-accumulates of the cheaper order."""
    f = contraction_flops(a_shape, b_shape, rank)
    return min(f["b_first"], f["a_first"])


# At one token (decoding, batch-1 serving) the FLOPs are tiny and the cost is the number of
# autograd ops: the general path below spends ~10 (GEMMs, permutes, transposes, reshapes) where
# nn.Linear spends one, which made a 576→576 layer slower than dense at 1 token. A single token of
# a rank-1 layer needs only two plain 2-D GEMMs on views of the stored factors.
ONE_TOKEN_PATH = True  # module switch so a benchmark can time both paths side by side


def _kron_linear_one_token(x, a, b, bias, order: Order) -> torch.Tensor:
    """Rank 1, one token: y = vec(A X Bᵀ) with X = x reshaped to (n1 × n2)."""
    _, m1, n1 = a.shape
    _, m2, n2 = b.shape
    # view, not a[0]: indexing's backward writes a zero-filled copy of the whole factor
    X, A, B = x.reshape(n1, n2), a.view(m1, n1), b.view(m2, n2)
    if order == "b_first":
        y = torch.mm(A, F.linear(X, B))                 # (n1, m2) → (m1, m2)
    else:
        y = F.linear(torch.mm(A, X), B)                 # (m1, n2) → (m1, m2)
    y = y.reshape(*x.shape[:-1], m1 * m2)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y


# A rank-1 layer with a single-column or single-row factor (KnGPT2's factor-2 shapes [2, 1]⊗B,
# [1, 2]⊗B and A⊗[2, 1]) needs one full GEMM and one cheap step, with no copies. The general path
# spends a second GEMM with an inner dimension of 1 or 2 and transpose-copies around the two, which
# under bf16 made a 576→576 [1, 2]⊗[576, 288] layer no faster than dense (docs/results/
# kngpt2_speed.md, before and after). B a single row (m2 = 1) has its own copy-free branch below.
VECTOR_FACTOR_PATH = True  # module switch so a benchmark (and the tests) can run both paths


def _vector_factor(m1: int, n1: int, n2: int) -> bool:
    return n1 == 1 or m1 == 1 or n2 == 1


def _kron_linear_vector_factor(x2: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rank 1 with A (m1 × 1) or (1 × n1), or B (m2 × 1); x2 (N, n1·n2) → (N, m1·m2)."""
    _, m1, n1 = a.shape
    _, m2, n2 = b.shape
    N = x2.shape[0]
    A, B = a.view(m1, n1), b.view(m2, n2)
    if n2 == 1 and n1 != 1:
        # Y[t, i1, i2] = (A x_t)[i1] · B[i2]: the GEMM with A, then the outer product with B as a
        # GEMM of inner dimension 1 (a broadcast multiply over the trailing axis of m2 = 2 was
        # slower: its backward reduces over that short axis).
        v = F.linear(x2, A)                                              # (N, m1)
        return F.linear(v.reshape(N * m1, 1), B).view(N, m1 * m2)
    if n1 == 1:
        # Y[t, i1, i2] = A[i1] · (x_t Bᵀ)[i2]: the GEMM, then every row of A scales it, written in
        # the output's own layout. The factor takes the GEMM's dtype (bf16 under autocast), as
        # the general path's second matmul would.
        t = F.linear(x2, B)                                              # (N, m2)
        return (t.view(N, 1, m2) * A.to(t.dtype).view(1, m1, 1)).view(N, m1 * m2)
    # m1 = 1: y_t = (Σ_j1 A[j1] X_t[j1, :]) Bᵀ: mix the n1 blocks of the input, then one GEMM.
    u = (x2.view(N, n1, n2) * A.to(x2.dtype).view(1, n1, 1)).sum(1)   # (N, n2)
    return F.linear(u, B)


def kron_linear(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
                order: Order = "b_first") -> torch.Tensor:
    """y = x · (Σ_r a_r ⊗ b_r)ᵀ + bias for x (..., n1·n2), a (r, m1, n1), b (r, m2, n2)."""
    r, m1, n1 = a.shape
    _, m2, n2 = b.shape
    lead = x.shape[:-1]
    if x.shape[-1] != n1 * n2:
        raise ValueError(f"input has {x.shape[-1]} features, the Kronecker layer expects {n1 * n2}")
    if order not in ("b_first", "a_first"):
        raise ValueError(f"order must be 'b_first' or 'a_first', got {order!r}")
    N = math.prod(lead)
    if r == 1 and N == 1 and ONE_TOKEN_PATH:
        return _kron_linear_one_token(x, a, b, bias, order)
    x2 = x.reshape(N, n1 * n2)
    if r == 1 and _vector_factor(m1, n1, n2) and VECTOR_FACTOR_PATH:
        y = _kron_linear_vector_factor(x2, a, b)
    elif order == "b_first":
        # T[(t, j1), (s, i2)] = Σ_j2 X_t[j1, j2] B_s[i2, j2]: one GEMM over every token and row block.
        t = F.linear(x2.reshape(N * n1, n2), b.reshape(r * m2, n2))
        a2 = a.permute(1, 2, 0).reshape(m1, n1 * r)                     # A'[i1, (j1, s)]
        if m2 == 1:
            # B is a row (KnGPT2 embeddings, tied heads, many chooser picks): T is already
            # (N, n1·r) with the contracted axis last, so no transposes are needed.
            y = F.linear(t.view(N, n1 * r), a2)
        else:
            # Bring (j1, s) to the front so A contracts it in one GEMM: (n1·r, N·m2).
            t = t.view(N, n1 * r, m2).transpose(0, 1).reshape(n1 * r, N * m2)
            y = torch.mm(a2, t)                                         # (m1, N·m2)
            y = y.view(m1, N, m2).transpose(0, 1).reshape(N, m1 * m2)
    else:  # a_first
        # U[(i1, s), (t, j2)] = Σ_j1 A_s[i1, j1] X_t[j1, j2]: one GEMM after moving j1 to the front.
        xp = x2.view(N, n1, n2).transpose(0, 1).reshape(n1, N * n2)
        u = torch.mm(a.permute(1, 0, 2).reshape(m1 * r, n1), xp)       # (m1·r, N·n2)
        u = u.view(m1, r, N, n2).permute(2, 0, 1, 3).reshape(N * m1, r * n2)
        y = F.linear(u, b.permute(1, 0, 2).reshape(m2, r * n2)).view(N, m1 * m2)
    if bias is not None:
        y = y + bias.to(y.dtype)  # match F.linear under autocast: the output keeps the GEMM dtype
    return y.view(*lead, m1 * m2)


def _init_factors(a: torch.Tensor, b: torch.Tensor, fan_in: int) -> None:
    """Random factors whose product has nn.Linear's default variance 1/(3·fan_in).

    Var(W_ij) = r·Var(A)·Var(B) for independent zero-mean factors; give A and B equal variance.
    Only used when a layer is built from scratch (from_module copies the decomposition).
    """
    r = a.shape[0]
    std = (1.0 / (3.0 * fan_in * r)) ** 0.25
    with torch.no_grad():
        a.normal_(0.0, std)
        b.normal_(0.0, std)


class KroneckerLinear(nn.Module):
    """A linear layer whose weight (out, in) is Σ_r A_r ⊗ B_r, plus an optional bias.

    ``a``: (rank, m1, n1), ``b``: (rank, m2, n2) with out = m1·m2, in = n1·n2. ``fan_in_fan_out``
    records the original layer's storage layout (True for GPT-2's Conv1D) so ``to_module`` gives
    back the same layer type.
    """

    def __init__(self, in_features: int, out_features: int, a_shape: Sequence[int] | None = None,
                 b_shape: Sequence[int] | None = None, rank: int | str = 1, bias: bool = True,
                 fan_in_fan_out: bool = False, order: Order | None = None, device=None, dtype=None):
        super().__init__()
        (m1, n1), (m2, n2) = resolve_shapes((out_features, in_features), a_shape, b_shape,
                                            where="KroneckerLinear")
        rank = resolve_rank(rank, (out_features, in_features), (m1, n1), (m2, n2), where="KroneckerLinear")
        self.in_features, self.out_features = in_features, out_features
        self.a_shape, self.b_shape, self.rank = (m1, n1), (m2, n2), rank
        self.fan_in_fan_out = fan_in_fan_out
        self.order: Order = order or choose_order(self.a_shape, self.b_shape, rank)
        kw = {"device": device, "dtype": dtype}
        self.a = nn.Parameter(torch.empty(rank, m1, n1, **kw))
        self.b = nn.Parameter(torch.empty(rank, m2, n2, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        _init_factors(self.a, self.b, in_features)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_module(cls, module: nn.Module, a_shape: Sequence[int] | None = None,
                    b_shape: Sequence[int] | None = None, rank: int | str = 1) -> "KroneckerLinear":
        """The nearest rank-``rank`` Kronecker layer to an ``nn.Linear`` or ``Conv1D`` (same bias)."""
        W, bias, fan_in_fan_out = linear_weight(module)
        out_f, in_f = W.shape
        new = cls(in_f, out_f, a_shape, b_shape, rank, bias=bias is not None, fan_in_fan_out=fan_in_fan_out,
                  device=W.device, dtype=W.dtype)
        A, B = nearest_kronecker(W.detach(), new.a_shape, new.b_shape, new.rank)
        with torch.no_grad():
            new.a.copy_(A)
            new.b.copy_(B)
            if bias is not None:
                new.bias.copy_(bias.detach())
        new.train(module.training)
        return new

    def dense_weight(self) -> torch.Tensor:
        """W = Σ_r A_r ⊗ B_r as (out, in)."""
        return kron_sum(self.a, self.b)

    @torch.no_grad()
    def to_module(self) -> nn.Module:
        """The dense layer of the original type: ``nn.Linear`` (W) or ``Conv1D`` (Wᵀ stored)."""
        W = self.dense_weight()
        if self.fan_in_fan_out:
            if Conv1D is None:  # pragma: no cover
                raise RuntimeError("transformers is needed to rebuild a Conv1D layer")
            layer = Conv1D(self.out_features, self.in_features).to(device=W.device, dtype=W.dtype)
            layer.weight.copy_(W.t())
            if self.bias is not None:
                layer.bias.copy_(self.bias)
            else:  # Conv1D always has a bias; zero is the layer without one
                layer.bias.zero_()
        else:
            layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                              device=W.device, dtype=W.dtype)
            layer.weight.copy_(W)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        layer.train(self.training)
        return layer

    to_dense = to_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kron_linear(x, self.a, self.b, self.bias, self.order)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, A={self.a_shape}, "
                f"B={self.b_shape}, rank={self.rank}, bias={self.bias is not None}, order={self.order}"
                + (", fan_in_fan_out=True" if self.fan_in_fan_out else ""))


class KroneckerEmbedding(nn.Module):
    """A v × d embedding table Σ_r A_r ⊗ B_r with A_r (v × d/f) and B_r (1 × f) (KnGPT2).

    Row i of the table is Σ_r A_r[i, :] ⊗ B_r[0, :], so a lookup gathers rows of A and scales them
    by B: the full table is never built. Parameters: r·(v·d/f + f) instead of v·d.
    ``padding_idx`` is kept for ``to_dense``; its row cannot be frozen here (B is shared by all rows).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, factor: int, rank: int = 1,
                 padding_idx: int | None = None, device=None, dtype=None):
        super().__init__()
        (v, k), (_, f) = resolve_shapes((num_embeddings, embedding_dim), None, (1, factor),
                                        where="KroneckerEmbedding")
        rank = resolve_rank(rank, (num_embeddings, embedding_dim), (v, k), (1, f), where="KroneckerEmbedding")
        self.num_embeddings, self.embedding_dim, self.factor, self.rank = num_embeddings, embedding_dim, f, rank
        self.padding_idx = padding_idx
        kw = {"device": device, "dtype": dtype}
        self.a = nn.Parameter(torch.empty(rank, v, k, **kw))
        self.b = nn.Parameter(torch.empty(rank, 1, f, **kw))
        with torch.no_grad():  # nn.Embedding's N(0, 1) rows: Var = r·Var(A)·Var(B) = 1
            std = rank ** -0.25
            self.a.normal_(0.0, std)
            self.b.normal_(0.0, std)

    @property
    def a_shape(self) -> tuple[int, int]:
        return (self.num_embeddings, self.embedding_dim // self.factor)

    @property
    def b_shape(self) -> tuple[int, int]:
        return (1, self.factor)

    @classmethod
    def from_module(cls, module: nn.Embedding, factor: int, rank: int = 1) -> "KroneckerEmbedding":
        W = module.weight
        new = cls(module.num_embeddings, module.embedding_dim, factor, rank, padding_idx=module.padding_idx,
                  device=W.device, dtype=W.dtype)
        A, B = nearest_kronecker(W.detach(), new.a_shape, new.b_shape, new.rank)
        with torch.no_grad():
            new.a.copy_(A)
            new.b.copy_(B)
        new.train(module.training)
        return new

    def dense_weight(self) -> torch.Tensor:
        return kron_sum(self.a, self.b)

    @torch.no_grad()
    def to_module(self) -> nn.Embedding:
        W = self.dense_weight()
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                           device=W.device, dtype=W.dtype)
        emb.weight.copy_(W)
        emb.train(self.training)
        return emb

    to_dense = to_module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.a[:, ids]                          # (r, ..., d/f): only the looked-up rows
        b = self.b[:, 0, :]                            # (r, f)
        b = b.view(b.shape[0], *([1] * ids.dim()), 1, b.shape[1])
        # Elementwise (not a matmul) on purpose: like nn.Embedding, the output keeps the parameter
        # dtype under autocast.
        out = (rows.unsqueeze(-1) * b).sum(0)           # (..., d/f, f)
        return out.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, A={self.a_shape}, B={self.b_shape}, "
                f"rank={self.rank}" + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""))


class KroneckerTiedHead(nn.Module):
    """The output projection tied to a ``KroneckerEmbedding``: logits = h · (Σ_r A_r ⊗ B_r)ᵀ.

    The embedding table (v × d) read as a linear layer (out = v, in = d) has the same factors, so
    the head owns no weight: it reads the embedding's ``a`` and ``b``. The embedding is held as a
    plain attribute, not a submodule, so its parameters are saved and counted once.
    """

    def __init__(self, embedding: KroneckerEmbedding, bias: torch.Tensor | None = None):
        super().__init__()
        object.__setattr__(self, "embedding", embedding)
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings
        self.order: Order = choose_order(embedding.a_shape, embedding.b_shape, embedding.rank)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kron_linear(x, self.embedding.a, self.embedding.b, self.bias, self.order)

    def to_module(self, embedding: nn.Embedding | None = None) -> nn.Linear:
        """A dense ``nn.Linear`` head; with ``embedding`` (the densified table), tied to its weight."""
        emb = self.embedding
        weight = embedding.weight if embedding is not None else nn.Parameter(emb.dense_weight().detach().clone())
        head = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                         device=weight.device, dtype=weight.dtype)
        head.weight = weight
        if self.bias is not None:
            with torch.no_grad():
                head.bias.copy_(self.bias)
        head.train(self.training)
        return head

    to_dense = to_module

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, tied to a "
                f"KroneckerEmbedding, order={self.order}")
