#!/usr/bin/env python3
"""The official OpenAI Python client against a running kiln server (`cargo xtask serve`).

Usage: openai_client_check.py [BASE_URL]
  BASE_URL: argv[1], else $KILN_BASE_URL, else http://127.0.0.1:8000/v1
  API key:  $KILN_API_KEY, else $OPENAI_API_KEY, else "none" (for a server without --api-key)

Checks, on a chat model such as SmolLM2-135M-Instruct: a greedy chat answer to "What is the
capital of France?" names Paris; the same question streamed (with usage in a last chunk); a text
completion with log-probabilities; embeddings from the companion embedding model the server lists
(all-MiniLM-L6-v2: unit vectors, a paraphrase closer than an unrelated text); a request over the
context raised as
openai.BadRequestError; another model id raised as openai.NotFoundError. Exits 1 on a failure.
"""

import os
import sys

import openai
from openai import OpenAI

# SmolLM2-135M answers this greedily with "The capital of France is Paris." under this system
# message (under its template's default system message it rambles).
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def main() -> None:
    base_url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("KILN_BASE_URL", "http://127.0.0.1:8000/v1")
    api_key = os.environ.get("KILN_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
    # The server is local: never go through a proxy from the environment.
    os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    os.environ["no_proxy"] = os.environ["NO_PROXY"]
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)

    # The chat model first, then the companion embedding model.
    models = client.models.list().data
    assert len(models) == 2, models
    model = models[0].id
    print(f"model: {model}")

    # Chat, greedy.
    r = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=30)
    answer = r.choices[0].message.content
    print(f"chat: {answer!r} ({r.choices[0].finish_reason}, usage {r.usage})")
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-"), r
    assert r.choices[0].message.role == "assistant"
    assert "Paris" in answer, answer
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 30, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    # The same, streamed, with usage at the end.
    stream = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, roles, finish = [], None, [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    streamed = "".join(pieces)
    print(f"streamed chat: {streamed!r} ({finish}, usage {usage})")
    assert roles == ["assistant"], roles
    assert usage is not None and usage.completion_tokens > 0, "no usage chunk"
    assert finish in ("stop", "length"), finish
    assert "Paris" in streamed, streamed
    if streamed != answer:
        print("note: the streamed answer differs from the plain one")

    # Text completion with log-probabilities.
    c = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2
    )
    choice = c.choices[0]
    print(f"completion: {choice.text!r} ({choice.finish_reason})")
    assert c.object == "text_completion" and c.id.startswith("cmpl-"), c
    assert choice.text and choice.logprobs is not None
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) > 0
    assert all(len(t) <= 2 for t in choice.logprobs.top_logprobs)

    # Embeddings from the companion encoder (all-MiniLM-L6-v2), listed by /v1/models.
    embedder = models[1].id
    texts = ["The capital of France is Paris.", "Paris is France's capital city.", "Cats sleep most of the day."]
    e = client.embeddings.create(model=embedder, input=texts)
    vecs = [d.embedding for d in e.data]
    assert len(vecs) == 3 and all(len(v) == 384 for v in vecs), e
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert abs(cos(vecs[0], vecs[0]) - 1.0) < 1e-4
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.3, (cos(vecs[0], vecs[1]), cos(vecs[0], vecs[2]))
    print(f"embeddings ({embedder}): 3 x 384; cos(paraphrase) {cos(vecs[0], vecs[1]):.3f} > cos(unrelated) {cos(vecs[0], vecs[2]):.3f}")

    # Errors map to the client's exceptions.
    try:
        client.chat.completions.create(model=model, messages=QUESTION, max_tokens=10**6)
    except openai.BadRequestError as err:
        print(f"400 as expected: {err.message}")
        assert err.code == "context_length_exceeded", err.body
    else:
        raise AssertionError("max_tokens beyond the context was accepted")
    try:
        client.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=2)
    except openai.NotFoundError as err:
        assert err.code == "model_not_found", err.body
    else:
        raise AssertionError("an unknown model was accepted")

    print("openai client check: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"openai client check FAILED: {e}", file=sys.stderr)
        sys.exit(1)
