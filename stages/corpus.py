"""Stage corpus: documents -> data/corpus/{train,heldout}.parquet (held-out = probes only).

The source is `corpus.source` (wiki_offline, local or hf); metrics/corpus.json counts what was
read, kept and dropped (by reason) and describes exactly what was read.
"""

from dataclasses import asdict

from in2 import layout
from in2.data.corpus import build_corpus
from in2.outputs import atomic_file, write_json
from in2.stage import run_stage


def main(params, args) -> None:
    train, heldout, stats = build_corpus(params.corpus, params.seed)
    for path, frame in ((layout.CORPUS_TRAIN, train), (layout.CORPUS_HELDOUT, heldout)):
        with atomic_file(path) as tmp:
            frame.to_parquet(tmp, index=False)
    write_json(layout.CORPUS_METRICS, asdict(stats))


if __name__ == "__main__":
    run_stage(main, __doc__)
