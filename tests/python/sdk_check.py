"""The official `openai` Python SDK against the llm-cache HTTP front (tests/serve/python.rs).

    python sdk_check.py <scenario> [args...]     # one scenario
    python sdk_check.py --serve                  # scenarios read from stdin, one a line

with LLM_CACHE_BASE_URL (the front's /v1 URL) and OPENAI_API_KEY (a caller key) set. Each
scenario checks what the SDK sees and prints one JSON object on one line (`{"failed":
<traceback>}` when a check fails); the Rust test checks the mock upstream (how many calls
reached it) around it. `--serve` pays for Python and the SDK's import once. The SDK's own
retries are off (max_retries=0) so a 429 reaches the script at once.
"""

import json
import os
import sys
import threading
import traceback

import openai

BASE_URL = os.environ["LLM_CACHE_BASE_URL"]
MODEL = "gpt-4.1-mini"


def client(key=None):
    return openai.OpenAI(
        base_url=BASE_URL,
        api_key=key or os.environ["OPENAI_API_KEY"],
        max_retries=0,
    )


def messages(prompt):
    return [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": prompt},
    ]


def create(c, prompt):
    """The answer's text and its x-llm-cache header."""
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages(prompt), temperature=0.0
    )
    completion = raw.parse()
    return completion.choices[0].message.content, raw.headers.get("x-llm-cache")


def stream(c, prompt, usage=False):
    """The streamed text, and the usage when asked for."""
    extra = {"stream_options": {"include_usage": True}} if usage else {}
    text, seen_usage = [], None
    for chunk in c.chat.completions.create(
        model=MODEL, messages=messages(prompt), temperature=0.0, stream=True, **extra
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            seen_usage = chunk.usage.total_tokens
    return "".join(text), seen_usage


def scenario_create():
    c = client()
    first, first_status = create(c, "python hello")
    second, second_status = create(c, "python hello")
    assert first == second, (first, second)
    return {"text": first, "statuses": [first_status, second_status]}


def scenario_stream():
    c = client()
    streamed, usage = stream(c, "python stream", usage=True)
    plain, status = create(c, "python stream")
    assert streamed == plain, (streamed, plain)
    again, no_usage = stream(c, "python stream")
    assert again == plain and no_usage is None, (again, no_usage)
    return {"text": streamed, "usage": usage, "status_after": status}


def scenario_concurrent():
    """20 identical requests and 20 identical streams, all started at once."""
    c = client()
    barrier = threading.Barrier(40)
    texts, errors = [], []

    def plain():
        barrier.wait()
        try:
            texts.append(("plain", create(c, "python stampede")[0]))
        except Exception as e:  # reported below
            errors.append(repr(e))

    def streamed():
        barrier.wait()
        try:
            texts.append(("stream", stream(c, "python stampede streamed")[0]))
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=plain) for _ in range(20)]
    threads += [threading.Thread(target=streamed) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    distinct = {kind: sorted({t for k, t in texts if k == kind}) for kind in ("plain", "stream")}
    assert all(len(v) == 1 for v in distinct.values()), distinct
    return {"answers": len(texts), "distinct": distinct}


def scenario_tenants(a1, a2, b1):
    statuses = [
        create(client(a1), "python tenant")[1],
        create(client(b1), "python tenant")[1],
        create(client(a2), "python tenant")[1],
    ]
    return {"statuses": statuses}


def scenario_errors():
    c = client()
    out = {}
    try:
        create(c, "python limited")
        raise AssertionError("expected a RateLimitError")
    except openai.RateLimitError as e:
        out["rate_limit"] = {
            "status": e.status_code,
            "retry_after": e.response.headers.get("retry-after"),
            "type": (e.body or {}).get("type"),
        }
    try:
        create(c, "python bad request")
        raise AssertionError("expected a BadRequestError")
    except openai.BadRequestError as e:
        out["bad_request"] = {
            "status": e.status_code,
            "message": (e.body or {}).get("message"),
            "param": (e.body or {}).get("param"),
        }
    try:
        create(client("sk-not-a-caller-key-0123"), "python refused")
        raise AssertionError("expected an AuthenticationError")
    except openai.AuthenticationError as e:
        out["unauthorized"] = {"status": e.status_code, "code": (e.body or {}).get("code")}
    return out


def scenario_embeddings():
    """The SDK asks for base64 vectors unless told otherwise; it decodes them itself."""
    c = client()
    first = c.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["python alpha", "python beta"]
    )
    second = c.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["python beta", "python gamma"]
    )
    floats = c.embeddings.create(
        model="text-embedding-3-small", input="python beta", encoding_format="float"
    )
    beta = first.parse().data[1].embedding
    assert second.parse().data[0].embedding == beta
    assert floats.data[0].embedding == beta
    return {
        "statuses": [first.headers.get("x-llm-cache"), second.headers.get("x-llm-cache")],
        "dims": len(beta),
    }


def scenario_responses():
    """`responses.create` twice: the stored answer, as it came, the second time."""
    c = client()
    ask = lambda: c.responses.with_raw_response.create(model=MODEL, input="python responses")
    first, second = ask(), ask()
    assert first.text == second.text, (first.text, second.text)
    parsed = first.parse()
    return {
        "id": parsed.id,
        "status": parsed.status,
        "statuses": [first.headers.get("x-llm-cache"), second.headers.get("x-llm-cache")],
    }


def scenario_responses_stream():
    """A streamed `responses.create`, then its replay: the same typed events."""
    c = client()

    def ask():
        raw = c.responses.with_raw_response.create(
            model=MODEL, input="python responses stream", stream=True
        )
        events = [e.model_dump(mode="json") for e in raw.parse()]
        return events, raw.headers.get("x-llm-cache")

    (first, first_status), (second, second_status) = ask(), ask()
    assert first == second, (first, second)
    completed = [e for e in first if e["type"] == "response.completed"]
    assert completed, first
    return {
        "types": [e["type"] for e in first],
        "id": completed[0]["response"]["id"],
        "statuses": [first_status, second_status],
    }


def scenario_completions():
    """`completions.create` twice, then streamed twice (no usage-only chunk unless asked)."""
    c = client()
    model = "gpt-3.5-turbo-instruct"
    ask = lambda: c.completions.with_raw_response.create(
        model=model, prompt="python complete", max_tokens=8
    )
    first, second = ask(), ask()
    assert first.parse().choices[0].text == second.parse().choices[0].text

    def streamed():
        raw = c.completions.with_raw_response.create(
            model=model, prompt="python complete streamed", max_tokens=8, stream=True
        )
        chunks = list(raw.parse())
        assert all(chunk.choices for chunk in chunks), chunks
        return "".join(chunk.choices[0].text for chunk in chunks), raw.headers.get("x-llm-cache")

    (live, live_status), (replay, replay_status) = streamed(), streamed()
    assert live and live == replay, (live, replay)
    return {
        "text": first.parse().choices[0].text,
        "statuses": [first.headers.get("x-llm-cache"), second.headers.get("x-llm-cache")],
        "stream_statuses": [live_status, replay_status],
    }


def run(name, *args):
    try:
        return globals()["scenario_" + name](*args)
    except Exception:  # reported to the test, which fails with it
        return {"failed": traceback.format_exc()}


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(run(*line.split())), flush=True)
    else:
        print(json.dumps(run(*sys.argv[1:])))
