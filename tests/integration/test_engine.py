"""The executor on the real embedded model, without HTTP: prefix reuse, queueing, cancellation, batching."""

from __future__ import annotations

import queue

import llama_cpp
import pytest

from gateway.engine.executor import Executor, ExecutorSettings
from gateway.engine.jobs import Finished, GenerationJob, JobHandle, Piece, Started
from gateway.engine.reasoning_budget import ReasoningBudget
from gateway.models.embedded import embedded_model_path
from gateway.types import ErrorKind, GatewayError, SamplingParams

pytestmark = pytest.mark.integration

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def executor():
    ex = Executor("smollm2", embedded_model_path(), ExecutorSettings(parallel=2, n_ctx=1024, max_queue=1))
    yield ex
    ex.close()


def run(handle: JobHandle, timeout: float = 60) -> tuple[list, str]:
    events, text = [], ""
    while True:
        _, event = handle.sink.get(timeout=timeout)
        events.append(event)
        if isinstance(event, Piece):
            text += event.text
        if isinstance(event, Finished):
            return events, text


def tokens(executor: Executor, text: str) -> list[int]:
    return executor.model.tokenize(text, False, True)


def test_a_prompt_sharing_a_cached_prefix_evaluates_only_the_rest(executor):
    base = tokens(executor, "The history of the city of Rome begins with a small village on a hill. " * 4)
    events, _ = run(executor.submit(GenerationJob(base, GREEDY, max_tokens=4)))
    assert events[0] == Started(len(base), 0)
    longer = base + tokens(executor, " Later the village grew.")
    events, _ = run(executor.submit(GenerationJob(longer, GREEDY, max_tokens=4)))
    assert events[0] == Started(len(longer), len(base))
    assert events[-1].cached_tokens == len(base)


def test_the_same_prompt_again_reuses_all_but_its_last_token(executor):
    prompt = tokens(executor, "A short story about a lighthouse keeper:")
    first = run(executor.submit(GenerationJob(prompt, GREEDY, max_tokens=8)))
    second = run(executor.submit(GenerationJob(prompt, GREEDY, max_tokens=8)))
    assert second[0][0].cached_tokens == len(prompt) - 1
    assert first[1] == second[1]  # reuse changes nothing in the output


def test_stop_strings_end_generation_and_are_not_returned(executor):
    prompt = tokens(executor, "1, 2, 3, 4, 5,")
    _, free_text = run(executor.submit(GenerationJob(prompt, GREEDY, max_tokens=16)))
    stop = free_text.strip().split()[1] if len(free_text.split()) > 1 else free_text.strip()[:2]
    events, text = run(executor.submit(GenerationJob(prompt, GREEDY, max_tokens=16, stop=[stop])))
    assert stop not in text
    assert free_text.startswith(text)
    assert events[-1].reason == "stop" and events[-1].stop_sequence == stop


def test_max_tokens_ends_with_length(executor):
    prompt = tokens(executor, "Once upon a time, in a land far away,")
    events, _ = run(executor.submit(GenerationJob(prompt, GREEDY, max_tokens=5)))
    assert events[-1].reason == "length" and events[-1].completion_tokens == 5


def test_a_full_queue_refuses_at_once_and_cancel_frees_everything(executor):
    long_job = GenerationJob(tokens(executor, "Write a very long essay about the sea."), GREEDY, max_tokens=900)
    sink: queue.SimpleQueue = queue.SimpleQueue()
    running = [executor.submit(long_job, sink, tag=i) for i in range(2)]  # both sequences busy
    waiting = executor.submit(long_job, sink, tag=2)                      # the one queue place
    with pytest.raises(GatewayError) as refused:
        for _ in range(50):  # the executor admits asynchronously; the queue is full once both run
            executor.submit(long_job, sink, tag=3).cancel()
    assert refused.value.kind == ErrorKind.OVERLOADED
    for handle in [*running, waiting]:
        handle.cancel()
    reasons = {}
    while len(reasons) < 3:
        tag, event = sink.get(timeout=30)
        if isinstance(event, Finished) and tag in (0, 1, 2):
            reasons[tag] = event.reason
    assert reasons == {0: "cancelled", 1: "cancelled", 2: "cancelled"}
    events, _ = run(executor.submit(GenerationJob(tokens(executor, "Hi"), GREEDY, max_tokens=2)), timeout=30)
    assert events[-1].reason == "length"


def test_a_prompt_that_cannot_fit_is_refused_before_decoding(executor):
    with pytest.raises(GatewayError) as err:
        executor.submit(GenerationJob([1] * 1000, GREEDY, max_tokens=100))
    assert err.value.kind == ErrorKind.CONTEXT_OVERFLOW


def test_embeddings_are_normalised_and_deterministic(executor):
    a, b, a2 = executor.embed([tokens(executor, "cat"), tokens(executor, "a rocket engine"),
                               tokens(executor, "cat")])
    assert len(a) == executor.model.n_embd
    assert abs(sum(v * v for v in a) - 1.0) < 1e-4
    assert a == a2 and a != b


YES_NO = 'root ::= [a-z ]{0,60} "</think>" " "? "Yes" | [a-z ]{0,60} "</think>" " No"'


@pytest.mark.parametrize("grammar", [None, YES_NO])
def test_a_reasoning_budget_closes_reasoning_after_that_many_tokens(executor, grammar):
    """The prompt opened reasoning; after 5 tokens the engine writes the close marker itself (also through a
    grammar, which the forced tokens must satisfy), and the model goes on after it."""
    close = "</think>"
    budget = ReasoningBudget(5, "<think>", close, tokens(executor, close), opened=True)
    prompt = tokens(executor, "<|im_start|>user\nIs the sky blue?<|im_end|>\n<|im_start|>assistant\n<think>")
    job = GenerationJob(prompt, GREEDY, max_tokens=24, grammar=grammar, reasoning=budget)
    events, text = run(executor.submit(job))
    pieces = [e.text for e in events if isinstance(e, Piece)]
    assert close in text and text.index(close) == len("".join(pieces[:5])), pieces
    assert text.split(close, 1)[1].strip()  # an answer follows
    assert events[-1].reason in ("stop", "length")


def test_prompts_that_arrive_together_are_prefilled_one_after_the_other():
    """On a CPU a step costs per token, so prefilling two prompts in one step would only make the first wait for
    the second: the oldest is prefilled alone, and its first token comes a step before the other's. Events and
    step ends go to one queue, in the order the decode loop makes them."""
    log: queue.SimpleQueue = queue.SimpleQueue()
    ex = Executor("smollm2", embedded_model_path(), ExecutorSettings(parallel=3, n_ctx=2048),
                  after_step=lambda: log.put(("step", None)))
    try:
        # a running stream keeps the loop busy, so both prompts are waiting when the next step is built
        running = ex.submit(GenerationJob(tokens(ex, "Count to fifty: 1, 2, 3,"), GREEDY, max_tokens=48), log, 0)
        while not isinstance(log.get(timeout=60)[1], Piece):
            pass
        first = tokens(ex, "The history of the city of Rome begins with a small village on a hill by a river. " * 2)
        second = tokens(ex, "A lighthouse keeper writes a letter to her sister about the storm of last winter. " * 2)
        ex.submit(GenerationJob(first, GREEDY, max_tokens=2), log, 1)
        ex.submit(GenerationJob(second, GREEDY, max_tokens=2), log, 2)
        first_token_step: dict[int, int] = {}
        step = 0
        while len(first_token_step) < 2:
            tag, event = log.get(timeout=60)
            if tag == "step":
                step += 1
            elif tag in (1, 2) and isinstance(event, Piece):
                first_token_step.setdefault(tag, step)
        assert len(first) >= 16 and len(second) >= 16
        assert first_token_step[1] < first_token_step[2]
        running.cancel()
    finally:
        ex.close()


def held_sequences(executor: Executor) -> int:
    """How many sequences hold cells in llama.cpp's KV cache (asked of llama.cpp, not of the executor's books)."""
    return sum(llama_cpp.llama_memory_seq_pos_max(executor._mem, s) >= 0 for s in range(executor.parallel))


@pytest.mark.parametrize("parked_max_bytes", [-1, 0, 1])
def test_idle_sequences_are_parked_when_a_job_starts_and_restored_for_a_prompt_that_continues_them(
        parked_max_bytes):
    """With parking on, a sequence left idle gives its cells up when another job starts, and a later prompt that
    continues it gets its state back rather than a prefill. Off (0), or with a state bigger than the bound (1
    byte), the idle sequence keeps its cells, and the same prompt reuses them in place."""
    ex = Executor("smollm2", embedded_model_path(),
                  ExecutorSettings(parallel=2, n_ctx=1024, parked_max_bytes=parked_max_bytes))
    try:
        rome = tokens(ex, "The history of the city of Rome begins with a small village on a hill. " * 4)
        run(ex.submit(GenerationJob(rome, GREEDY, max_tokens=8)))
        bread = tokens(ex, "A recipe for bread: flour, water, salt and a little yeast. " * 3)
        run(ex.submit(GenerationJob(bread, GREEDY, max_tokens=4)))
        parking = parked_max_bytes == -1  # the default: as much as the KV cache holds
        assert held_sequences(ex) == (1 if parking else 2)  # Rome's sequence was parked when bread's started
        longer = rome + tokens(ex, " Later the village grew.")
        events, _ = run(ex.submit(GenerationJob(longer, GREEDY, max_tokens=4)))
        assert events[0] == Started(len(longer), len(rome))
        stats = ex.stats(changed_only=False)["parked"]
        if parked_max_bytes == 0:
            assert stats is None
        else:
            assert stats["restored"] == (1 if parking else 0)
            assert stats["parked"] == (2 if parking else 0)  # Rome's, then bread's when the longer prompt began
            assert held_sequences(ex) == (1 if parking else 2)
    finally:
        ex.close()
