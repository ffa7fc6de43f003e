"""The agent's OpenAI-compatible API as the official `openai` client sees it.

Run by agent/tests/http_openai_python.rs against a running `emoe-agent serve --http`:

    python openai_client.py --base-url http://ADDR/v1 --agent unix:SOCK --exe emoe-agent \
        --up dp2tp1ep2 --down dp1tp1ep1

Checks completions, chat, streaming (with usage; the streamed text equals the whole answer of
the same greedy request), log-probabilities, the model list, the error cases, and concurrent
streams through a scale up and back down (no failure; every answer equals the one before
scaling). Prints one JSON summary; exits non-zero on any failure.
"""

import argparse
import json
import subprocess
import sys
import threading
import time

import openai
from openai import OpenAI

CHECKS = []


def check(name, ok, detail=""):
    CHECKS.append({"check": name, "ok": bool(ok), "detail": str(detail)[:500]})
    return ok


def expect_error(name, kind, status, fn, needle=None):
    try:
        fn()
    except kind as e:
        got = getattr(e, "status_code", None)
        text = str(e)
        ok = got == status and (needle is None or needle in text)
        return check(name, ok, f"status {got}: {text}")
    except Exception as e:  # noqa: BLE001 - any other error is the finding
        return check(name, False, f"{type(e).__name__}: {e}")
    return check(name, False, "no error raised")


def stream_completion(client, model, prompt, max_tokens, extra=None):
    """The text of a streamed completion, and the usage chunk's completion tokens."""
    text, usage = "", None
    for chunk in client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    ):
        if chunk.choices:
            text += chunk.choices[0].text or ""
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    return text, usage


def scale(exe, agent, to):
    t0 = time.monotonic()
    r = subprocess.run(
        [exe, "scale", "--to", to, "--agent", agent, "--yes", "--wait", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r.returncode, r.stderr.strip()[-500:], t0, time.monotonic()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--agent", required=True, help="unix:SOCK of the agent's gRPC API")
    ap.add_argument("--exe", required=True, help="the emoe-agent binary")
    ap.add_argument("--up", required=True)
    ap.add_argument("--down", required=True)
    ap.add_argument("--clients", type=int, default=6)
    args = ap.parse_args()

    client = OpenAI(base_url=args.base_url, api_key="x", max_retries=0, timeout=120)

    models = client.models.list()
    ids = [m.id for m in models.data]
    check("models.list", len(ids) == 1, ids)
    model = ids[0]
    max_len = (models.data[0].model_extra or {}).get("max_model_len")
    check("models.list max_model_len", isinstance(max_len, int) and max_len > 0, max_len)

    # Completions, whole and streamed: the same greedy request gives the same text.
    prompt = "The quick brown fox"
    c = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
    whole = c.choices[0].text
    check("completion", c.object == "text_completion" and c.usage.completion_tokens >= 1,
          c.model_dump_json())
    streamed, usage = stream_completion(client, model, prompt, 12)
    check("completion stream == whole", streamed == whole, json.dumps([streamed, whole]))
    check("completion stream usage", usage == c.usage.completion_tokens,
          f"{usage} vs {c.usage.completion_tokens}")

    # Chat, whole and streamed.
    messages = [{"role": "user", "content": "Say something."}]
    ch = client.chat.completions.create(model=model, messages=messages, max_tokens=12,
                                        temperature=0)
    chat_text = ch.choices[0].message.content
    check("chat", ch.object == "chat.completion" and ch.choices[0].message.role == "assistant"
          and isinstance(chat_text, str), ch.model_dump_json())
    text, usage = "", None
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=12,
                                                stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    check("chat stream == whole", text == chat_text, json.dumps([text, chat_text]))
    check("chat stream usage", usage == ch.usage.completion_tokens,
          f"{usage} vs {ch.usage.completion_tokens}")

    # Log-probabilities: one per generated token, each at most 0, with the alternatives asked.
    lp = client.completions.create(model=model, prompt=prompt, max_tokens=6, logprobs=2,
                                   extra_body={"ignore_eos": True})
    l = lp.choices[0].logprobs
    check("completion logprobs",
          l is not None and len(l.tokens) == 6 and all(x <= 0 for x in l.token_logprobs)
          and all(len(t) <= 2 for t in l.top_logprobs), lp.model_dump_json())
    lc = client.chat.completions.create(model=model, messages=messages, max_tokens=6,
                                        logprobs=True, top_logprobs=2,
                                        extra_body={"ignore_eos": True})
    content = lc.choices[0].logprobs.content if lc.choices[0].logprobs else None
    check("chat logprobs",
          content is not None and len(content) == 6
          and all(t.logprob <= 0 and len(t.top_logprobs) <= 2 for t in content),
          lc.model_dump_json())

    # Errors, as the client raises them.
    expect_error("temperature 0.7 refused", openai.BadRequestError, 400,
                 lambda: client.completions.create(model=model, prompt="x", max_tokens=2,
                                                   temperature=0.7),
                 needle="temperature")
    expect_error("unknown model", openai.NotFoundError, 404,
                 lambda: client.completions.create(model="no-such-model", prompt="x",
                                                   max_tokens=2))
    too_long = [1] * (int(max_len or 4096) + 8)
    expect_error("prompt beyond the context", openai.APIStatusError, 413,
                 lambda: client.completions.create(model=model, prompt=too_long, max_tokens=2))

    # Concurrent streams through a scale up and back down.
    n = args.clients
    prompts = [f"Request {i}: tell me about the number {i * 7}." for i in range(n)]
    extra = {"ignore_eos": True}
    reference = [
        client.completions.create(model=model, prompt=p, max_tokens=24, temperature=0,
                                  extra_body=extra).choices[0].text
        for p in prompts
    ]
    stop = threading.Event()
    lock = threading.Lock()
    runs = []  # (client, start, end, ok, detail)

    def worker(i):
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                text, usage = stream_completion(client, model, prompts[i], 24, extra)
                ok = text == reference[i] and usage == 24
                detail = "" if ok else json.dumps([text, reference[i], usage])
            except Exception as e:  # noqa: BLE001 - a failed stream is the finding
                ok, detail = False, f"{type(e).__name__}: {e}"
            with lock:
                runs.append((i, t0, time.monotonic(), ok, detail))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    # Let every client get going before each step; wait on the streams done, bounded.
    def wait_for_runs(k):
        end = time.monotonic() + 60
        while time.monotonic() < end:
            with lock:
                if len(runs) >= k:
                    return
            time.sleep(0.05)

    wait_for_runs(n)
    steps = []
    for to in (args.up, args.down):
        rc, err, s0, s1 = scale(args.exe, args.agent, to)
        steps.append({"to": to, "rc": rc, "seconds": round(s1 - s0, 3), "stderr": err,
                      "window": (s0, s1)})
        check(f"scale to {to}", rc == 0, err)
        with lock:
            k = len(runs)
        wait_for_runs(k + n)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    check("stream clients ended", not any(t.is_alive() for t in threads))
    with lock:
        done = list(runs)
    failed = [r for r in done if not r[3]]
    check("streams through scaling: none failed", not failed and done,
          f"{len(failed)} of {len(done)}: {failed[:2]}")
    # The streams open while a step ran are the ones the test is about: each step needs some.
    for s in steps:
        s0, s1 = s.pop("window")
        s["streams_across"] = sum(1 for r in done if r[1] < s1 and r[2] > s0)
        check(f"streams open across the step to {s['to']}", s["streams_across"] > 0,
              s["streams_across"])

    summary = {
        "ok": all(c["ok"] for c in CHECKS),
        "checks": CHECKS,
        "streams": len(done),
        "streams_failed": len(failed),
        "steps": steps,
    }
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
