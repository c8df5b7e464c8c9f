"""Every contract path of the pipeline, in one place.

Stages, library code, `in2 audit` and the tests name a file by its constant here, never by an
inline string, so a path that moves moves everywhere at once. `dvc.yaml` spells the same paths
(DVC needs them literally); `tests/test_dvc_deps.py` checks that the two agree. All paths are
relative to the repository root, where DVC runs every stage.
"""

from __future__ import annotations

from pathlib import Path

# --- models -------------------------------------------------------------------------------
MODELS = Path("models")
BASE_MODEL = MODELS / "base"
"""The base model as safetensors + tokenizer (stage base_model)."""
TRAINED_MODEL = MODELS / "in2"
"""The IN2-trained model (stage train)."""
CHECKPOINTS = Path("checkpoints")
"""Resumable training state, one folder per run key (persisted by DVC between runs)."""

# --- data ---------------------------------------------------------------------------------
CORPUS = Path("data/corpus")
CORPUS_TRAIN = CORPUS / "train.parquet"
CORPUS_HELDOUT = CORPUS / "heldout.parquet"
"""Held-out documents: they feed the probes only."""
SEGMENTS = Path("data/segments")
QA = Path("data/qa")
QA_PAIRS = QA / "qa.parquet"
IN2_DATA = Path("data/in2")
IN2_TRAIN = IN2_DATA / "train.parquet"
IN2_VAL = IN2_DATA / "val.parquet"
PROBES = Path("data/probes")

# --- reports and results --------------------------------------------------------------------
REPORTS = Path("reports")
DATA_QUALITY = REPORTS / "data_quality"
GATE_SUMMARY = DATA_QUALITY / "summary.json"
"""The quality gate's verdict; `train` refuses to start unless it passed for its very files."""
GATE_DOCS = DATA_QUALITY / "docs"
"""The Great Expectations Data Docs site."""
PROBE_RESULTS = Path("results/probe")
"""`results/probe/<model>/`: predictions per task and scores.json."""

# --- metrics ------------------------------------------------------------------------------
METRICS = Path("metrics")
CORPUS_METRICS = METRICS / "corpus.json"
SEGMENT_METRICS = METRICS / "segment.json"
QA_METRICS = METRICS / "qa.json"
SYNTHESIZE_METRICS = METRICS / "synthesize.json"
TRAIN_METRICS = METRICS / "train.json"
TRAIN_LOSS = METRICS / "train_loss.csv"

# --- outside every DVC output ---------------------------------------------------------------
QA_CACHE = Path(".cache/qa")
"""Response cache of the `openai` QA generator: no call is ever paid for twice."""
PROBE_CACHE = Path(".cache/probe")
"""Response cache of the API probe runner."""


def model_dir(name: str) -> Path:
    """`models/<name>/`: `base` or `in2`."""
    return MODELS / name


def probe_results(model: str) -> Path:
    """`results/probe/<model>/`."""
    return PROBE_RESULTS / model
