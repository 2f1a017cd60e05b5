"""A dilated causal CNN language model (WaveNet-style stack with GLU gates), in plain PyTorch.

Shapes: B batch, T time (characters), C channels (n_embd), V vocabulary. Convolutions work on
(B, C, T); embeddings, norms and the output projection on (B, T, C).

Generation keeps, per layer, the last (kernel_size - 1) * dilation inputs of that layer (the queue
of fast WaveNet generation), so each new character costs one short convolution per layer no matter
how long the context is.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from charlm.core.model_config import CNNConfig


@dataclass
class CNNCache:
    """Generation state: characters seen so far and each layer's recent inputs (B, C, (k-1)*d)."""

    length: int
    past_inputs: list[torch.Tensor]


class MatrixConv1d(nn.Conv1d):
    """A Conv1d whose kernel is stored as an (out, in * kernel_size) matrix: the same computation, but
    the weight is a 2-D matrix that matrix optimizers (Muon) can take."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.weight = nn.Parameter(self.weight.detach().flatten(1))  # (out, in, k) -> (out, in * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.weight.view(self.out_channels, self.in_channels, -1)  # (out, in, k)
        return F.conv1d(x, kernel, self.bias, dilation=self.dilation)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        weight = state_dict.get(prefix + "weight")
        if weight is not None and weight.dim() == 3:  # saved before kernels were stored as matrices
            state_dict[prefix + "weight"] = weight.flatten(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CausalConvBlock(nn.Module):
    """x + dropout(LayerNorm(GLU(dilated causal conv(x)))), on (B, C, T)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.history = (kernel_size - 1) * dilation  # inputs from the past one output needs
        self.dilation = dilation
        self.conv = MatrixConv1d(channels, 2 * channels, kernel_size, dilation)
        self.norm = nn.LayerNorm(channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, T) -> (B, C, T), plus the last `history` inputs for the next call.

        Without `past`, the sequence is padded with zeros on the left only, so output t never sees
        an input after t.
        """
        padded = F.pad(x, (self.history, 0)) if past is None else torch.cat([past, x], dim=2)  # (B, C, H+T)
        if x.shape[2] == 1:
            # One new step: the kernel touches every dilation-th input of the window. One matrix
            # product is far cheaper than a dilated conv1d call for a single output.
            taps = padded[:, :, :: self.dilation].flatten(1)  # (B, C*k)
            conv = F.linear(taps, self.conv.weight, self.conv.bias)[:, :, None]  # (B, 2C, 1)
        else:
            conv = self.conv(padded)  # (B, 2C, T)
        gated = F.glu(conv, dim=1)  # (B, 2C, T) -> (B, C, T): a * sigmoid(b)
        normed = self.norm(gated.transpose(1, 2)).transpose(1, 2)  # LayerNorm over channels
        return x + self.dropout(normed), padded[:, :, padded.shape[2] - self.history :]


class DilatedCNN(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.config = config = CNNConfig(**options)
        self.block_size = config.block_size
        self.receptive_field = config.receptive_field
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            CausalConvBlock(config.n_embd, config.kernel_size, d, config.dropout) for d in config.dilations
        )
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        # Conv weights keep PyTorch's fan-in scaled default: a GLU needs a non-vanishing gate input.

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) to next-token logits (B, T, V)."""
        return self.forward_cached(idx, None)[0]

    def forward_cached(self, idx: torch.Tensor, cache: CNNCache | None) -> tuple[torch.Tensor, CNNCache]:
        """Continue from `cache` (None: start of text) with ids (B, T); returns logits (B, T, V)."""
        start = 0 if cache is None else cache.length
        T = idx.shape[1]
        if start + T > self.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.dropout(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        x = x.transpose(1, 2)  # (B, C, T)
        pasts = []
        for i, block in enumerate(self.blocks):
            x, past = block(x, None if cache is None else cache.past_inputs[i])
            pasts.append(past)
        logits = self.head(self.ln_f(x.transpose(1, 2)))  # (B, T, C) -> (B, T, V)
        return logits, CNNCache(start + T, pasts)
