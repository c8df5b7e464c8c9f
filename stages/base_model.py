"""Stage base_model: materialise the base model as safetensors + tokenizer in models/base/."""

from in2 import layout
from in2.model import build_base_model, save_model
from in2.outputs import atomic_dir
from in2.stage import log, run_stage


def main(params, args) -> None:
    model, tokenizer = build_base_model(params.model, seed=params.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("base model: %s, %.1fM parameters", params.model.source, n_params / 1e6)
    with atomic_dir(layout.BASE_MODEL) as out:
        save_model(model, tokenizer, out)


if __name__ == "__main__":
    run_stage(main, __doc__)
