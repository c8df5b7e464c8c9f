"""Stage corpus: documents -> data/corpus/{train,heldout}.parquet (held-out = probes only).

The source is `corpus.source` (wiki_offline, local or hf); metrics/corpus.json counts what was
read, kept and dropped (by reason) and describes exactly what was read. Documents stream into
the tables in batches, so memory does not grow with the corpus.
"""

from dataclasses import asdict

from in2 import layout
from in2.data.corpus import CorpusStats, corpus_batches, write_corpus
from in2.outputs import atomic_file, write_json
from in2.stage import run_stage


def main(params, args) -> None:
    stats = CorpusStats()
    batches = corpus_batches(params.corpus, params.seed, stats)
    with atomic_file(layout.CORPUS_TRAIN) as train, atomic_file(layout.CORPUS_HELDOUT) as heldout:
        write_corpus(batches, train, heldout)
    write_json(layout.CORPUS_METRICS, asdict(stats))


if __name__ == "__main__":
    run_stage(main, __doc__)
