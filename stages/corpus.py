"""Stage corpus: documents -> data/corpus/{train,heldout}.parquet (held-out = probes only)."""

from dataclasses import asdict

from in2.corpus import build_corpus, read_wiki_offline
from in2.outputs import atomic_file, write_json
from in2.stage import run_stage


def main(params, args) -> None:
    train, heldout, stats = build_corpus(read_wiki_offline(), params.corpus, params.seed)
    for name, frame in (("train", train), ("heldout", heldout)):
        with atomic_file(f"data/corpus/{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    write_json("metrics/corpus.json", asdict(stats))


if __name__ == "__main__":
    run_stage(main, __doc__)
