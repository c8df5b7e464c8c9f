"""How a (long context, question) pair becomes token ids — shared by training and probing.

The context is the instruction's bulk and must never be re-tokenized from text at paper scale, so a
prompt is three token pieces: `prefix` (template text before the context), the context ids (given
by the caller: segment ids from the flat token array, or a probe context tokenized once), and
`suffix` (the question and the assistant header). The answer ends with the template's
end-of-turn marker, so a trained model learns to stop.

Formats:
- `chat`: the model's own chat template around the FILM instruction layout;
- `film`: the FILM-7B template from the paper's repository (Mistral `[INST]` tags).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

PromptFormat = Literal["chat", "film"]

INSTRUCTION_HEAD = (
    "Below is a context and an instruction. Based on the information provided in the context, "
    "write a response for the instruction.\n\n### Context:\n"
)
INSTRUCTION_MID = "\n\n### Instruction:\n"
_CTX, _Q, _A = "\x00CONTEXT\x00", "\x00QUESTION\x00", "\x00ANSWER\x00"


@dataclass(frozen=True)
class PromptTemplate:
    """Text around the context and the question, and the marker that ends an answer."""

    before_context: str
    between: str  # between the context and the question
    after_question: str
    end_of_answer: str

    def render(self, context: str, question: str) -> str:
        """The whole prompt as text (for API models and human inspection)."""
        return self.before_context + context + self.between + question + self.after_question


def user_message(context: str, question: str) -> str:
    """The FILM instruction around a context and a question: the user turn of the `chat` format,
    and the whole message an API model gets (its server applies the model's chat template)."""
    return INSTRUCTION_HEAD + context + INSTRUCTION_MID + question


def prompt_template(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat) -> PromptTemplate:
    """Split the chosen template at the context and the question."""
    eos = tokenizer.eos_token or ""
    if fmt == "film":
        bos = tokenizer.bos_token or ""
        return PromptTemplate(
            before_context=f"{bos}[INST] {INSTRUCTION_HEAD}",
            between=INSTRUCTION_MID,
            after_question=" [/INST]",
            end_of_answer=eos,
        )
    if not tokenizer.chat_template:
        raise ValueError(
            "prompt_format 'chat' needs a tokenizer with a chat template; "
            "this one has none: use prompt_format: film"
        )
    user = user_message(_CTX, _Q)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": _A}], tokenize=False
    )
    before, rest = prompt.split(_CTX)
    between, after = rest.split(_Q)
    tail = full.split(_A, 1)[1]
    end = tail[: tail.index(eos) + len(eos)] if eos and eos in tail else tail.rstrip("\n")
    return PromptTemplate(before, between, after, end)


@dataclass(frozen=True)
class PromptEncoder:
    """Token ids of the pieces of a prompt, for one tokenizer and format."""

    tokenizer: PreTrainedTokenizerBase
    template: PromptTemplate

    @classmethod
    def create(cls, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat) -> PromptEncoder:
        return cls(tokenizer, prompt_template(tokenizer, fmt))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prefix(self) -> list[int]:
        """Ids before the context (system prompt, user header, instruction head)."""
        return self._ids(self.template.before_context)

    def context(self, text: str) -> list[int]:
        """Ids of a context given as text (probes); training gathers segment ids instead."""
        return self._ids(text)

    def suffix(self, question: str) -> list[int]:
        """Ids after the context: the question and the assistant header."""
        return self._ids(self.template.between + question + self.template.after_question)

    def no_context(self, question: str) -> list[int]:
        """Ids of a prompt without a context (general instruction data): the question alone."""
        if self.template.before_context.endswith(INSTRUCTION_HEAD):
            head = self.template.before_context.removesuffix(INSTRUCTION_HEAD)
        else:
            head = self.template.before_context
        return self._ids(head + question + self.template.after_question)

    def answer(self, answer: str) -> list[int]:
        """Target ids: the answer and the end-of-turn marker (the loss covers exactly these)."""
        return self._ids(answer + self.template.end_of_answer)

    def stop_ids(self) -> set[int]:
        """Token ids that end a generated answer."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        marker = self._ids(self.template.end_of_answer)
        if len(marker) == 1:
            ids.add(marker[0])
        return ids
