"""The training data: the target's own outputs, with its top-k log-probabilities at every position.

One JSON line per sample, after a header line that says how the file was made:

    {"specllm_tune_data": 1, "target": ..., "target_bytes": ..., "top_k": 20, "max_tokens": 128, ...}
    {"prompt_index": 3, "variant": "greedy", "split": "train", "prompt": [ids], "output": [ids],
     "top_ids": [[k ids] per output token], "top_logprobs": [[k log-probabilities] ...]}

Row j of top_ids/top_logprobs is the target's distribution for output[j] (after prompt +
output[:j]). Each line is written and flushed as soon as its sample is made: an interrupted run
keeps what it generated, and a rerun skips the (prompt, variant) pairs already in the file. A
last line cut off by the interruption is dropped and made again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..engine import Engine, Request
from ..errors import TuneError
from ..sampling import SamplingParams

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


def plan(texts: Sequence[str], n_train: int, s: DataSettings) -> list[Job]:
    """Greedy and sampled jobs for the training prompts (texts[:n_train]); greedy only for the
    held-out ones after them: acceptance is measured on greedy outputs."""
    jobs = []
    for i, text in enumerate(texts):
        split = "train" if i < n_train else "eval"
        jobs.append(Job(i, text, "greedy", split, 0.0, s.seed))
        if split == "train" and s.temp > 0:
            jobs += [Job(i, text, f"sampled-{n}", split, s.temp, s.seed + 1 + n + i * s.samples)
                     for n in range(s.samples)]
    return jobs


def read_samples(path: Path, settings: Optional[DataSettings] = None) -> list[Sample]:
    """The samples in a data file; with `settings`, the file must have been made with them."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise TuneError(f"cannot read the data file {path}: {e.strerror or e}") from None
    try:
        header = json.loads(lines[0])
    except (json.JSONDecodeError, IndexError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("specllm_tune_data") != FORMAT_VERSION:
        if lines[0].strip() == b"":  # an empty file (interrupted before its header)
            return []
        raise TuneError(f"{path} is not a specllm tune-draft data file")
    if settings is not None and header != settings.header():
        changed = sorted(k for k, v in settings.header().items() if header.get(k) != v)
        raise TuneError(f"{path} was made with other settings ({', '.join(changed)})",
                        hint="use the same settings to continue it, or another --data file")
    samples = []
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            samples.append(Sample(**json.loads(line)))
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
            break  # the line an interruption cut off: it and anything after is made again
    return samples


class DataWriter:
    """Appends samples to the data file, one flushed line each; rewrites a cut-off tail first."""

    def __init__(self, path: Path, settings: DataSettings, kept: Sequence[Sample]):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:  # header + the intact samples, atomically
            f.write(json.dumps(settings.header()) + "\n")
            for sample in kept:
                f.write(json.dumps(asdict(sample)) + "\n")
        os.replace(tmp, path)
        self._file = path.open("a", encoding="utf-8")

    def write(self, sample: Sample) -> None:
        self._file.write(json.dumps(asdict(sample)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def top_logprobs(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the k most likely ids (most likely first) and their log-probabilities."""
    logits = logits.astype(np.float64)
    log_z = np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    ids = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    values = np.take_along_axis(logits, ids, axis=-1)
    order = np.argsort(-values, axis=-1)
    ids, values = np.take_along_axis(ids, order, -1), np.take_along_axis(values, order, -1)
    return ids, values - log_z


def teacher_forced_logits(engine: Engine, prompt: Sequence[int], output: Sequence[int]) -> Iterator[np.ndarray]:
    """The target's logits for each output token (row j predicts output[j]), in chunks of at
    most n_batch rows. The prompt's cache is reused from the generation that made `output`."""
    ctx = engine.target
    ctx.truncate(len(prompt) - 1)
    if ctx.tokens != list(prompt[:-1]):
        ctx.clear()
        if len(prompt) > 1:
            ctx.decode(prompt[:-1])
    inputs = [prompt[-1], *output[:-1]]
    for start in range(0, len(inputs), ctx.n_batch):
        yield ctx.decode(inputs[start:start + ctx.n_batch], all_logits=True)


def make_sample(engine: Engine, job: Job, settings: DataSettings) -> Sample:
    request = Request(max_tokens=settings.max_tokens, params=SamplingParams(temperature=job.temp), seed=job.seed,
                      chat=settings.chat, mode="none")
    prompt = engine.tokenize_prompt(job.text, request)
    generation = engine.generate(prompt, request)
    for _ in generation:
        pass
    sample = Sample(job.prompt_index, job.variant, job.split, list(prompt), list(generation.tokens))
    if sample.output:
        for logits in teacher_forced_logits(engine, prompt, sample.output):
            ids, logprobs = top_logprobs(logits, settings.top_k)
            sample.top_ids += ids.tolist()
            sample.top_logprobs += np.round(logprobs, LOGPROB_DECIMALS).tolist()
    return sample


def generate_data(engine: Engine, path: Path, settings: DataSettings, jobs: Sequence[Job],
                  on_sample: Callable[[Sample], None] = lambda s: None) -> list[Sample]:
    """Every job's sample: those already in the file, then the missing ones made and appended."""
    kept = read_samples(path, settings)
    done = {s.key for s in kept}
    writer = DataWriter(path, settings, kept)
    samples = list(kept)
    try:
        for job in jobs:
            if (job.prompt_index, job.variant) in done:
                continue
            sample = make_sample(engine, job, settings)
            writer.write(sample)
            samples.append(sample)
            on_sample(sample)
    finally:
        writer.close()
    return samples
