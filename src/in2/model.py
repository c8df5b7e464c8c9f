"""The base model: materialise it once as a plain safetensors folder, load it everywhere else.

Every later stage reads `models/base/` (or a trained checkpoint) with `load_model()` /
`load_tokenizer()`, so what a stage sees never depends on the network or on how the base model
was obtained (GGUF package, local folder, hub id or random init for tests).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from in2.params import InputError, ModelParams

log = logging.getLogger(__name__)


def package_dir(package: str) -> Path:
    """Folder of an installed data-carrier package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' is not installed; run `make setup` "
            "(it installs requirements-offline-data.txt)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path(params: ModelParams) -> Path:
    path = package_dir(params.gguf_package) / params.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"model.gguf_file: {path} does not exist")
    return path


def _from_gguf(params: ModelParams) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = gguf_path(params)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    # transformers 5 refuses to save a GGUF-loaded model as "not serializable": the weights are
    # already de-quantised to fp32, so drop the quantisation bookkeeping and save a plain model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _random_init(params: ModelParams, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = gguf_path(params)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tiny = params.tiny
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


def _from_pretrained(params: ModelParams) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A local folder or a hub id; a missing one is the user's input, said in one line."""
    name = str(params.name_or_path)  # required for this source by ModelParams
    folder = Path(name).expanduser()
    if name.startswith(("/", ".", "~")) and not folder.is_dir():
        raise InputError(
            f"model.name_or_path: {name} is not a folder; point it at a model folder "
            "(config.json, *.safetensors and the tokenizer files) or give a hub id"
        )
    source = str(folder) if folder.is_dir() else name
    try:
        tokenizer = load_tokenizer(source, params.trust_remote_code)
        model = load_model(source, params.trust_remote_code)
    except OSError as err:
        reason = str(err).strip().splitlines()[0]
        raise InputError(
            f"model.name_or_path: cannot load {name!r} ({reason}). Without network a hub id must "
            f"be in the local Hugging Face cache (`hf download {name}` where there is network); "
            "or point it at a local model folder with safetensors weights"
        ) from None
    return model, tokenizer


def build_base_model(
    params: ModelParams, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Obtain the base model and tokenizer as configured by the `model` params section."""
    if params.source == "gguf":
        model, tokenizer = _from_gguf(params)
    elif params.source == "random_init":
        model, tokenizer = _random_init(params, seed)
    else:
        model, tokenizer = _from_pretrained(params)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save weights as safetensors plus the tokenizer, as one self-contained folder.

    `state_dict` replaces the model's own weights: under FSDP the module holds only this rank's
    shard, and the full weights are what `Accelerator.get_state_dict` gathered to the main rank.
    """
    model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out)


BASE_DIR = Path("models/base")
"""Where the base_model stage puts the base model; every later stage reads it from here."""


def _check_dir(path: str | Path) -> None:
    """A `Path` must be an existing folder; a string may also be a hub id (for transformers)."""
    if isinstance(path, Path) and not path.is_dir():
        raise FileNotFoundError(
            f"model folder {path} does not exist; run `dvc repro` to build it "
            "or set model.name_or_path to a local folder or hub id"
        )


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer of a model folder (or hub id); pad token defaults to EOS."""
    _check_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | Path, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """Causal LM from a folder of safetensors (never pickled weights)."""
    _check_dir(path)
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )


def scale_rope_base(lm: PreTrainedModel, factor: float) -> float:
    """Multiply the RoPE base (theta) by `factor` and rebuild the rotary embeddings; returns it.

    The paper (Table 3) found 10x the default base helped long-context training. The rotary
    module caches its inverse frequencies at construction, so changing the config alone would do
    nothing: every `rotary_emb` module is rebuilt from the updated config. The saved checkpoint
    carries the new base, so the trained model is probed with the base it was trained with.
    """
    rope = getattr(lm.config, "rope_parameters", None)
    if not rope or "rope_theta" not in rope:
        raise InputError(
            f"train.rope_theta_factor: {type(lm).__name__} has no rope_parameters.rope_theta in "
            "its config; set train.rope_theta_factor to 1.0 for this model"
        )
    lm.config.rope_parameters = {**rope, "rope_theta": rope["rope_theta"] * factor}
    for name, module in list(lm.named_modules()):
        if name.rsplit(".", 1)[-1] == "rotary_emb" and hasattr(module, "inv_freq"):
            parent = lm.get_submodule(name.rsplit(".", 1)[0]) if "." in name else lm
            rebuilt = type(module)(config=lm.config).to(module.inv_freq.device)
            setattr(parent, name.rsplit(".", 1)[-1], rebuilt)
    return float(lm.config.rope_parameters["rope_theta"])
