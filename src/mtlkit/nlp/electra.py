"""ELECTRA's MLM generator: proposes the replacements a replaced-token discriminator must detect.

Clark et al. (ICLR 2020, §2): a generator ``G`` is trained as a masked LM on the masked input
``x^masked`` (a share of the real tokens replaced by ``[MASK]``); at every masked position a token
is **sampled** from ``p_G(x_t | x^masked)`` to build the corrupted input ``x^corrupt`` that the
discriminator ``D`` reads; the objective is

    min_{θ_G, θ_D}  L_MLM(x, θ_G) + λ · L_Disc(x, θ_D)            (ELECTRA, Eq. after §2's definitions; λ = 50)

and "we do not back-propagate the discriminator loss through the generator" (sampling is
discrete): the sample is drawn without gradient.

*What is built, and why.* ELECTRA's best setting is a generator 1/4–1/2 the discriminator's
size that **shares the token embeddings** with it (§3.2, "Weight sharing", "Smaller
generators"). :class:`ElectraGenerator` is exactly that at its smallest: the shared encoder's
input embedding table (tied, read and trained through the generator's MLM loss), a projection
to ``width`` (default a quarter of the encoder's hidden size), learned positions, ``layers``
(default 1) pre-norm transformer layers, and a decoder tied to the same embedding table. It is
a separate module rather than a head over the shared encoder's *output*, because the generator
must read the **masked** text while the discriminator (the shared encoder) reads the
**corrupted** one: reusing the big encoder would cost a second full encoder pass per batch.

*Determinism.* The sampling uses no random generator of its own: the data side draws one
uniform ``u`` per position with the sampler's step generator, and the token is the inverse
CDF of the generator's softmax at ``u`` (:func:`sample_inverse_cdf`). A resumed run (same
weights, same ``u``) samples the same tokens.

Example:
    >>> import torch
    >>> probs = torch.tensor([[0.1, 0.6, 0.3], [0.0, 0.0, 1.0]])
    >>> sample_inverse_cdf(probs.log(), torch.tensor([0.65, 0.0])).tolist()   # 0.65 lies in token 1's (0.1, 0.7]
    [1, 2]
    >>> embedding = torch.nn.Embedding(10, 8)
    >>> generator = ElectraGenerator(embedding_dim=8, width=8, layers=1, heads=1, max_positions=16, vocab_size=10)
    >>> ids = torch.tensor([[2, 4, 6, 3]]); chosen = torch.tensor([[False, True, False, False]])
    >>> generator(embedding, ids, torch.ones_like(ids), chosen).shape    # logits at the chosen positions only
    torch.Size([1, 10])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sample_inverse_cdf(logits: Tensor, uniform: Tensor) -> Tensor:
    """One token per row of ``logits`` ``(n, V)``: the first whose cumulative softmax exceeds ``uniform`` ``(n,)``."""
    with torch.no_grad():
        cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1)
        value = (uniform.float().clamp(0.0, 1.0) * cdf[:, -1:].squeeze(-1)).unsqueeze(-1)
        return torch.searchsorted(cdf.contiguous(), value.contiguous(), right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)


class ElectraGenerator(nn.Module):
    """A small masked-LM over a tied embedding table (see the module docstring)."""

    def __init__(self, embedding_dim: int, width: int, layers: int, heads: int, max_positions: int, vocab_size: int) -> None:
        super().__init__()
        self.project_in = nn.Linear(embedding_dim, width)
        self.positions = nn.Embedding(max_positions, width)
        self.norm = nn.LayerNorm(width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.project_out = nn.Sequential(nn.Linear(width, embedding_dim), nn.GELU(), nn.LayerNorm(embedding_dim))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, embedding: nn.Embedding, masked_ids: Tensor, attention_mask: Tensor, chosen: Tensor) -> Tensor:
        """``(n_chosen, V)`` logits at the ``chosen`` positions (row-major order) of the masked text."""
        length = masked_ids.shape[1]
        h = self.project_in(embedding(masked_ids)) + self.positions(torch.arange(length, device=masked_ids.device))
        h = self.layers(self.norm(h), src_key_padding_mask=~attention_mask.bool())
        return F.linear(self.project_out(h[chosen]), embedding.weight, self.bias)


__all__ = ["ElectraGenerator", "sample_inverse_cdf"]
