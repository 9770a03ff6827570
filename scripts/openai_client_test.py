#!/usr/bin/env python3
"""The real `openai` Python client (scripts/requirements-ci.txt) against `lion serve`'s chat API.

Starts `lion serve --preset tiny --random-weights --init-seed 1 --ram-random tiny --ram-init-seed 1 --addr 127.0.0.1:0` (loopback,
bounded by --timeout), then checks with `openai.OpenAI(base_url=...)`: the model list, caption /
VQA / grounding by task inference and by the `lion` extension, streaming (role delta, content,
finish reason, usage chunk, the same text as without streaming), n best beams, seeded sampling
(same seed same text, n samples), tags given by the client, file:// under --image-root, usage
counts, and the OpenAI error shape (422, 400, unsupported fields). Each answer is compared with
the LION endpoint (/v1/caption, /v1/vqa, /v1/ground) for the same image and options.

    PY=$(scripts/venv-ci.sh); $PY scripts/openai_client_test.py --lion target/debug/lion
"""

import argparse
import os
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Checks, Server, data_url, default_paths, png  # noqa: E402

import openai  # noqa: E402


def image_msg(url, text=None):
    content = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lion, minilm = default_paths(root)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lion", default=lion, help="the lion binary")
    ap.add_argument("--embed-model", default=minilm)
    ap.add_argument("--timeout", type=int, default=600, help="whole run, seconds")
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"timed out after {args.timeout} s"))
    signal.alarm(args.timeout)

    c = Checks("openai client test")
    picture = png(64, 48, box=(10, 8, 40, 30))
    url = data_url(picture)
    with tempfile.TemporaryDirectory() as images, Server(
            args.lion, args.embed_model, ["--image-root", images, "--max-new-tokens", "32"]) as srv:
        with open(os.path.join(images, "picture.png"), "wb") as f:
            f.write(picture)
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0,
                               timeout=120)
        print(f"openai {openai.__version__} against {srv.base}")

        ids = [m.id for m in client.models.list().data]
        c.equal(ids, ["lion"], "GET /v1/models")

        # caption (no text), against /v1/caption with the same options
        r = client.chat.completions.create(model="lion", messages=image_msg(url), max_tokens=8)
        c.equal(r.object, "chat.completion", "object")
        c.equal(r.choices[0].message.role, "assistant", "role")
        c.equal(r.model_extra["lion"]["task"], "caption", "inferred task (no text)")
        _, direct = srv.post_form("/v1/caption", {"max_new_tokens": 8}, picture)
        c.equal(r.choices[0].message.content, direct["caption"], "caption = /v1/caption")
        u = r.usage
        c.check(u.prompt_tokens > 0 and 1 <= u.completion_tokens <= 8, f"usage {u}")
        c.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens, "total_tokens")
        c.check(r.choices[0].finish_reason in ("stop", "length"), "finish_reason")
        c.equal(r.choices[0].finish_reason == "length", u.completion_tokens == 8,
                "finish_reason length iff max_tokens used up (random weights rarely say </s>)")

        # VQA inferred from the question mark, not streamed and streamed
        q = "what colour is the box?"
        r = client.chat.completions.create(model="lion", messages=image_msg(url, q), max_tokens=6)
        c.equal(r.model_extra["lion"]["task"], "vqa", "inferred task (question mark)")
        _, direct = srv.post_form("/v1/vqa", {"question": q, "max_new_tokens": 6}, picture)
        c.equal(r.choices[0].message.content, direct["answer"], "answer = /v1/vqa")
        chunks = list(client.chat.completions.create(
            model="lion", messages=image_msg(url, q), max_tokens=6, stream=True,
            stream_options={"include_usage": True}))
        c.check(len(chunks) >= 4, f"{len(chunks)} chunks")
        c.equal(chunks[0].object, "chat.completion.chunk", "chunk object")
        c.equal(chunks[0].choices[0].delta.role, "assistant", "first delta: role")
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        c.equal(text, r.choices[0].message.content, "streamed text = non-streamed text")
        finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices
                  and ch.choices[0].finish_reason]
        c.equal(finals, [r.choices[0].finish_reason], "one finish_reason, the same")
        c.check(chunks[-1].usage is not None and not chunks[-1].choices, "last chunk: usage")
        c.equal(chunks[-1].usage.completion_tokens, r.usage.completion_tokens, "streamed usage")

        # grounding inferred from "where is", with the box in the lion extension
        r = client.chat.completions.create(model="lion",
                                           messages=image_msg(url, "Where is the red box?"))
        lx = r.model_extra["lion"]
        c.equal((lx["task"], lx["input"]), ("ground", "the red box"), "inferred grounding")
        _, direct = srv.post_form("/v1/ground", {"expression": "the red box"}, picture)
        c.equal(r.choices[0].message.content, direct["text"], "ground text = /v1/ground")
        c.equal(lx["boxes"][0]["bbox"], direct["bbox"], "ground box = /v1/ground")

        # explicit task and tags through extra_body; the tags reach the prompt: other tokens
        r = client.chat.completions.create(
            model="lion", messages=image_msg(url, "a dog"), max_tokens=6,
            extra_body={"lion": {"task": "vqa", "tags": [{"tag": "dog", "score": 0.9}]}})
        c.equal(r.model_extra["lion"]["task"], "vqa", "explicit task")
        _, direct = srv.post_json("/v1/vqa", {"image": url.split(",", 1)[1], "question": "a dog",
                                              "max_new_tokens": 6,
                                              "tags": [{"tag": "dog", "score": 0.9}]})
        c.equal(r.choices[0].message.content, direct["answer"], "given tags = /v1/vqa with tags")
        many = [{"tag": f"tag{i}", "score": 0.5} for i in range(12)]
        r2 = client.chat.completions.create(
            model="lion", messages=image_msg(url, "a dog"), max_tokens=6,
            extra_body={"lion": {"task": "vqa", "tags": many}})
        c.check(r2.usage.prompt_tokens > r.usage.prompt_tokens,
                f"more tags, longer prompt ({r2.usage.prompt_tokens} vs {r.usage.prompt_tokens})")

        # n best beams
        r = client.chat.completions.create(model="lion", messages=image_msg(url), max_tokens=8,
                                           n=3)
        c.equal([ch.index for ch in r.choices], [0, 1, 2], "n=3 beams: 3 choices")
        c.equal(r.model_extra["lion"]["num_beams"], 5, "beams (LION's 5 >= n)")

        # seeded sampling
        def sample(seed, n=1):
            return client.chat.completions.create(
                model="lion", messages=image_msg(url), max_tokens=12, temperature=1.0,
                top_p=0.95, seed=seed, n=n, extra_body={"lion": {"min_new_tokens": 12}})
        a, b = sample(7), sample(7)
        c.equal(a.choices[0].message.content, b.choices[0].message.content, "same seed")
        c.equal(a.model_extra["lion"]["seed"], 7, "seed reported")
        others = {sample(s).choices[0].message.content for s in (8, 9, 10)}
        c.check(others != {a.choices[0].message.content}, "other seeds, other texts")
        three = sample(7, n=3)
        c.equal(three.choices[0].message.content, a.choices[0].message.content,
                "sample 0 of n=3 = the single sample")
        c.equal(three.usage.completion_tokens, 36, "usage sums the n samples")
        # sampling streams word by word: several content deltas joining to the same text
        streamed = list(client.chat.completions.create(
            model="lion", messages=image_msg(url), max_tokens=12, temperature=1.0, top_p=0.95,
            seed=7, stream=True, extra_body={"lion": {"min_new_tokens": 12}}))
        pieces = [ch.choices[0].delta.content for ch in streamed
                  if ch.choices and ch.choices[0].delta.content]
        c.equal("".join(pieces), a.choices[0].message.content, "streamed sample = the sample")
        spaces = a.choices[0].message.content.strip().count(" ")
        c.check(len(pieces) >= min(spaces, 2) + 1,
                f"{len(pieces)} content deltas for {spaces + 1} words: streamed as generated")
        s = client.chat.completions.create(model="lion", messages=image_msg(url), max_tokens=4,
                                           temperature=0.8)
        c.check(isinstance(s.model_extra["lion"]["seed"], int), "a fresh seed when none given")

        # file:// under the image root
        r = client.chat.completions.create(
            model="lion", max_tokens=8,
            messages=image_msg("file://" + os.path.join(images, "picture.png")))
        _, direct = srv.post_form("/v1/caption", {"max_new_tokens": 8}, picture)
        c.equal(r.choices[0].message.content, direct["caption"], "file:// image")

        # errors in the OpenAI shape
        def error(what, **kw):
            try:
                client.chat.completions.create(model="lion", **kw)
            except openai.APIStatusError as e:
                return e.status_code, e.body or {}
            c.check(False, f"{what}: no error")
            return None, {}

        st, body = error("n too big", messages=image_msg(url), n=99)
        c.equal(st, 422, "n=99 status")
        c.check("`n`" in body.get("message", ""), f"n=99 message: {body}")
        c.equal(body.get("type"), "invalid_request_error", "error type")
        st, body = error("no image", messages=[{"role": "user", "content": "hello"}])
        c.check(st == 422 and "no image" in body.get("message", ""), f"no image: {st} {body}")
        st, body = error("outside the root", messages=image_msg("file:///etc/hostname"))
        c.check(st == 400 and "image root" in body.get("message", ""), f"file://: {st} {body}")
        st, body = error("http off", messages=image_msg("http://127.0.0.1:9/x.png"))
        c.check(st == 400 and "allow-http-images" in body.get("message", ""), f"http: {body}")
        st, body = error("stop", messages=image_msg(url), stop=["\n"])
        c.check(st == 422 and "`stop`" in body.get("message", ""), f"stop: {st} {body}")
        st, body = error("bad image", messages=image_msg("data:image/png;base64,AAAA"))
        c.equal(st, 400, f"undecodable image: {body}")
        st, body = error("beams with sampling", messages=image_msg(url), temperature=1,
                         extra_body={"lion": {"num_beams": 3}})
        c.check(st == 422 and "num_beams" in body.get("message", ""), f"beams: {st} {body}")
    c.finish()


if __name__ == "__main__":
    main()
