"""Each model family's settings as a dataclass: the one source of their defaults and checks.

Torch-free, so the NumPy engine and config checks read the same definitions as the torch models.
conf/model/*.yaml list the same fields with the same defaults (a test holds them equal); the sizes
there link to the top-level knobs (n_layer, n_embd, block_size, dropout).
"""

from dataclasses import asdict, dataclass, fields

from charlm.errors import CharLMError

GPT_ACTIVATIONS = ("gelu", "relu", "relu2", "swiglu")
GPT_POS_ENCODINGS = ("learned", "sinusoidal", "rope")


def check_fields(config, model_name: str, may_be_zero: tuple[str, ...] = ()) -> None:
    """Type-check every field, require positive integer sizes (or 0 where allowed) and dropout in [0, 1)."""
    for field in fields(config):
        value = getattr(config, field.name)
        expected = field.type
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(config, field.name, value)
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if not ok:
            raise ValueError(f"{model_name} option {field.name} must be {expected.__name__}, got {value!r}")
        if expected is int and value < (0 if field.name in may_be_zero else 1):
            raise ValueError(f"{model_name} option {field.name} must be a positive integer, got {value}")
    dropout = getattr(config, "dropout", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 32  # longest context the position table covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    activation: str = "relu"  # "relu", "gelu", "relu2" (ReLU squared) or "swiglu" (gated, 2/3 width)
    bias: bool = True  # biases in linear layers and LayerNorms
    qkv_bias: bool = False  # bias on the query/key/value projection
    tie_weights: bool = False  # share the token embedding with the output projection
    pos_encoding: str = "learned"  # "learned" table, fixed "sinusoidal" encoding, or "rope" (rotary, in attention)
    init: str = "gpt2"  # "gpt2": normal(0.02), scaled residual projections; "xavier": Glorot uniform
    norm: str = "pre"  # "pre": x + f(ln(x)) (GPT-2); "post": ln(x + f(x)) (the original transformer)
    norm_type: str = "layernorm"  # "layernorm" or "rmsnorm" (scale only, no mean subtracted)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap); 0: off
    zero_init_proj: bool = False  # start the residual projections (attention and MLP outputs) at zero

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width: 4 x n_embd, or 8/3 x n_embd for SwiGLU, whose three matrices then hold
        as many weights as the others' two."""
        return round(8 * self.n_embd / 3) if self.activation == "swiglu" else 4 * self.n_embd

    def __post_init__(self):
        check_fields(self, "GPT")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos_encoding=rope needs an even head size, got {self.n_embd // self.n_head}")
        if self.logit_softcap < 0:
            raise ValueError(f"logit_softcap must be 0 (off) or positive, got {self.logit_softcap}")
        for name, allowed in [("activation", GPT_ACTIVATIONS), ("pos_encoding", GPT_POS_ENCODINGS),
                              ("init", ("gpt2", "xavier")), ("norm", ("pre", "post")),
                              ("norm_type", ("layernorm", "rmsnorm"))]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {sorted(allowed)}, got {getattr(self, name)!r}")


@dataclass
class CNNConfig:
    vocab_size: int = 65
    block_size: int = 32  # longest context the position table covers
    n_layer: int = 4
    n_embd: int = 64  # channels of the embeddings and of every block (the residual adds them)
    kernel_size: int = 3
    dilation_cycle: int = 4  # k > 0: dilations 1, 2, ..., 2^(k-1), then again; 0: 1, 2, 4, ... per layer
    dropout: float = 0.0

    def __post_init__(self):
        check_fields(self, "CNN", may_be_zero=("dilation_cycle",))
        if self.kernel_size < 2:
            raise ValueError(f"kernel_size must be at least 2, got {self.kernel_size}")

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
        raise ValueError(f"hidden_dim ({hidden}) must equal n_embd ({options.get('n_embd')})")
    return options


def model_settings(config: dict, vocab_size: int = 65):
    """The dataclass a model config dict ({"name": "gpt", ...}) describes, defaults filled in and checked."""
    options = dict(config)
    name = options.pop("name", None)
    if name not in MODEL_CONFIGS:
        raise CharLMError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_CONFIGS)}")
    try:
        return MODEL_CONFIGS[name](vocab_size=vocab_size, **current_names(name, options))
    except (TypeError, ValueError) as err:  # an option the model does not take, or a bad value
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
