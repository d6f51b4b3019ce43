"""The OpenAI-compatible API, through the official `openai` client and plain HTTP."""
import concurrent.futures
import json
import re
import time

import openai
import pytest
import requests

PROMPTS = [
    "Hello", "Tell me a story", "The quick brown fox", "1 2 3", "What is the weather?", "robot",
    "Falcon models are hybrid", "Streaming sends text", "cache", "Numbers: 42", "Paris in the spring",
    "system prompt", "How are you today?", "paint", "server answers", "Once upon a time",
]


def chat(client, model, text, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 16)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kw)


def stream_chat_text(client, model, text, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 16)
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                 stream=True, **kw))
    return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---- basics ----

def test_health_models_metrics(server, model_name):
    assert requests.get(server.url + "/health").json() == {"status": "ok"}
    models = requests.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == model_name
    assert requests.get(server.url + "/v1/models/" + model_name).json()["id"] == model_name
    assert requests.get(server.url + "/v1/models/nope").status_code == 404
    text = requests.get(server.url + "/metrics").text
    assert "# TYPE fh1_completion_tokens_total counter" in text
    assert server.metric("fh1_parallel_limit") == 8


def test_chat_completion(client, model_name):
    r = chat(client, model_name, "Hello", max_tokens=12)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == model_name
    assert isinstance(r.created, int)
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant" and isinstance(c.message.content, str)
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0 and 1 <= u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens >= 0


def test_chat_streaming_equals_non_streaming(client, model_name):
    full = chat(client, model_name, "Tell me a story", max_tokens=20)
    chunks, text = stream_chat_text(client, model_name, "Tell me a story", max_tokens=20,
                                    stream_options={"include_usage": True})
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_sse_wire_format(server, model_name):
    r = requests.post(server.url + "/v1/chat/completions", stream=True, json={
        "model": model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
        "temperature": 0})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "data: [DONE]"
    for e in events[:-1]:
        assert e.startswith("data: ")
        json.loads(e[6:])


def test_completions(client, model_name):
    r = client.completions.create(model=model_name, prompt="The quick brown", max_tokens=10, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].finish_reason in ("stop", "length") and isinstance(r.choices[0].text, str)
    chunks = list(client.completions.create(model=model_name, prompt="The quick brown", max_tokens=10,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_completions_token_ids_and_logprobs(client, model_name):
    r = client.completions.create(model=model_name, prompt=[5, 6, 7, 8], max_tokens=6, temperature=0, logprobs=3)
    assert r.usage.prompt_tokens == 4
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    for best, chosen in zip(lp.top_logprobs, lp.token_logprobs):
        assert len(best) <= 3 and chosen <= 1e-6
        assert max(best.values()) == pytest.approx(chosen, abs=1e-5)  # greedy: the chosen one is the best


def test_chat_logprobs(client, model_name):
    r = chat(client, model_name, "Hello", max_tokens=5, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        assert e.logprob <= 1e-6 and len(e.top_logprobs) == 2 and isinstance(e.bytes, list)


def test_stop_strings(client, model_name):
    text = chat(client, model_name, "Once upon a time", max_tokens=30).choices[0].message.content
    # a stop string of two printable ASCII characters, first found after the start of the reply
    candidates = [i for i in range(2, len(text) - 2) if text[i:i + 2].isascii() and text[i:i + 2].isprintable()]
    if not candidates:
        pytest.skip("the reply has no ASCII text to stop on")
    i = candidates[0]
    stop = text[i:i + 2]
    expected = text[:text.find(stop)]
    r = chat(client, model_name, "Once upon a time", max_tokens=30, stop=[stop, "never-there"])
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    chunks, streamed = stream_chat_text(client, model_name, "Once upon a time", max_tokens=30, stop=stop)
    assert streamed == expected
    assert all(stop not in (c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_seed_reproducible(client, model_name):
    a = chat(client, model_name, "robot", temperature=1.0, seed=1234, max_tokens=24).choices[0].message.content
    b = chat(client, model_name, "robot", temperature=1.0, seed=1234, max_tokens=24).choices[0].message.content
    c = chat(client, model_name, "robot", temperature=1.0, seed=99, max_tokens=24).choices[0].message.content
    assert a == b
    assert a != c
    _, s = stream_chat_text(client, model_name, "robot", temperature=1.0, seed=1234, max_tokens=24)
    assert s == a


def test_sampling_parameters_accepted(client, model_name):
    r = chat(client, model_name, "paint", temperature=0.8, top_p=0.9, max_tokens=8, seed=1,
             presence_penalty=0.5, frequency_penalty=0.5, extra_body={"top_k": 20, "min_p": 0.05})
    assert r.usage.completion_tokens >= 1


def test_16_concurrent_clients_match_each_alone(client, model_name):
    def ask(p):
        return chat(client, model_name, p, max_tokens=24).choices[0].message.content

    def ask_streaming(p):
        return stream_chat_text(client, model_name, p, max_tokens=24)[1]

    alone = [ask(p) for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, PROMPTS))
        together_streamed = list(pool.map(ask_streaming, PROMPTS))
    assert together == alone
    assert together_streamed == alone


def test_conversation_resumes_from_cache(client, model_name):
    messages = [{"role": "user", "content": "Tell me about the cache"}]
    first = client.chat.completions.create(model=model_name, messages=messages, max_tokens=12, temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model=model_name, messages=messages, max_tokens=12, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens
    # the same answer as without the cache: a fresh request with a different system prompt would
    # not share the prefix, so compare against a second identical request instead (also cached)
    third = client.chat.completions.create(model=model_name, messages=messages, max_tokens=12, temperature=0)
    assert third.choices[0].message.content == second.choices[0].message.content


def test_cancelled_stream_frees_its_slot(server, model_name):
    before = server.metric("fh1_requests_cancelled_total")
    r = requests.post(server.url + "/v1/chat/completions", stream=True, json={
        "model": model_name, "messages": [{"role": "user", "content": "go on forever"}], "max_tokens": 400,
        "stream": True, "ignore_eos": True, "temperature": 0})
    lines = r.iter_lines()
    for _ in range(6):
        next(lines)
    r.close()  # the client goes away mid-stream
    deadline = time.time() + 10
    while time.time() < deadline:
        if server.metric("fh1_requests_cancelled_total") > before and server.metric("fh1_sequences_running") == 0:
            break
        time.sleep(0.05)
    assert server.metric("fh1_requests_cancelled_total") > before
    assert server.metric("fh1_sequences_running") == 0
