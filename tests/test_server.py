"""`specllm serve` (issue 13): the official openai client against a live server on 127.0.0.1,
on the tiny models. One server for the module (uvicorn in a thread); the last test runs the
real command in a process. Greedy answers must equal `specllm generate --mode none`'s."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

pytest.importorskip("uvicorn", reason="the server extra is not installed")
openai = pytest.importorskip("openai", reason="the openai client is not installed")
import httpx  # noqa: E402  (after the skips: it comes with openai)
import uvicorn  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from specllm.cli import app  # noqa: E402
from specllm.commands.serve import bind_socket  # noqa: E402
from specllm.engine import Engine, EngineConfig, Request  # noqa: E402
from specllm.server.app import Server, ServerState, create_app  # noqa: E402
from specllm.server.metrics import Metrics  # noqa: E402
from specllm.server.text import ResponseText  # noqa: E402
from specllm.stats import SpecStats  # noqa: E402

PROMPT = "the cat said that it was for you and the"
PROMPTS = [PROMPT, "def add(a, b): return", "import os from", "she said there was", "class Foo: def",
           "if it is not None", "what will they do", "print the list of"]
N = 24
CTX = 4096  # LONG tokens take a few seconds: long enough to hold the engine while a test looks
QUEUE_SIZE = 8  # 8 clients at once: 1 generating + 7 waiting fit
LONG = CTX - 64  # a generation long enough to be interrupted


class Live:
    def __init__(self, url: str, state: ServerState):
        self.url, self.state = url, state
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        self.http = httpx.Client(base_url=url, timeout=60)

    def metrics(self) -> dict[str, float]:
        text = self.http.get("/metrics").text
        return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M) if not m[1].startswith("#")}

    def wait_idle(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.http.get("/health").json()
            if not health["generating"] and not health["waiting"]:
                return
            time.sleep(0.02)
        raise AssertionError("the engine is still busy")


class LogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module", params=[1, 4], ids=["1-slot", "4-slots"])
def live(tiny, tmp_path_factory, request):
    """The server with one slot (requests one after another) and with four (issue 24: one
    shared decode per round); every test runs on both."""
    logs = LogRecords()
    loggers = [logging.getLogger(name) for name in ("uvicorn", "specllm.server")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECLLM_CACHE", str(tmp_path_factory.mktemp("cache")))
        for logger in loggers:
            logger.addHandler(logs)
        config = EngineConfig(target=str(tiny.target), draft=str(tiny.draft_copy), mode="auto", k=4, ctx_size=CTX,
                              threads=1, parallel=request.param)
        engine = Engine(config)
        state = ServerState(engine, model_name="tiny", defaults=Request(max_tokens=None), queue_size=QUEUE_SIZE)
        sock = bind_socket("127.0.0.1", 0)
        server = Server(state, uvicorn.Config(create_app(state), lifespan="off", log_config=None, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        live = Live(f"http://127.0.0.1:{sock.getsockname()[1]}", state)
        live.logs = logs
        try:
            yield live
        finally:
            server.should_exit = True
            thread.join(10)
            state.close()
            engine.close()
            sock.close()
            for logger in loggers:
                logger.removeHandler(logs)


def generate_json(tiny, *args: object) -> dict:
    """`specllm generate --mode none --json` (plain decoding): the reference text."""
    result = CliRunner().invoke(app, ["generate", "-t", "1", "-m", str(tiny.target), "--mode", "none", "--json",
                                      *(str(a) for a in args)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def expected(tiny, tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECLLM_CACHE", str(tmp_path_factory.mktemp("cache_generate")))
        return {"chat": generate_json(tiny, "--chat", "-n", N, PROMPT),
                "completion": generate_json(tiny, "-n", N, PROMPT)}


def chat(live: Live, content: str = PROMPT, **kwargs):
    kwargs.setdefault("max_tokens", N)
    kwargs.setdefault("temperature", 0)
    return live.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                               **kwargs)


def complete(live: Live, prompt: str, **kwargs):
    kwargs.setdefault("max_tokens", N)
    kwargs.setdefault("temperature", 0)
    return live.client.completions.create(model="tiny", prompt=prompt, **kwargs)


def streamed_text(chunks) -> tuple[str, list]:
    chunks = list(chunks)
    return "".join(c.choices[0].delta.content or "" if hasattr(c.choices[0], "delta") else c.choices[0].text
                   for c in chunks if c.choices), chunks


# -- answers ---------------------------------------------------------------------------------------


def test_chat_answer_equals_specllm_generate_chat(live, expected):
    response = chat(live)
    ref = expected["chat"]
    assert response.choices[0].message.content == ref["text"]
    assert response.choices[0].finish_reason == "length"
    assert response.usage.prompt_tokens == len(ref["prompt_tokens"])
    assert response.usage.completion_tokens == N
    assert response.usage.total_tokens == len(ref["prompt_tokens"]) + N
    spec = response.speculative
    assert set(spec) >= {"drafted", "accepted", "acceptance_rate", "mean_accepted_length", "tokens_per_second"}
    assert 0 <= spec["accepted"] <= spec["drafted"] and spec["tokens_per_second"] > 0


def test_chat_stream_gives_the_same_text_and_ends_with_statistics(live, expected):
    text, chunks = streamed_text(chat(live, stream=True, stream_options={"include_usage": True}))
    assert text == expected["chat"]["text"]
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "length"
    assert finish[0].speculative["drafted"] >= finish[0].speculative["accepted"]
    assert chunks[-1].usage.completion_tokens == N and not chunks[-1].choices


def test_completion_equals_specllm_generate_streaming_or_not(live, expected):
    ref = expected["completion"]["text"]
    response = live.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=N, temperature=0)
    assert response.choices[0].text == ref
    assert response.usage.completion_tokens == N
    text, _ = streamed_text(live.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=N, temperature=0,
                                                           stream=True))
    assert text == ref


def test_n_choices_are_the_answers_of_seeds_seed_plus_i_and_stream_side_by_side(live):
    # Sampled: choice i is the answer the request gets alone with seed + i (choice 0: the seed).
    sampled = dict(temperature=1.0, seed=11, max_tokens=12)
    response = chat(live, n=3, **sampled)
    alone = [chat(live, **{**sampled, "seed": 11 + i}).choices[0].message.content for i in range(3)]
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert [c.message.content for c in response.choices] == alone
    single = chat(live, **sampled)
    assert response.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    assert response.usage.completion_tokens == sum(chat(live, **{**sampled, "seed": 11 + i}).usage.completion_tokens
                                                   for i in range(3))
    assert response.speculative["rounds"] >= 3
    # Streamed, each chunk names its choice; put together, they are the same answers.
    chunks = list(chat(live, n=3, stream=True, stream_options={"include_usage": True}, **sampled))
    texts, finished = ["", "", ""], set()
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert texts == alone and finished == {0, 1, 2}
    assert chunks[-1].usage.completion_tokens == response.usage.completion_tokens


def test_n_greedy_completions_are_one_answer_n_times(live, expected):
    response = complete(live, PROMPT, n=2)
    assert [c.text for c in response.choices] == [expected["completion"]["text"]] * 2
    assert response.usage.completion_tokens == 2 * N


def test_a_list_of_prompts_is_answered_prompt_by_prompt_n_choices_each(live):
    prompts = PROMPTS[:3]
    alone = [complete(live, p) for p in prompts]
    response = complete(live, prompts, n=2)
    assert [c.index for c in response.choices] == list(range(6))
    assert [c.text for c in response.choices] == [a.choices[0].text for a in alone for _ in range(2)]
    assert response.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert response.usage.completion_tokens == 2 * sum(a.usage.completion_tokens for a in alone)
    # Token ids, one list per prompt, are the same prompts.
    ids = [live.state.engine.tokenize_prompt(p, Request()) for p in prompts]
    by_ids = live.http.post("/v1/completions", json={"prompt": ids, "max_tokens": N, "temperature": 0}).json()
    assert [c["text"] for c in by_ids["choices"]] == [a.choices[0].text for a in alone]


def test_logprobs_are_the_targets_for_each_token_with_its_likeliest_alternatives(live, expected):
    response = chat(live, logprobs=True, top_logprobs=3)
    choice = response.choices[0]
    entries = choice.logprobs.content
    assert choice.message.content == expected["chat"]["text"]
    assert len(entries) == response.usage.completion_tokens == N
    assert b"".join(bytes(e.bytes) for e in entries).decode() == choice.message.content
    for e in entries:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and all(lp <= 0 for lp in tops)
        # Greedy: every token is the target's likeliest.
        assert e.token == e.top_logprobs[0].token and e.logprob == pytest.approx(tops[0])
    # Streamed, the chunks carry the same entries, each with its text.
    chunks = list(chat(live, logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]
    # (llama.cpp rounds a row a little differently in another batch: the drafts differ run to run)
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-3)
    assert chat(live).choices[0].logprobs is None  # not asked: none


def test_completion_logprobs_have_offsets_and_end_with_a_stop_string(live, expected):
    ref = expected["completion"]["text"]
    response = complete(live, PROMPT, logprobs=2)
    lp = response.choices[0].logprobs
    assert "".join(lp.tokens) == response.choices[0].text == ref
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == N
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(N)]
    assert all(len(top) == 2 and max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs, lp.token_logprobs))
    # A stop string: only the tokens whose text begins before it.
    stop = ref[len(ref) // 2: len(ref) // 2 + 4]
    cut = complete(live, PROMPT, logprobs=0, stop=stop).choices[0]
    assert cut.text == ref[: ref.index(stop)]
    assert lp.tokens[: len(cut.logprobs.tokens)] == cut.logprobs.tokens
    assert cut.logprobs.text_offset[-1] < len(cut.text) <= sum(len(t) for t in cut.logprobs.tokens)


def test_raw_stream_is_server_sent_events_ending_with_done(live):
    body = {"prompt": PROMPT, "max_tokens": 4, "stream": True}
    with live.http.stream("POST", "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.strip()]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_stop_strings_end_the_answer_and_are_not_emitted(live, expected):
    ref = expected["completion"]["text"]
    stop = ref[len(ref) // 3: len(ref) // 3 + 5]  # text from the middle, split across tokens or not
    want = ref[: ref.index(stop)]
    response = live.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=N, temperature=0,
                                              stop=["never appears", stop])
    assert response.choices[0].text == want and response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens < N
    text, chunks = streamed_text(live.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=N,
                                                                temperature=0, stop=stop, stream=True))
    assert text == want


def test_requests_choose_mode_and_k(live):
    response = chat(live, extra_body={"mode": "draft", "k": 2})
    assert response.speculative["mode"] == "draft" and response.speculative["k"] == 2
    assert response.speculative["acceptance_rate"] == 1.0  # the draft is the target's copy
    assert chat(live, extra_body={"mode": "none"}).speculative["drafted"] == 0


def test_a_seed_repeats_a_sampled_answer(live):
    # A fixed mode: with the rejection sampler, auto mode's changing drafts draw other numbers.
    answers = {complete(live, PROMPT, temperature=1.0, seed=7, extra_body={"mode": "draft"}).choices[0].text
               for _ in range(2)}
    assert len(answers) == 1


def test_models_and_health(live):
    assert [m.id for m in live.client.models.list().data] == ["tiny"]
    assert live.http.get("/health").json()["status"] == "ok"


# -- one engine, many clients ----------------------------------------------------------------------


def test_eight_clients_at_once_get_their_own_answers(live):
    # Completions: the tiny models' next token hangs on the last one, and every chat prompt
    # ends with the template's "assistant\n".
    alone = [complete(live, p).choices[0].text for p in PROMPTS]
    assert len(set(alone)) == len(PROMPTS)

    def ask(i: int) -> str:
        if i % 2:
            return streamed_text(complete(live, PROMPTS[i], stream=True))[0]
        return complete(live, PROMPTS[i]).choices[0].text

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(ask, range(len(PROMPTS))))
    assert together == alone


def test_a_dropped_stream_stops_its_generation_and_the_next_request_is_served(live, expected):
    live.wait_idle()
    before = live.metrics()
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": LONG, "stream": True}
    with live.http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if '"content"' in line:
                break  # a token arrived: drop the connection mid-generation
    live.wait_idle(timeout=5)
    after = live.metrics()
    assert after['specllm_generations_total{finish_reason="cancelled"}'] == \
        before.get('specllm_generations_total{finish_reason="cancelled"}', 0) + 1
    assert after["specllm_generated_tokens_total"] - before["specllm_generated_tokens_total"] < LONG
    assert chat(live).choices[0].message.content == expected["chat"]["text"]


def test_a_stream_of_several_choices_cut_by_its_client_ends_them_all(live, expected):
    live.wait_idle()
    before = live.metrics()
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": LONG, "stream": True, "n": 3}
    with live.http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", ""):
                break  # a token arrived: drop the connection mid-generation
    live.wait_idle(timeout=5)  # no choice left generating or waiting for a slot
    after = live.metrics()
    started = min(3, live.state.worker.n_slots)  # a choice still queued is withdrawn, never started
    assert after['specllm_generations_total{finish_reason="cancelled"}'] == \
        before.get('specllm_generations_total{finish_reason="cancelled"}', 0) + started
    assert chat(live).choices[0].message.content == expected["chat"]["text"]


def test_a_full_queue_answers_503_with_retry_after(live, expected):
    live.wait_idle()
    live.state.worker.queue_size = 1
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": LONG, "stream": True}
    try:
        with ExitStack() as streams:
            running = []
            for _ in range(live.state.worker.n_slots):  # every slot generating
                stream = streams.enter_context(live.http.stream("POST", "/v1/chat/completions", json=body))
                lines = stream.iter_lines()  # kept: a dropped line iterator would close the connection
                next(line for line in lines if '"content"' in line)
                running.append((stream, lines))
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(chat, live)
                deadline = time.monotonic() + 5
                while live.http.get("/health").json()["waiting"] < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                refused = live.http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
                assert refused.status_code == 503
                assert int(refused.headers["retry-after"]) >= 1
                assert refused.json()["error"]["code"] == "queue_full"
                running[0][0].close()  # the waiting request now gets its slot
                assert waiting.result(timeout=30).choices[0].message.content == expected["chat"]["text"]
    finally:
        live.state.worker.queue_size = QUEUE_SIZE


def test_twelve_clients_on_four_slots_are_answered_in_turn(live):
    if live.state.worker.n_slots != 4:
        pytest.skip("four slots")
    live.wait_idle()
    prompts = PROMPTS + PROMPTS[:4]  # 12 clients: 4 generating + 8 waiting (QUEUE_SIZE) fit
    alone = {p: complete(live, p).choices[0].text for p in PROMPTS}
    before = live.metrics()
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda p: complete(live, p).choices[0].text, prompts))
    assert answers == [alone[p] for p in prompts]
    after = live.metrics()
    assert after["specllm_slots_total"] == 4
    # Shared decodes: more rows than decodes, and some decodes of 4 rows or more.
    decodes = after["specllm_batch_rows_count"] - before["specllm_batch_rows_count"]
    rows = after["specllm_batch_rows_sum"] - before["specllm_batch_rows_sum"]
    small = after['specllm_batch_rows_bucket{le="2"}'] - before['specllm_batch_rows_bucket{le="2"}']
    assert rows > decodes and small < decodes
    drafted = sum(v for k, v in after.items() if k.startswith("specllm_slot_drafted_tokens_total"))
    assert drafted == sum(v for k, v in after.items() if k.startswith("specllm_drafted_tokens_total{"))
    assert {k.split('slot="')[1][0] for k in after if k.startswith("specllm_slot_drafted")} == set("0123")


def test_a_disconnect_frees_its_slot_and_the_others_answer_as_alone(live, expected):
    live.wait_idle()
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": LONG, "stream": True}
    with ThreadPoolExecutor(1) as pool:
        with live.http.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if '"content"' in line:
                    break  # generating
            other = pool.submit(chat, live)
            time.sleep(0.2)  # the other request joins the shared rounds
        # The stream is closed: its slot is free within a round or so.
        deadline = time.monotonic() + 2
        while live.http.get("/health").json()["slots_busy"] > 1:
            assert time.monotonic() < deadline, "the dropped stream's slot was not freed"
            time.sleep(0.01)
        assert other.result(timeout=30).choices[0].message.content == expected["chat"]["text"]


# -- bad requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, status, fragment", [
    (b'{"messages": [', 400, "not valid JSON"),
    (b'[1, 2]', 400, "JSON object"),
    (b'{"messages": "hi"}', 400, "messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}', 400, "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', 400, "max_tokens"),
    (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 0}', 400, "n must be between 1 and"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 17}', 400, "n must be between 1 and"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 16}', 400, "do not fit this server"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "mode": "fast"}', 400, "mode"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', 400, "top_logprobs needs logprobs"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21}', 400, "top_logprobs"),
    (b'{"messages": []}', 400, "messages"),
    (b'{"messages": [{"role": "user", "content": "a\\ud800"}]}', 400, "surrogate"),
])
def test_bad_chat_requests_get_json_errors(live, body, status, fragment):
    response = live.http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


def test_a_prompt_too_long_gets_400_with_the_token_counts(live):
    with pytest.raises(openai.BadRequestError) as caught:
        live.client.completions.create(model="tiny", prompt=PROMPT * 600, max_tokens=4)
    message = caught.value.body["message"]
    n_prompt = int(re.search(r"has (\d+) tokens", message)[1])
    assert n_prompt > CTX and f"holds {CTX}" in message
    assert caught.value.body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("prompt, fragment", [
    ([], "the prompt is empty"),
    ([[1, 2], []], "the prompt is empty"),
    ([PROMPT] * 40, "40 prompts x n=1 choices do not fit this server"),
    (["hi", PROMPT * 600], "prompt 1 has"),
])
def test_bad_prompt_lists_get_json_errors(live, prompt, fragment):
    response = live.http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4})
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]


def test_unknown_fields_are_ignored_and_unknown_routes_are_json_404(live, expected):
    response = chat(live, extra_body={"frobnicate": True, "logit_bias": {}, "user": "me"})
    assert response.choices[0].message.content == expected["chat"]["text"]
    missing = live.http.get("/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()


def test_the_api_key_is_required_when_set(live):
    live.state.api_key = "sesame"
    try:
        with pytest.raises(openai.AuthenticationError):
            chat(live, max_tokens=2)
        keyed = openai.OpenAI(base_url=f"{live.url}/v1", api_key="sesame", max_retries=0)
        assert keyed.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=2).usage.completion_tokens == 2
        assert live.http.get("/metrics").status_code == 401
        assert live.http.get("/health").status_code == 200  # probes need no key
    finally:
        live.state.api_key = None


# -- accounting --------------------------------------------------------------------------------------


def test_metrics_add_up_to_the_responses(live):
    live.wait_idle()
    before = live.metrics()
    responses = [chat(live, p, max_tokens=n) for p, n in ((PROMPT, 8), (PROMPTS[1], 16))]
    responses.append(chat(live, PROMPTS[2], max_tokens=8, extra_body={"mode": "ngram"}))
    after = live.metrics()

    def delta(prefix: str) -> float:
        return sum(v - before.get(k, 0) for k, v in after.items() if k.startswith(prefix))

    assert delta("specllm_generated_tokens_total") == sum(r.usage.completion_tokens for r in responses)
    assert delta("specllm_prompt_tokens_total") == sum(r.usage.prompt_tokens for r in responses)
    assert delta("specllm_drafted_tokens_total") == sum(r.speculative["drafted"] for r in responses)
    assert delta("specllm_accepted_tokens_total") == sum(r.speculative["accepted"] for r in responses)
    assert delta('specllm_requests_total{endpoint="/v1/chat/completions",status="200"}') == 3
    assert delta("specllm_decode_seconds_total") > 0


def test_metrics_split_a_mixed_generation_exactly_by_source():
    # Auto mode mixes drafters within one generation: each round counts under its own source,
    # whichever rounds came between two looks at the stats.
    stats = SpecStats(mode="auto")
    for shape in (("suffix", 8, 8, 9), ("none", 0, 0, 1), ("model", 3, 1, 2), ("suffix", 4, 0, 1),
                  ("memory", 2, 2, 3)):
        stats.record_round(*shape)
    metrics = Metrics()
    metrics.count_generation("stop", prompt_tokens=5, completion_tokens=stats.generated, stats=stats, slot=0)
    text = metrics.render()

    def value(name: str) -> float:
        return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))

    assert value('specllm_drafted_tokens_total{source="suffix"}') == 12
    assert value('specllm_accepted_tokens_total{source="suffix"}') == 8
    assert value('specllm_rounds_total{source="suffix"}') == 2
    assert value('specllm_drafted_tokens_total{source="model"}') == 3
    assert value('specllm_accepted_tokens_total{source="model"}') == 1
    assert value('specllm_accepted_tokens_total{source="memory"}') == 2
    assert value('specllm_slot_drafted_tokens_total{slot="0",source="memory"}') == 2
    assert value('specllm_rounds_total{source="none"}') == 1
    assert value("specllm_generated_tokens_total") == stats.generated


def test_a_repeated_chat_prefix_comes_from_the_kv_cache(live):
    first = chat(live, max_tokens=4)
    second = chat(live, max_tokens=4)
    assert second.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1


def test_a_chat_turn_reuses_the_previous_turn_from_the_kv_cache(live):
    history = [{"role": "system", "content": "you are a cat"}, {"role": "user", "content": PROMPT}]
    first = live.client.chat.completions.create(model="tiny", messages=history, max_tokens=8)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "and then"}]
    second = live.client.chat.completions.create(model="tiny", messages=history, max_tokens=8)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 8
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


def test_clients_with_one_system_prompt_decode_it_once_and_get_their_answers_alone(live):
    system = {"role": "system", "content": " ".join(PROMPTS) * 4}
    questions = PROMPTS[:4]

    def ask(question: str):
        return live.client.chat.completions.create(
            model="tiny", messages=[system, {"role": "user", "content": question}], max_tokens=8, temperature=0)

    live.wait_idle()
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(ask, questions))
    alone = [ask(q) for q in questions]
    assert [r.choices[0].message.content for r in together] == [r.choices[0].message.content for r in alone]
    # Whether they ran side by side (slots) or in turn (one slot), every request but one took
    # the system prompt from a cache: the shared cells of another slot, or its own slot's.
    n_system = 0.9 * min(r.usage.prompt_tokens for r in together)  # the system prompt is over 90% of each
    cached = sorted(r.usage.prompt_tokens_details.cached_tokens for r in together)
    assert all(c >= n_system for c in cached[1:]), (cached, [r.usage.prompt_tokens for r in together])


def test_no_traceback_in_the_server_log(live):
    assert not [r for r in live.logs.records if r.exc_info], [r.getMessage() for r in live.logs.records]


# -- text assembly (no model) -------------------------------------------------------------------------


def test_text_holds_back_split_characters_and_possible_stop_starts():
    text = ResponseText(["STOP"])
    euro = "€".encode()
    assert text.feed(b"a" + euro[:1]) == "a"
    assert text.feed(euro[1:2]) == ""  # the character is not whole yet
    assert text.feed(euro[2:] + b" S") == "€ "  # " S" might begin STOP: "S" is held
    assert text.feed(b"T") == ""
    assert text.feed(b"x") == "STx"
    assert text.feed(b"yST") == "y"
    assert text.feed(b"OPz") == "" and text.stopped
    assert text.text == "a€ STxy"


def test_text_releases_the_held_start_at_the_end_and_finds_the_earliest_stop():
    text = ResponseText(["abc", "b"])
    assert text.feed(b"xa") == "x"
    assert text.finish() == "a"
    early = ResponseText(["cd", "bcdef"])
    assert early.feed(b"abcde") == "ab" and early.stopped


# -- the command -------------------------------------------------------------------------------------


def test_without_the_server_extra_the_command_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails as if not installed
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2 and "specllm[server]" in result.stderr, result.output


def test_a_taken_port_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path))
    taken = bind_socket("127.0.0.1", 0)
    taken.listen()
    try:
        result = CliRunner().invoke(app, ["serve", "--port", str(taken.getsockname()[1])])
    finally:
        taken.close()
    assert result.exit_code == 2, result.output
    assert "cannot listen on 127.0.0.1:" in result.stderr and "Traceback" not in result.output


def test_the_serve_command_serves_and_stops_cleanly(tiny, tmp_path):
    """The real command: a warning for a public address without a key, answers, and on Ctrl-C
    an open stream ends with an error event and [DONE]; never a traceback."""
    env = {**os.environ, "SPECLLM_CACHE": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("SPECLLM_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "specllm", "serve", "-m", str(tiny.target), "-md", str(tiny.draft_copy),
         "--mode", "draft", "-t", "1", "-c", "8192", "--host", "0.0.0.0", "--port", "0"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    lines, stream_tail = [], []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "serving" in line:
                break
        port = int(re.search(r":(\d+)/v1", lines[-1])[1])
        assert any("without an API key" in line for line in lines)
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{url}/v1/completions", content=b"{bad").status_code == 400
        ok = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}, timeout=30)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
        body = {"prompt": PROMPT, "max_tokens": 8000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as stream:
            lines_in = stream.iter_lines()
            next(line for line in lines_in if '"text"' in line)
            proc.send_signal(signal.SIGINT)
            stream_tail = [line for line in lines_in if line.strip()]
    finally:
        proc.send_signal(signal.SIGINT)  # a second Ctrl-C, as an impatient user would
        rest = proc.stderr.read()
        proc.wait(30)
    assert stream_tail[-1] == "data: [DONE]" and "shutting down" in stream_tail[-2]
    output = "".join(lines) + rest
    assert "Traceback" not in output, output
    assert proc.returncode in (0, 130), output
