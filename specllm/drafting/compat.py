"""Can a draft model's tokens be verified by the target? The vocabulary check, as pure logic.

Token-level speculative decoding hands the draft's token ids to the target, so an id must mean
the same text in both vocabularies. The target decides every emitted token and the prompt is
tokenised by the target, so that is the only requirement for a lossless result; everything
else only changes how many drafts are accepted. The verdict:

- compatible when both vocabularies are of the same type (bpe, spm, ...), their sizes differ by
  at most MAX_SIZE_DIFFERENCE ids (padding at the end, as between Qwen2.5-7B's 152064 and
  0.5B's 151936), and at most a few shared ids have different texts (MAX_DIFFERING_TEXTS, and no
  more than 1% of them: renamed control tokens such as Llama-3's reserved ones).
- The ids the draft must never propose, `masked_ids`, are those differing shared ids and the
  draft's ids beyond the target's size. Masking them keeps verification exact: the draft's
  distribution q is simply the masked one.
- Different BOS/EOS/EOT ids with equal texts (a base and an instruct model) are reported as
  warnings, not refusals: the loop ends on the target's end-of-generation tokens.

llama.cpp's `common_speculative_are_compatible` (common/speculative.cpp) is stricter: it also
requires the same BOS/EOS and equal texts from id 5 on, and refuses on the first difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import IncompatibleModelsError

if TYPE_CHECKING:
    from ..llama import Model

MAX_SIZE_DIFFERENCE = 128  # as llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE
MAX_DIFFERING_TEXTS = 128
MAX_DIFFERING_SHARE = 0.01


@dataclass(frozen=True)
class VocabSummary:
    """What the check needs from a vocabulary: its type, size, special ids and token texts."""

    type_name: str
    n_tokens: int
    bos: int
    eos: int
    eot: int
    texts: Sequence[bytes] = field(repr=False)
    add_bos: bool = False

    @classmethod
    def from_model(cls, model: Model) -> VocabSummary:
        """Read a loaded model's vocabulary (a vocab_only load is enough)."""
        vocab = model.vocab
        return cls(
            type_name=vocab.type_name,
            n_tokens=vocab.n_tokens,
            bos=vocab.bos,
            eos=vocab.eos,
            eot=vocab.eot,
            texts=tuple(vocab.text(i) for i in range(vocab.n_tokens)),
            add_bos=vocab.add_bos,
        )

    def token_label(self, token: int) -> str:
        """'151643 <|endoftext|>' for a special id, '-' when the vocabulary has none."""
        if token < 0 or token >= self.n_tokens:
            return "-"
        return f"{token} {self.texts[token].decode('utf-8', 'replace')}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "n_tokens": self.n_tokens,
            "bos": self.bos,
            "eos": self.eos,
            "eot": self.eot,
            "add_bos": self.add_bos,
        }


@dataclass(frozen=True)
class Compatibility:
    """The verdict on a target/draft pair, and what the loop must do to use it."""

    compatible: bool
    reason: str  # one line: why not, or what the pair shares
    n_shared: int  # ids both vocabularies have: 0 .. min(n_tokens) - 1
    differing_ids: tuple[int, ...]  # shared ids whose texts differ
    draft_only_ids: range  # ids the draft has and the target lacks
    target_only_ids: range  # ids the target has and the draft lacks: the draft cannot read them
    warnings: tuple[str, ...] = ()

    @property
    def masked_ids(self) -> tuple[int, ...]:
        """Ids the draft must never propose: the target lacks them or reads them as other text."""
        if not self.compatible:
            return ()
        return self.differing_ids + tuple(self.draft_only_ids)

    def as_dict(self) -> dict[str, Any]:
        return {
            "compatible": self.compatible,
            "reason": self.reason,
            "shared_ids": self.n_shared,
            "differing_texts": len(self.differing_ids),
            "differing_ids_first": list(self.differing_ids[:20]),
            "draft_only_ids": [self.draft_only_ids.start, self.draft_only_ids.stop],
            "target_only_ids": [self.target_only_ids.start, self.target_only_ids.stop],
            "masked_ids": list(self.masked_ids),
            "warnings": list(self.warnings),
        }


def differing_texts(target: VocabSummary, draft: VocabSummary) -> tuple[int, ...]:
    n_shared = min(target.n_tokens, draft.n_tokens)
    t, d = target.texts, draft.texts
    return tuple(i for i in range(n_shared) if t[i] != d[i])


def check_vocabularies(target: VocabSummary, draft: VocabSummary) -> Compatibility:
    """Can the draft propose token ids for the target to verify? See the module docstring."""
    n_shared = min(target.n_tokens, draft.n_tokens)
    differing = differing_texts(target, draft)
    size_difference = abs(target.n_tokens - draft.n_tokens)
    allowed_differing = min(MAX_DIFFERING_TEXTS, int(n_shared * MAX_DIFFERING_SHARE))

    problems = []
    if len(differing) > allowed_differing:
        problems.append(f"{len(differing)} of the {n_shared} shared ids have different texts")
    if size_difference > MAX_SIZE_DIFFERENCE:
        problems.append(f"their sizes differ by {size_difference} ids, more than padding ({MAX_SIZE_DIFFERENCE})")
    if target.type_name != draft.type_name and not problems:
        problems.append("their tokenizer types differ")
    compatible = not problems

    if compatible:
        reason = _shared_summary(target, draft, n_shared, differing)
    else:
        reason = (
            f"vocabularies differ: target {target.type_name} {target.n_tokens} tokens, "
            f"draft {draft.type_name} {draft.n_tokens} tokens; " + "; ".join(problems)
        )
    return Compatibility(
        compatible=compatible,
        reason=reason,
        n_shared=n_shared,
        differing_ids=differing,
        draft_only_ids=range(target.n_tokens, max(target.n_tokens, draft.n_tokens)),
        target_only_ids=range(draft.n_tokens, max(target.n_tokens, draft.n_tokens)),
        warnings=tuple(_special_token_warnings(target, draft)) if compatible else (),
    )


def _shared_summary(target: VocabSummary, draft: VocabSummary, n_shared: int, differing: tuple[int, ...]) -> str:
    if target.n_tokens == draft.n_tokens and not differing:
        return f"the same {target.type_name} vocabulary ({target.n_tokens} tokens)"
    details = []
    if draft.n_tokens > target.n_tokens:
        details.append(f"the draft's {draft.n_tokens - target.n_tokens} extra ids are never proposed")
    elif target.n_tokens > draft.n_tokens:
        details.append(f"the target's {target.n_tokens - draft.n_tokens} extra ids are not in the draft")
    if differing:
        details.append(f"{len(differing)} ids with different texts are never proposed")
    return f"{n_shared} shared {target.type_name} ids with the same texts; " + "; ".join(details)


def _special_token_warnings(target: VocabSummary, draft: VocabSummary) -> list[str]:
    warnings = []
    for role in ("bos", "eos", "eot"):
        t, d = getattr(target, role), getattr(draft, role)
        if t != d:
            warnings.append(
                f"{role.upper()} differs: target {target.token_label(t)}, draft {draft.token_label(d)} "
                "(the target's end-of-generation tokens decide; acceptance may suffer)"
            )
    if target.add_bos != draft.add_bos:
        warnings.append("only one of the models adds BOS to a prompt; the draft reads the target's tokens")
    return warnings


def draft_size_warning(target_size: int, draft_size: int, unit: str = "bytes") -> str | None:
    """A warning when the draft is not smaller than the target: it will cost more than it saves."""
    if target_size <= 0 or draft_size <= 0 or draft_size < target_size:
        return None
    return (
        f"the draft ({draft_size:,} {unit}) is not smaller than the target ({target_size:,} {unit}); "
        "a draft about 1/10 of the target's size is the usual choice"
    )


def ensure_compatible(target_model: Model, draft_model: Model) -> Compatibility:
    """The verdict for two loaded models; raises IncompatibleModelsError with a one-line reason.

    Warnings (differing special ids, a draft larger than the target) are returned in
    `.warnings` for the caller to show.
    """
    result = check_vocabularies(VocabSummary.from_model(target_model), VocabSummary.from_model(draft_model))
    if not result.compatible:
        raise IncompatibleModelsError(
            f"{draft_model.name} cannot draft for {target_model.name}: {result.reason}",
            hint="pick a draft of the same family and tokenizer; `specllm check TARGET DRAFT` shows the differences",
        )
    if target_model.n_params > 0 and draft_model.n_params > 0:
        size_warning = draft_size_warning(target_model.n_params, draft_model.n_params, "parameters")
    else:
        size_warning = draft_size_warning(target_model.path.stat().st_size, draft_model.path.stat().st_size)
    if size_warning:
        result = replace(result, warnings=result.warnings + (size_warning,))
    return result
