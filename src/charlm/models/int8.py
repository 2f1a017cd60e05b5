"""Weight-only int8 layers: Linear and Conv1d weights as int8 with one symmetric scale per output
channel (absmax / 127), dequantized on the fly so the model computes in float32 as before."""

import torch
import torch.nn.functional as F
from torch import nn

SCHEME = "int8-weight-only-per-channel"


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and one float scale per output channel (dim 0): weight ~ values * scale."""
    absmax = weight.detach().abs().flatten(1).amax(dim=1).clamp(min=1e-12)
    scale = absmax / 127.0
    shape = (-1,) + (1,) * (weight.dim() - 1)
    values = torch.round(weight.detach() / scale.view(shape)).clamp(-127, 127).to(torch.int8)
    return values, scale.float()


class Int8Weight(nn.Module):
    """Shared part of the quantized layers: int8 weight, per-channel scale, float bias."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        values, scale = quantize_weight(layer.weight)
        self.register_buffer("qweight", values)
        self.register_buffer("scale", scale)
        self.bias = layer.bias

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float weight, in the original layer's shape."""
        shape = (-1,) + (1,) * (self.qweight.dim() - 1)
        return self.qweight.float() * self.scale.view(shape)


class Int8Linear(Int8Weight):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Int8Conv1d(Int8Weight):
    def __init__(self, conv: nn.Conv1d):
        super().__init__(conv)
        self.dilation, self.padding, self.stride = conv.dilation, conv.padding, conv.stride
        self.kernel_shape = (conv.out_channels, conv.in_channels, *conv.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.weight.view(self.kernel_shape)  # a MatrixConv1d keeps (out, in * k)
        return F.conv1d(x, kernel, self.bias, self.stride, self.padding, self.dilation)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        values = state_dict.get(prefix + "qweight")
        if values is not None and values.dim() != self.qweight.dim():  # saved with the other kernel layout
            state_dict[prefix + "qweight"] = values.reshape(self.qweight.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def quantize_model(model: nn.Module, quantize_head: bool = False) -> nn.Module:
    """Swap every Linear and Conv1d (the head only if asked, and never when it is tied) in place."""
    head = getattr(model, "head", None)
    tied = head is not None and head.weight is getattr(model, "tok_emb", nn.Embedding(1, 1)).weight
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child is head and (tied or not quantize_head):
                continue
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
            elif isinstance(child, nn.Conv1d):
                setattr(parent, name, Int8Conv1d(child))
    return model


def parameter_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()] if t.dtype != torch.bool}
    return sum(t.numel() * t.element_size() for t in tensors.values())
