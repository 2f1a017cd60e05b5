"""Each model family's settings as a dataclass: the one place that gives each model knob its type,
default, doc and range (charlm.core.checks.knob).

Torch-free, so the NumPy engine and config checks read the same definitions as the torch models.
They are also the model group's schema in Hydra's ConfigStore (charlm.core.run_config): conf/model/*.yaml
are presets over them that link the sizes to the top-level knobs (n_layer, n_embd, block_size, dropout).
"""

from dataclasses import asdict, dataclass

from charlm.core.checks import check_knobs, knob
from charlm.core.errors import CharLMError


@dataclass
class SharedKnobs:
    """What every model family has, under the same names."""

    vocab_size: int = knob(65, "symbols in the vocabulary (set from the data, not a knob)")
    block_size: int = knob(32, "longest context the position table covers")
    n_layer: int = knob(4, "blocks")
    n_embd: int = knob(64, "width: of the residual stream (GPT), of the embeddings and every block (CNN)")
    dropout: float = knob(0.0, "dropout on embeddings and block outputs (GPT: and attention)", high=1,
                          high_open=True)

    def __post_init__(self):
        check_knobs(self)


@dataclass
class GPTConfig(SharedKnobs):
    n_head: int = knob(4, "attention heads per block (n_embd must divide by it)")
    activation: str = knob("relu", "relu | gelu | relu2 (ReLU squared) | swiglu (gated, 8/3 x n_embd wide)",
                           choices=("gelu", "relu", "relu2", "swiglu"))
    bias: bool = knob(True, "biases in linear layers and LayerNorms")
    qkv_bias: bool = knob(False, "bias on the query/key/value projection")
    tie_weights: bool = knob(False, "share the token embedding with the output projection")
    pos_encoding: str = knob("learned", "learned table | sinusoidal (fixed) | rope (rotary, in attention)",
                             choices=("learned", "sinusoidal", "rope"))
    init: str = knob("gpt2", "gpt2: normal(0.02), scaled residual projections | xavier: Glorot uniform",
                     choices=("gpt2", "xavier"))
    norm: str = knob("pre", "pre: x + f(ln(x)) (GPT-2) | post: ln(x + f(x)) (the original transformer)",
                     choices=("pre", "post"))
    norm_type: str = knob("layernorm", "layernorm | rmsnorm (scale only, no mean subtracted)",
                          choices=("layernorm", "rmsnorm"))
    qk_norm: bool = knob(False, "RMS-normalise each head's queries and keys before attention")
    logit_softcap: float = knob(0.0, "> 0: logits = cap * tanh(logits / cap); 0: off", low=0)
    zero_init_proj: bool = knob(False, "start the residual projections (attention and MLP outputs) at zero")

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width: 4 x n_embd, or 8/3 x n_embd for SwiGLU, whose three matrices then hold
        as many weights as the others' two."""
        return round(8 * self.n_embd / 3) if self.activation == "swiglu" else 4 * self.n_embd

    def __post_init__(self):
        super().__post_init__()
        if self.n_embd % self.n_head:
            raise CharLMError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise CharLMError(f"pos_encoding=rope needs an even head size, got {self.n_embd // self.n_head}")


@dataclass
class CNNConfig(SharedKnobs):
    kernel_size: int = knob(3, "taps of each dilated convolution", low=2)
    dilation_cycle: int = knob(4, "k > 0: dilations 1, 2, ..., 2^(k-1), then again | 0: 1, 2, 4, ... per layer",
                               low=0)

    @property
    def dilations(self) -> list[int]:
        cycle = self.dilation_cycle or self.n_layer
        return [2 ** (i % cycle) for i in range(self.n_layer)]

    @property
    def receptive_field(self) -> int:
        """How many characters (the current one included) one output can see."""
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)


MODEL_CONFIGS: dict[str, type] = {"gpt": GPTConfig, "cnn": CNNConfig}
# Names the CNN's knobs had in checkpoints and exports saved before it took the GPT's names.
CNN_OLD_NAMES = {"num_layers": "n_layer", "embedding_dim": "n_embd", "max_seq_len": "block_size"}


def current_names(name: str, options: dict) -> dict:
    """A saved model config in today's knob names (old CNN configs also had hidden_dim, always equal
    to embedding_dim)."""
    if name != "cnn" or not options.keys() & {*CNN_OLD_NAMES, "hidden_dim"}:
        return options
    hidden = options.get("hidden_dim")
    options = {CNN_OLD_NAMES.get(k, k): v for k, v in options.items() if k != "hidden_dim"}
    if hidden is not None and hidden != options.get("n_embd"):
        raise CharLMError(f"hidden_dim ({hidden}) must equal n_embd ({options.get('n_embd')})")
    return options


def model_settings(config: dict, vocab_size: int = 65):
    """The dataclass a model config dict ({"name": "gpt", ...}) describes, defaults filled in and checked."""
    options = dict(config)
    name = options.pop("name", None)
    if name not in MODEL_CONFIGS:
        raise CharLMError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_CONFIGS)}")
    try:
        return MODEL_CONFIGS[name](vocab_size=vocab_size, **current_names(name, options))
    except (TypeError, CharLMError) as err:  # an option the model does not take, or a bad value
        raise CharLMError(f"model {name}: {err}") from None


def full_config(config: dict) -> dict:
    """A model config with every default filled in (no vocabulary size), so configs saved before an
    option existed compare equal to today's when they mean the same model."""
    try:
        full = asdict(model_settings(config))
    except CharLMError:
        return dict(config)
    full.pop("vocab_size")
    return {"name": config.get("name"), **full}


def model_state(state_dict: dict) -> dict:
    """The model's own weights: drop the LightningModule's "model." prefix and torch.compile's "_orig_mod."."""
    state = {}
    for key, value in state_dict.items():
        if key.startswith("model."):
            state[key.removeprefix("model.").replace("_orig_mod.", "")] = value
    return state
