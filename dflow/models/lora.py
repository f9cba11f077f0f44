"""LoRA / QLoRA adapters on a denoiser, through ``peft`` (an optional extra: ``pip install 'dflow[lora]'``).

Each targeted linear layer ``y = W x + b`` becomes

    y = W x + b + (alpha / r) B A dropout(x),    A [r, in], B [out, r], B = 0 at the start

with ``W`` and ``b`` frozen, so only ``A`` and ``B`` train and the adapted network equals the base
exactly until the first update. That makes the base itself the KL reference of RL fine-tuning:
:class:`AdaptersOff` calls the same network with its adapters switched off (no second copy of the
weights), and :func:`merged_copy` folds ``(alpha / r) B A`` into ``W`` for a plain model folder.

With ``load_in_4bit`` (QLoRA) the targeted base layers are stored as 4-bit NF4 (``bitsandbytes``,
CUDA only) and the adapters stay in the training precision.

Example::

    policy = apply_lora(model, LoRAConfig(rank=8, alpha=16))   # a peft.PeftModel around ``model``
    logits = policy(x_t, t, cond)                              # adapters on
    reference = AdaptersOff(policy)
    base_logits = reference(x_t, t, cond)                      # the same weights, adapters off
    plain = merged_copy(policy)                                # ``model``'s class, W + (alpha / r) B A
"""

from __future__ import annotations

import copy
import importlib
import re
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dflow.logprobs import HeadLogits, can_fuse_head

# DFlowTransformer's attention and MLP projections (blocks.*.attn.qkv / .out, blocks.*.mlp.up / .down):
# where the weights are. The adaptive-norm modulations, the time MLP and the output head stay frozen.
DFLOW_TRANSFORMER_TARGETS = ["qkv", "out", "up", "down"]


@dataclass
class LoRAConfig:
    """LoRA adapters on a denoiser's linear layers (``lora:`` in an RL recipe).

    Attributes:
        rank: ``r``, the inner width of each adapter (trainable parameters ``r (in + out)`` per layer).
        alpha: the adapter's scale is ``alpha / r`` (16 with ``r = 8`` doubles a rank-8 update, as
            in most LoRA recipes; keep ``alpha / r`` when changing ``r`` to keep the step size).
        dropout: dropout on the adapter's input. ``RLModule`` runs the policy in eval mode (exact
            on-policy ratios), so it has no effect in RL; kept for other training loops.
        target_modules: the linear layers to adapt, each by its name or a suffix of it after a dot
            (``"qkv"`` matches ``blocks.0.attn.qkv``); every entry must match at least one linear
            layer. None: the attention and MLP projections (``qkv``, ``out``, ``up``, ``down`` of a
            ``DFlowTransformer``; every linear layer of an HF masked LM's encoder, not its LM head).
        load_in_4bit: QLoRA: store the targeted base layers in 4-bit NF4 (needs CUDA and
            ``bitsandbytes``: ``pip install 'dflow[qlora]'``); the adapters stay in the training
            precision. Not run on a GPU yet (docs/scaling.md).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    load_in_4bit: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be an int >= 1, got rank={self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"lora.alpha must be a number > 0, got alpha={self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got dropout={self.dropout!r}")
        if self.target_modules is not None:
            targets = list(self.target_modules)
            if not targets or any(not isinstance(t, str) or not t for t in targets):
                raise ValueError(
                    f"lora.target_modules must be a non-empty list of module names (or null for the default), "
                    f"got target_modules={self.target_modules!r}"
                )
            self.target_modules = targets
        if not isinstance(self.load_in_4bit, bool):
            raise ValueError(f"lora.load_in_4bit must be true or false, got load_in_4bit={self.load_in_4bit!r}")

    @property
    def scale(self) -> float:
        """``alpha / r``, the factor of the adapter's output."""
        return self.alpha / self.rank


def import_peft() -> Any:
    """The ``peft`` package, or an ``ImportError`` saying how to install it."""
    try:
        return importlib.import_module("peft")
    except ImportError as err:
        raise ImportError(
            "lora: adapters need the peft package, which is not installed: pip install 'dflow[lora]' (or pip install "
            "peft), or remove the lora: block"
        ) from err


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of ``model``'s ``nn.Linear`` layers (what ``target_modules`` entries can name)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _summary(names: list[str]) -> str:
    """Names with layer indices folded (``blocks.*.attn.qkv``), in first-seen order."""
    folded = dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names)
    return ", ".join(folded)


def _matches(name: str, target: str) -> bool:
    # peft's rule for a list of targets: the whole name, or a suffix after a dot
    return name == target or name.endswith("." + target)


def default_target_modules(model: nn.Module) -> list[str]:
    """The attention and MLP projections of the denoisers dflow builds; ``ValueError`` for another model."""
    from dflow.models.hf_adapter import HFMaskedLMDenoiser
    from dflow.models.transformer import DFlowTransformer

    if isinstance(model, DFlowTransformer):
        return list(DFLOW_TRANSFORMER_TARGETS)
    if isinstance(model, HFMaskedLMDenoiser):
        # every linear layer of the encoder (``mlm.base_model``): attention projections and MLPs of
        # each layer; the MLM head (a transform and the decoder tied to the input embeddings) is not in it
        backbone = model.mlm.base_model
        prefix = next(name for name, module in model.named_modules() if module is backbone)
        return [f"{prefix}.{name}" for name in linear_module_names(backbone)]
    raise ValueError(
        f"lora.target_modules: no default for {type(model).__name__}; name some of its linear layers: "
        f"{_summary(linear_module_names(model)) or '(it has none)'}"
    )


def resolve_target_modules(model: nn.Module, targets: list[str] | None) -> list[str]:
    """The full names of the linear layers ``targets`` name (default :func:`default_target_modules`).

    Raises:
        ValueError: naming each entry that matches no linear layer, and listing the model's linear layers.
    """
    linears = linear_module_names(model)
    wanted = default_target_modules(model) if targets is None else list(targets)
    unmatched = [t for t in wanted if not any(_matches(n, t) for n in linears)]
    if unmatched:
        raise ValueError(
            f"lora.target_modules={unmatched} match no linear layer of {type(model).__name__}; its linear layers "
            f"are: {_summary(linears) or '(none)'} (an entry names a layer or a suffix of its name after a dot)"
        )
    return [n for n in linears if any(_matches(n, t) for t in wanted)]


def check_4bit_available() -> None:
    """``ValueError`` naming ``lora.load_in_4bit`` and what is missing: CUDA, or ``bitsandbytes``."""
    if not torch.cuda.is_available():
        raise ValueError(
            "lora.load_in_4bit=true needs a CUDA GPU (bitsandbytes' 4-bit layers run on CUDA only) and none is "
            "available; set lora.load_in_4bit: false (plain LoRA) to train on this machine"
        )
    try:
        importlib.import_module("bitsandbytes")
    except ImportError as err:
        raise ValueError(
            "lora.load_in_4bit=true needs the bitsandbytes package, which is not installed: pip install "
            "'dflow[qlora]' (or pip install bitsandbytes), or set lora.load_in_4bit: false"
        ) from err


def _quantize_4bit(model: nn.Module, names: list[str]) -> None:
    """Replace the named ``nn.Linear`` layers by ``bitsandbytes`` NF4 layers (quantized when moved to CUDA)."""
    bnb = importlib.import_module("bitsandbytes")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, attr)
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=linear.weight.dtype,
            quant_type="nf4",
        )
        quantized.weight = bnb.nn.Params4bit(linear.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        if linear.bias is not None:
            quantized.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        setattr(parent, attr, quantized)


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """``model`` wrapped as a ``peft.PeftModel`` with LoRA adapters on the layers ``config`` targets.

    Every base parameter is frozen (``requires_grad=False``); the adapters' ``B`` start at zero, so
    the result computes exactly what ``model`` did. The returned module's ``forward`` takes the
    denoiser's arguments unchanged.
    """
    # the configuration's own errors first: neither needs peft to be found
    if config.load_in_4bit:
        check_4bit_available()
    names = resolve_target_modules(model, config.target_modules)
    peft = import_peft()
    if config.load_in_4bit:
        _quantize_4bit(model, names)
    lora = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=names,
        bias="none",
    )
    with warnings.catch_warnings():
        # peft reads transformers' old checkpointing property name, which warns on every wrap
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        return peft.get_peft_model(model, lora)


def has_adapters(model: Any) -> bool:
    """Whether ``model`` is a ``peft`` model whose adapters can be switched off (:func:`apply_lora`'s output)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


def base_model(model: nn.Module) -> nn.Module:
    """The network inside an adapted model (its adapters still in place), else ``model`` itself:
    the class and attributes a model folder records."""
    return model.get_base_model() if has_adapters(model) else model  # type: ignore[operator]


class AdaptersOff:
    """The adapted network with its adapters switched off: the base model, computed with the policy's
    own (frozen) base weights, so it needs no second copy of them.

    A plain callable, not an ``nn.Module``: holding the policy as a submodule would put its weights
    into the owner's ``state_dict`` twice.
    """

    def __init__(self, model: nn.Module) -> None:
        if not has_adapters(model):
            raise ValueError(f"AdaptersOff needs a model with LoRA adapters (apply_lora), got {type(model).__name__}")
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        with self.model.disable_adapter():  # type: ignore[operator]  # a peft.PeftModel (checked in __init__)
            return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # head_logits only where the model has it (dflow.logprobs.scoring_logits looks for it), and
        # with the adapters off in the head as well: scoring calls the head after this returns
        if name != "head_logits" or not can_fuse_head(self.model):
            raise AttributeError(name)
        return self._head_logits

    def _head_logits(self, *args: Any, **kwargs: Any) -> HeadLogits:
        with self.model.disable_adapter():  # type: ignore[operator]
            logits = self.model.head_logits(*args, **kwargs)  # type: ignore[operator]

        def head(h: Tensor) -> Tensor:
            with self.model.disable_adapter():  # type: ignore[operator]
                return logits.head(h)

        return HeadLogits(logits.hidden, head, logits.vocab_size)


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain copy of the base model with each adapter folded into its layer: ``W + (alpha / r) B A``.

    ``model`` is left as it was (``peft``'s ``merge_and_unload`` works in place, and an unmerge is not
    exact in floating point), at the cost of a second copy of the weights while the copy exists.
    Layers stored in 4 bits are dequantized, merged and quantized again (not exact).
    """
    if not has_adapters(model):
        raise ValueError(f"merged_copy needs a model with LoRA adapters (apply_lora), got {type(model).__name__}")
    return copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]


__all__ = [
    "DFLOW_TRANSFORMER_TARGETS",
    "AdaptersOff",
    "LoRAConfig",
    "apply_lora",
    "base_model",
    "check_4bit_available",
    "default_target_modules",
    "has_adapters",
    "import_peft",
    "linear_module_names",
    "merged_copy",
    "resolve_target_modules",
]
