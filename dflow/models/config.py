"""Configuration of :class:`~dflow.models.transformer.DFlowTransformer`.

A ``transformers`` config, so a model saves as ``config.json`` + ``model.safetensors`` and loads
back offline with ``from_pretrained`` (also through ``AutoConfig`` / ``AutoModel`` once
``dflow.models`` is imported).

Example::

    config = DFlowConfig(vocab_size=16, mask_id=16, seq_len=64, image_shape=(8, 8), prompt_len=8,
                         prompt_vocab_size=40, hidden_size=128, num_layers=4, num_heads=4)
    config.num_states  # 17: the 16 data values and the mask id
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


def _check_int(name: str, value: Any, minimum: int) -> int:
    # bool is an int subclass; True as a layer count is always a mistake
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class DFlowConfig(PretrainedConfig):
    """Sizes and options of the dflow transformer denoiser.

    Args:
        vocab_size: ``V``, the number of data values; the model outputs ``V`` logits per position.
        mask_id: ``None`` (no mask state: uniform / metric sources) or exactly ``V`` (mask source);
            with a mask the input embedding has ``V + 1`` rows and ``x_t`` may contain ``V``.
        seq_len: ``L``, the number of generated positions (pixels of an image, tokens of a text).
        prompt_len: ``Lc``, the number of prompt tokens prepended as a prefix; ``0`` for an
            unconditional model (then ``cond`` must be ``None`` or ``[B, 0]``).
        prompt_vocab_size: size of the prompt embedding table; prompt id ``0`` is the pad / null
            token (an all-zero prompt is the unconditional one used by classifier-free guidance).
        hidden_size: width ``D`` of the residual stream.
        num_layers: number of transformer blocks.
        num_heads: attention heads; must divide ``hidden_size``.
        mlp_ratio: MLP hidden width as a multiple of ``hidden_size``.
        dropout: dropout on attention weights and residual branches.
        time_conditioning: feed ``t`` through adaptive LayerNorm; ``False`` gives a time-agnostic
            denoiser (FUDOKI and URSA are time-agnostic: ``x_t`` alone reveals how noisy it is).
        image_shape: ``(H, W)`` with ``H * W == seq_len`` to use a factorised 2-D positional
            embedding (row-major order: position ``h * W + w``); ``None`` for a learned 1-D one.
        initializer_range: std of the normal initialisation of weights.
        layer_norm_eps: epsilon of every LayerNorm.
    """

    model_type = "dflow_transformer"
    # the standard names that generic transformers utilities read
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}

    def __init__(
        self,
        vocab_size: int = 16,
        mask_id: int | None = None,
        seq_len: int = 64,
        prompt_len: int = 0,
        prompt_vocab_size: int = 128,
        hidden_size: int = 256,
        num_layers: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,  # 0: RL recomputes log-probs and needs them to equal the rollout's
        time_conditioning: bool = False,
        image_shape: tuple[int, int] | list[int] | None = None,
        conv_kernel: int = 0,
        initializer_range: float = 0.02,  # the usual GPT-2 / BERT scale
        layer_norm_eps: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = _check_int("vocab_size", vocab_size, 1)
        if mask_id is not None and (isinstance(mask_id, bool) or mask_id != vocab_size):
            raise ValueError(f"mask_id must be None or equal to vocab_size ({vocab_size}), got {mask_id!r}")
        self.mask_id = mask_id
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.prompt_len = _check_int("prompt_len", prompt_len, 0)
        self.prompt_vocab_size = _check_int("prompt_vocab_size", prompt_vocab_size, 1)
        self.hidden_size = _check_int("hidden_size", hidden_size, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        self.num_heads = _check_int("num_heads", num_heads, 1)
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if not isinstance(mlp_ratio, (int, float)) or isinstance(mlp_ratio, bool):
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        if int(hidden_size * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio must give an MLP width >= 1, got {mlp_ratio!r}")
        self.mlp_ratio = float(mlp_ratio)
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        if not isinstance(time_conditioning, bool):
            raise ValueError(f"time_conditioning must be a bool, got {time_conditioning!r}")
        self.time_conditioning = time_conditioning
        self.image_shape = self._check_image_shape(image_shape, seq_len)
        # local mixing for images: a depthwise conv_kernel x conv_kernel convolution over the pixel
        # tokens before each block (0 = off). A transformer on flattened pixels has no locality prior;
        # on the 12x12 shapes task this conv made the loss fall much faster on CPU budgets.
        if (
            isinstance(conv_kernel, bool)
            or not isinstance(conv_kernel, int)
            or conv_kernel < 0
            or (conv_kernel and conv_kernel % 2 == 0)
        ):
            raise ValueError(f"conv_kernel must be 0 or an odd int >= 1, got conv_kernel={conv_kernel!r}")
        if conv_kernel and self.image_shape is None:
            raise ValueError(f"conv_kernel={conv_kernel} needs image_shape (H, W) to lay the tokens out as an image")
        self.conv_kernel = conv_kernel
        if not isinstance(initializer_range, (int, float)) or initializer_range <= 0:
            raise ValueError(f"initializer_range must be > 0, got {initializer_range!r}")
        self.initializer_range = float(initializer_range)
        if not isinstance(layer_norm_eps, (int, float)) or layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {layer_norm_eps!r}")
        self.layer_norm_eps = float(layer_norm_eps)
        super().__init__(**kwargs)

    @staticmethod
    def _check_image_shape(image_shape: Any, seq_len: int) -> tuple[int, int] | None:
        if image_shape is None:
            return None
        # config.json stores tuples as lists, so a list comes back from from_pretrained
        if (
            not isinstance(image_shape, (tuple, list))
            or len(image_shape) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_shape)
        ):
            raise ValueError(f"image_shape must be None or (H, W) of positive ints, got {image_shape!r}")
        height, width = image_shape
        if height * width != seq_len:
            raise ValueError(
                f"image_shape {tuple(image_shape)} has H * W = {height * width}, which must equal seq_len ({seq_len})"
            )
        return (height, width)

    @property
    def num_states(self) -> int:
        """Number of input states: ``V`` data values, plus the mask id ``V`` when there is one."""
        return self.vocab_size + (1 if self.mask_id is not None else 0)
