"""Which weights learn: the token embeddings and the lowest decoder layers may stay fixed.

A training step costs one forward pass F plus a backward pass, and a linear layer's backward is
two matmuls of its forward's size (the input gradient and the weight gradient), so full
fine-tuning costs ~3F. With the lowest k of L decoder layers frozen the backward pass stops at
layer k: F + 2F·(L − k)/L. SmolLM2-135M (L = 30) with k = 20: 1.67F, ~1.8× the full step's
throughput, and the frozen layers keep no activations for a backward pass that never comes
(bench/train_levers.py measures it).
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from in2.params import InputError, TrainParams


def decoder_layers(lm: PreTrainedModel) -> nn.ModuleList:
    """The model's stack of decoder layers, lowest first (Llama, Mistral, Qwen: `model.layers`)."""
    layers = getattr(lm.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise InputError(
            f"{type(lm).__name__} has no `layers` list under its decoder; "
            "train.freeze_layers needs one (set it to 0 for this model)"
        )
    return layers


def freeze(lm: PreTrainedModel, tp: TrainParams) -> str:
    """Freeze what `tp` names (embeddings, the lowest `freeze_layers` layers); say what learns."""
    if tp.freeze_embeddings:
        # Tied models (SmolLM2) share this tensor with lm_head, so the output layer freezes too.
        lm.get_input_embeddings().weight.requires_grad_(False)
    if tp.freeze_layers:
        layers = decoder_layers(lm)
        if tp.freeze_layers >= len(layers):
            raise InputError(
                f"train.freeze_layers: {tp.freeze_layers} would freeze all {len(layers)} decoder "
                f"layers of {type(lm).__name__}; set it to at most {len(layers) - 1}"
            )
        for layer in layers[: tp.freeze_layers]:
            layer.requires_grad_(False)
    total = sum(p.numel() for p in lm.parameters())
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    return (
        f"{trainable / 1e6:.1f}M of {total / 1e6:.1f}M parameters learn "
        f"(embeddings {'frozen' if tp.freeze_embeddings else 'trained'}, "
        f"lowest {tp.freeze_layers} decoder layer(s) frozen)"
    )
