"""Stage probe_data: build the VaL probing sets in data/probes/ (see in2.probing.tasks).

Reads the base model's tokenizer (contexts are filled to each length of params
probe.context_tokens in that tokenizer's tokens, or hold probe.items_per_context items) and the
items' raw material: by default the held-out documents of the corpus stage and the running
interpreter's standard library, or, for a task the held-out documents cannot fill (a corpus
without titles), the wiki_offline package's (in2.probing.fallback); with params probe.pieces,
the paper's pieces in that folder.
"""

from pathlib import Path

import pandas as pd

from in2 import layout
from in2.model import load_tokenizer
from in2.probing.build import build_probes, write_probes
from in2.probing.fallback import WIKI_OFFLINE
from in2.probing.tasks import ProbeSources
from in2.prompting import PromptEncoder
from in2.stage import log, run_stage

HELDOUT = layout.CORPUS_HELDOUT
OUT = layout.PROBES


def main(params, args) -> None:
    if not HELDOUT.is_file():
        raise FileNotFoundError(f"{HELDOUT} does not exist; run `dvc repro corpus` first")
    encoder = PromptEncoder.create(load_tokenizer(layout.BASE_MODEL), params.probe.prompt_format)
    heldout = pd.read_parquet(HELDOUT, columns=["title", "text", "description", "source"])
    pieces = Path(params.probe.pieces) if params.probe.pieces else None
    probes = build_probes(
        ProbeSources(heldout, pieces=pieces, fallback=WIKI_OFFLINE),
        encoder,
        params.probe.tasks,
        params.probe.context_tokens,
        params.probe.sets_per_task,
        params.seed,
        params.probe.items_per_context,
    )
    write_probes(probes, OUT)
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    run_stage(main, __doc__)
