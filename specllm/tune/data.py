"""The training data: the target's own outputs, with its top-k log-probabilities at every position.

One JSON line per sample, after a header line that says how the file was made:

    {"specllm_tune_data": 1, "target": ..., "target_bytes": ..., "top_k": 20, "max_tokens": 128, ...}
    {"prompt_index": 3, "variant": "greedy", "split": "train", "prompt": [ids], "output": [ids],
     "top_ids": [[k ids] per output token], "top_logprobs": [[k log-probabilities] ...]}

Row j of top_ids/top_logprobs is the target's distribution for output[j] (after prompt +
output[:j]), read off the very row the generation chose output[j] from (TopKRecorder). The
samples are generated engine.n_slots at a time (--parallel) in one shared decode per round, as
`generate --jsonl --parallel N` runs (batch.py); each line is written and flushed as soon as
its sample is finished, in whatever order they finish: an interrupted run keeps what it
generated, and a rerun skips the (prompt, variant) pairs already in the file. A last line cut
off by the interruption is dropped and made again.
"""

from __future__ import annotations

import json
import os
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..batch import Scheduler
from ..engine import Engine, Request
from ..errors import TuneError
from ..sampling import Sampler, SamplingParams
from ..speculative import Generation

FORMAT_VERSION = 1
LOGPROB_DECIMALS = 4  # enough for a KL loss; keeps the file about half the size of full floats


@dataclass(frozen=True)
class DataSettings:
    """What decides the samples: a file made with other settings cannot be continued."""

    target: str  # the target's file name
    target_bytes: int
    top_k: int = 20
    max_tokens: int = 128
    temp: float = 0.8  # the sampled variant's temperature (0: greedy samples only)
    samples: int = 1  # sampled outputs per training prompt
    chat: bool = False
    seed: int = 0

    def header(self) -> dict:
        return {"specllm_tune_data": FORMAT_VERSION, **asdict(self)}


@dataclass
class Sample:
    prompt_index: int
    variant: str  # "greedy" or "sampled-N"
    split: str  # "train" or "eval"
    prompt: list[int]
    output: list[int]
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)
    # The end-of-generation token that ended the output; None: it ran out of tokens (or the file
    # predates this field).
    end_token: Optional[int] = None

    @property
    def key(self) -> tuple[int, str]:
        return self.prompt_index, self.variant


@dataclass(frozen=True)
class Job:
    """One sample to make: which prompt, greedy or sampled (with which seed), train or eval."""

    prompt_index: int
    text: str
    variant: str
    split: str
    temp: float
    seed: int


def plan(texts: Sequence[str], n_train: int, s: DataSettings, synthetic: Sequence[str] = ()) -> list[Job]:
    """Greedy and sampled jobs for the training prompts (texts[:n_train]); greedy only for the
    held-out ones after them: acceptance is measured on greedy outputs. Synthetic prompts are
    training prompts numbered after all the real ones (--synthetic)."""
    jobs = []
    for i, text in enumerate([*texts, *synthetic]):
        split = "train" if i < n_train or i >= len(texts) else "eval"
        jobs.append(Job(i, text, "greedy", split, 0.0, s.seed))
        if split == "train" and s.temp > 0:
            jobs += [Job(i, text, f"sampled-{n}", split, s.temp, s.seed + 1 + n + i * s.samples)
                     for n in range(s.samples)]
    return jobs


def read_json_lines(path: Path, marker: str, expected: Optional[dict], what: str, hint: str) -> list[dict]:
    """The entries of a resumable JSON-lines file whose header holds `marker` (its format
    version); with `expected`, the header must be that. A line cut off by an interruption ends
    the entries (it and anything after is made again). A missing or empty file has none."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise TuneError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if lines[0].strip() == b"":  # an empty file (interrupted before its header)
        return []
    try:
        header = json.loads(lines[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or header.get(marker) != FORMAT_VERSION:
        raise TuneError(f"{path} is not a specllm {what}")
    if expected is not None and header != expected:
        changed = sorted(k for k, v in expected.items() if header.get(k) != v)
        raise TuneError(f"{path} was made with other settings ({', '.join(changed)})", hint=hint)
    entries = []
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if not isinstance(entry, dict):
            break
        entries.append(entry)
    return entries


def read_samples(path: Path, settings: Optional[DataSettings] = None) -> list[Sample]:
    """The samples in a data file; with `settings`, the file must have been made with them."""
    entries = read_json_lines(path, "specllm_tune_data", settings.header() if settings else None,
                              "tune-draft data file", "use the same settings to continue it, or another --data file")
    samples = []
    for entry in entries:
        try:
            samples.append(Sample(**entry))
        except TypeError:
            break  # not a sample: the line an interruption cut off
    return samples


class JsonLinesWriter:
    """Appends entries to a resumable JSON-lines file, one flushed line each. The header and the
    entries kept are written first, atomically: a tail cut off by an interruption goes."""

    def __init__(self, path: Path, header: dict, kept: Iterable[dict]):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for entry in (header, *kept):
                f.write(json.dumps(entry) + "\n")
        os.replace(tmp, path)
        self._file = path.open("a", encoding="utf-8")

    def write(self, entry: dict) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def top_logprobs(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the k most likely ids (most likely first) and their log-probabilities."""
    logits = np.asarray(logits, dtype=np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    log_z = peak + np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True))
    ids = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    values = np.take_along_axis(logits, ids, axis=-1)
    order = np.argsort(-values, axis=-1)
    ids, values = np.take_along_axis(ids, order, -1), np.take_along_axis(values, order, -1)
    return ids, values - log_z


class TopKRecorder(Sampler):
    """A plain generation's sampler that keeps the target's top-k at every output position.

    In plain decoding (mode none) each round decodes the last token alone and verifies nothing:
    its one logits row is the target's distribution of the next output token given the prompt
    and the output so far, which is exactly the teacher-forced row. So the rows are read as the
    generation chooses from them, and no second pass over the output is needed.
    """

    def __init__(self, params: SamplingParams, kind: str, seed: int, top_k: int):
        super().__init__(params, kind, seed)
        self.top_k = top_k
        self.top_ids: list[list[int]] = []
        self.top_logprobs: list[list[float]] = []

    def verify(self, logits_tgt: np.ndarray, draft_tokens, draft_probs, t0: int) -> tuple[int, int]:
        if len(draft_tokens):
            raise ValueError("TopKRecorder reads plain decoding's rows: a drafted row is not teacher-forced")
        ids, logprobs = top_logprobs(logits_tgt[:1], self.top_k)
        self.top_ids.append(ids[0].tolist())
        self.top_logprobs.append(np.round(logprobs[0], LOGPROB_DECIMALS).tolist())
        return super().verify(logits_tgt, draft_tokens, draft_probs, t0)


@dataclass(frozen=True)
class Finished:
    """A finished generation of run_batched, with the caller's tag and its prompt."""

    tag: Hashable
    prompt: list[int]
    generation: Generation


def run_batched(engine: Engine, items: Iterable[tuple[Hashable, str, Request]],
                sampler_for: Optional[Callable[[Request, int], Sampler]] = None) -> Iterator[Finished]:
    """Generate every (tag, prompt text, request), up to engine.n_slots at once in one shared
    decode per round (batch.py, as `generate --jsonl --parallel N`); yield each as it finishes,
    in the order they finish. `sampler_for(request, seed)` replaces a generation's sampler.
    Closing the iterator (an interruption) drops the generations under way."""
    scheduler = Scheduler(engine)
    pending = iter(items)
    prompts: dict[int, list[int]] = {}
    try:
        while True:
            while scheduler.n_free:
                item = next(pending, None)
                if item is None:
                    break
                tag, text, request = item
                prompt = engine.tokenize_prompt(text, request)
                active = scheduler.start(prompt, request, tag)
                if sampler_for is not None:
                    active.generation.sampler = sampler_for(request, active.generation.seed)
                prompts[id(active)] = list(prompt)
            if not scheduler.active:
                return
            for active, _ in scheduler.round():
                if active.finished:
                    yield Finished(active.tag, prompts.pop(id(active)), active.generation)
    finally:
        scheduler.close()


def job_request(job: Job, settings: DataSettings) -> Request:
    return Request(max_tokens=settings.max_tokens, params=SamplingParams(temperature=job.temp), seed=job.seed,
                   chat=settings.chat, mode="none")


def make_samples(engine: Engine, jobs: Sequence[Job], settings: DataSettings) -> Iterator[Sample]:
    """Each job's sample as it finishes (engine.n_slots jobs decode together)."""

    def recorder(request: Request, seed: int) -> TopKRecorder:
        return TopKRecorder(request.params, request.sampler, seed, settings.top_k)

    items = ((job, job.text, job_request(job, settings)) for job in jobs)
    with closing(run_batched(engine, items, recorder)) as finished:
        for done in finished:
            job, generation = done.tag, done.generation
            output = list(generation.tokens)
            recorded = generation.sampler
            # A last row chose the end-of-generation token, which is not part of the output.
            yield Sample(job.prompt_index, job.variant, job.split, done.prompt, output,
                         recorded.top_ids[:len(output)], recorded.top_logprobs[:len(output)], generation.end_token)


def generate_data(engine: Engine, path: Path, settings: DataSettings, jobs: Sequence[Job],
                  on_sample: Callable[[Sample], None] = lambda s: None) -> list[Sample]:
    """Every job's sample: those already in the file, then the missing ones made and appended as
    they finish (in any order: a rerun finds them by key). Returned in the jobs' order (then any
    other sample of the file), whatever order they were made in."""
    kept = read_samples(path, settings)
    by_key = {s.key: s for s in kept}
    writer = JsonLinesWriter(path, settings.header(), (asdict(x) for x in kept))
    missing = [job for job in jobs if (job.prompt_index, job.variant) not in by_key]
    try:
        with closing(make_samples(engine, missing, settings)) as made:
            for sample in made:
                writer.write(asdict(sample))
                by_key[sample.key] = sample
                on_sample(sample)
    finally:
        writer.close()
    in_order = [by_key.pop((job.prompt_index, job.variant)) for job in jobs]
    return in_order + list(by_key.values())
