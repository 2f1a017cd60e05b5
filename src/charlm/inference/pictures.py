"""Pictures of what a trained model looks at: a GPT's attention, head by head, and how much each past
character sways a model's next prediction (for the CNN: its receptive field). `charlm attention` draws
them into a PNG; training sends them to TensorBoard's Images tab (charlm.training.callbacks.InsidePictures)."""

import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from charlm.core.atomic import atomic_write, check_output
from charlm.core.errors import CharLMError
from charlm.core.inference_config import PicturesConfig
from charlm.core.run_config import group_settings
from charlm.core.run_folder import newest_run
from charlm.core.vocab import Vocabulary
from charlm.inference.checkpoint import load_model
from charlm.inference.torch_runner import check_device

SHOWN = {"\n": "⏎", " ": "␣", "\t": "⇥"}  # characters that would be invisible on an axis


def readable(char: str) -> str:
    return SHOWN.get(char, char if char.isprintable() else repr(char)[1:-1])


@torch.no_grad()
def attention_maps(model, ids: list[int]) -> np.ndarray:
    """(L, H, T, T): every head's attention over the characters `ids`, from the model's own forward pass."""
    device = next(model.parameters()).device
    return model.attention_maps(torch.tensor([ids], device=device))[:, 0].float().cpu().numpy()


def influence(model, ids: list[int]) -> np.ndarray:
    """(T,): how much each character moves the model's prediction after the last one: the norm of the
    gradient of the predicted character's log-probability with respect to that character's embedding.
    Exactly zero outside what the model can see (a CNN's receptive field). Parameters' gradients are
    left untouched."""
    kept = {}
    hook = model.tok_emb.register_forward_hook(lambda module, inputs, output: kept.setdefault("embedding", output))
    try:
        with torch.inference_mode(False), torch.enable_grad():  # also from inside Lightning's validation
            logits = model(torch.tensor([ids], device=next(model.parameters()).device))  # (1, T, V)
            score = logits[0, -1].float().log_softmax(-1).max()
            (grad,) = torch.autograd.grad(score, kept["embedding"])  # (1, T, C)
    finally:
        hook.remove()
    return grad[0].float().norm(dim=-1).cpu().numpy()


def draw_attention(maps: np.ndarray, labels: list[str], title: str):
    """A grid of heatmaps, one row per layer and one column per head: query characters down, key
    characters across, weight 0 (white) to 1 (dark) on one stated scale. Returns the figure."""
    import matplotlib  # loaded only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layer, n_head, T, _ = maps.shape
    cell = max(2.2, min(4.5, 0.14 * T))  # inches per head: about 10 points per character
    fig, axes = plt.subplots(n_layer, n_head, figsize=(cell * n_head + 1.5, cell * n_layer + 1.0), squeeze=False,
                             layout="constrained")
    ticks = range(0, T, max(1, T // 24))  # a label per character up to 24 characters, then every few
    shown = [readable(labels[i]) for i in ticks]
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer, head]
            image = ax.imshow(maps[layer, head], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
            ax.set_xticks(ticks, shown, fontsize=7)
            ax.set_yticks(ticks, shown, fontsize=7)
            ax.tick_params(length=0)
    fig.suptitle(f"{title}\nrows: the character predicting the next; columns: the characters it attends to",
                 fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight, 0 to 1 (each row sums to 1)")
    return fig


def draw_influence(weights: np.ndarray, labels: list[str], receptive_field: int | None, title: str):
    """Bars over the text: how much each character sways the next prediction; the receptive field shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * T + 1.5), 3.0))
    if receptive_field is not None:
        ax.axvspan(max(-0.5, T - receptive_field - 0.5), T - 0.5, color="#fde9c8",
                   label=f"receptive field ({receptive_field} characters)")
    ax.bar(range(T), weights / max(weights.max(), 1e-12), color="#3b75af", label="influence on the next character")
    ticks = range(0, T, max(1, T // 64))
    ax.set_xticks(ticks, [readable(labels[i]) for i in ticks], fontsize=7)
    ax.set_ylabel("gradient norm, relative to the largest")
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def picture(model, vocab: Vocabulary, ids: list[int], kind: str, title: str):
    """`kind` attention (a GPT's heads) or influence (any model) for the characters `ids`, as a figure."""
    labels = [vocab.decode([i]) for i in ids]
    if kind == "attention":
        return draw_attention(attention_maps(model, ids), labels, title)
    return draw_influence(influence(model, ids), labels, getattr(model, "receptive_field", None), title)


def as_pixels(values: np.ndarray, scale: int) -> np.ndarray:
    """Values in [0, 1] (rows, columns) as RGB pixels on the PNG's colour scale (white 0, dark blue 1),
    each value a `scale` x `scale` square."""
    from matplotlib import colormaps

    rgb = (colormaps["Blues"](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1)


def attention_grid(maps: np.ndarray, gap: int = 3) -> np.ndarray:
    """(L, H, T, T) maps as one image (height, width, 3): a row of heads per layer, white between them.
    Drawn without a figure, so training can afford one at every validation."""
    n_layer, n_head, T, _ = maps.shape
    scale = max(1, 96 // T)
    side = T * scale
    grid = np.full((n_layer * (side + gap) - gap, n_head * (side + gap) - gap, 3), 255, dtype=np.uint8)
    for layer in range(n_layer):
        for head in range(n_head):
            top, left = layer * (side + gap), head * (side + gap)
            grid[top:top + side, left:left + side] = as_pixels(maps[layer, head], scale)
    return grid


def influence_strip(weights: np.ndarray) -> np.ndarray:
    """(T,) influence as a strip of squares (height, width, 3), the largest dark, no influence white."""
    scale = max(4, 512 // len(weights))
    return as_pixels((weights / max(weights.max(), 1e-12))[None, :], scale)


def close_figure(figure) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def image_format(out: Path) -> str:
    """The picture format `out`'s suffix names (png without one), as matplotlib writes it."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = out.suffix.lower().removeprefix(".") or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise CharLMError(f"out={out}: .{suffix} is not a picture format matplotlib writes; give one of "
                          f"{', '.join('.' + name for name in sorted(formats))}")
    return suffix


def image_bytes(figure, dpi: int, image: str = "png") -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format=image, dpi=dpi, bbox_inches="tight")
    close_figure(figure)
    return buffer.getvalue()


def draw(cfg: DictConfig) -> None:
    """`charlm attention ckpt=RUN prompt=TEXT out=FILE.png`: the picture of one prompt, in the format
    the file's suffix names (.png, .pdf, .svg, .jpg, ...)."""
    cfg = group_settings(PicturesConfig, cfg)
    out = Path(cfg.out)
    check_output(out, option="out=")
    image = image_format(out)
    check_device("device", cfg.device)
    loaded = load_model(cfg.ckpt if cfg.ckpt is not None else newest_run(Path(cfg.paths["root"]) / "runs"))
    model, vocab = loaded.model.to(cfg.device).eval(), loaded.vocab
    if cfg.kind == "attention" and not hasattr(model, "attention_maps"):
        raise CharLMError(f"{loaded.path} holds a {loaded.model_config['name']} model, which has no attention; "
                          "kind=influence draws how much each character sways its next prediction")
    ids = vocab.encode(cfg.prompt if cfg.prompt is not None else "\n")
    if len(ids) > model.block_size:
        ids = ids[-model.block_size:]  # what the model sees at once
        print(f"the prompt is longer than block_size ({model.block_size}): showing its last block",
              file=sys.stderr, flush=True)
    run = loaded.path.parent.parent if loaded.path.parent.name == "checkpoints" else loaded.path.parent
    figure = picture(model, vocab, ids, cfg.kind, f"{run.name}/{loaded.path.name} ({loaded.model_config['name']})")
    atomic_write(out, lambda file: file.write(image_bytes(figure, cfg.dpi, image)))
    print(out)
