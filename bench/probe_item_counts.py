"""Items per context of the VaL probe sets built from the paper's pieces, Mistral-7B tokenizer.

The paper's released 32K probes hold 800 / 800 / 750 items per context (document / code /
database). This builds the sets with the project's builder (in2.probing.build.build_probes) from
the paper's pieces and counts tokens with the Mistral-7B (v1, 32K vocabulary) SentencePiece model
that the `mistral-common` package ships (offline: `mistral_common/data/tokenizer.model.v1`),
through in2.prompting.PromptEncoder exactly as the probe_data stage counts them: by default
filling the token target, with `--items-per-context` taking the paper's counts
(`probe.items_per_context`) and reporting the tokens they make.

    PYTHONPATH=src python bench/probe_item_counts.py --pieces ../shared/data/valprobing
    PYTHONPATH=src python bench/probe_item_counts.py --pieces ../shared/data/valprobing \
        --items-per-context 800 800 750
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from in2.probing.build import build_probes
from in2.probing.tasks import ProbeSources
from in2.prompting import PromptEncoder
from in2.registry import PROBE_TASKS


class MistralV1:
    """The slice of a Hugging Face tokenizer that PromptEncoder uses, over mistral-common's v1
    tokenizer: `tokenizer(text, add_special_tokens=False)["input_ids"]`, and the BOS/EOS texts of
    the `film` template."""

    bos_token = "<s>"
    eos_token = "</s>"
    chat_template = None

    def __init__(self) -> None:
        self._sp = MistralTokenizer.v1().instruct_tokenizer.tokenizer

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self._sp.encode(text, bos=add_special_tokens, eos=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pieces", type=Path, required=True, help="folder of the paper's pieces")
    parser.add_argument("--context-tokens", type=int, nargs="+", default=[32768])
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--items-per-context",
        type=int,
        nargs=len(PROBE_TASKS.names()),
        metavar="N",
        help=f"items per context of {', '.join(PROBE_TASKS.names())} (paper: 800 800 750)",
    )
    args = parser.parse_args()
    counts = (
        dict(zip(PROBE_TASKS.names(), args.items_per_context, strict=True))
        if (args.items_per_context)
        else None
    )

    encoder = PromptEncoder.create(MistralV1(), "film")  # type: ignore[arg-type]
    sources = ProbeSources(
        pd.DataFrame(columns=["title", "text", "description"]), pieces=args.pieces
    )
    started = time.perf_counter()
    probes = build_probes(
        sources, encoder, list(PROBE_TASKS), args.context_tokens, args.sets, args.seed, counts
    )
    print(f"built in {time.perf_counter() - started:.0f} s")
    print(
        "| task | length | items per context | queries per context | skipped (ambiguous) "
        "| tokens per context |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for task, sets in probes.items():
        for length in args.context_tokens:
            mine = [s for s in sets if s.context["context_tokens"] == length]
            items = " / ".join(str(s.context["n_items"]) for s in mine)
            queries = " / ".join(str(len(s.queries)) for s in mine)
            skipped = " / ".join(str(s.n_skipped) for s in mine)
            tokens = " / ".join(str(s.context["n_tokens"]) for s in mine)
            print(f"| {task} | {length} | {items} | {queries} | {skipped} | {tokens} |")


if __name__ == "__main__":
    main()
