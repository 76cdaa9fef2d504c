"""`minigpt serve` as a user runs it: a subprocess on a free loopback port, called with the
official `openai` client, by eight clients at once, with bad requests, and from Chromium."""
import codecs
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
from minigpt.common import free_port    # noqa: E402 (after the skips)

BIN = Path(sys.executable).parent / "minigpt"
SMALL = ["--set", "n_layer=1", "--set", "d_model=64", "--set", "n_head=2",
         "--seq-len", "64", "--batch-size", "4", "--precision", "fp32"]
PROMPT = "ROMEO:\n"


def minigpt(*args, **kw):
    r = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True,
                       timeout=600, **kw)
    return r


def ok(r):
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "A tiny pretrained run and its SFT (chat) run, through the command line."
    tmp = tmp_path_factory.mktemp("serve")
    ok(minigpt("prepare", "--corpus", "shakespeare", "--vocab-size", "512",
               "--out", tmp / "data"))
    ok(minigpt("train", "--data", tmp / "data", "--out", tmp / "base", "--max-steps", 2,
               "--eval-every", 2, *SMALL))
    ok(minigpt("tasks", "--out", tmp / "tasks", "--examples", 16, "--heldout", 4))
    ok(minigpt("sft", "--run", tmp / "base", "--data", tmp / "tasks" / "sft.jsonl",
               "--out", tmp / "chat", "--steps", 2, "--batch-size", 2))
    return tmp / "base", tmp / "chat"


def start_server(run, port):
    p = subprocess.Popen([str(BIN), "serve", "--run", str(run), "--port", str(port),
                          "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if p.poll() is not None:
            raise AssertionError(f"minigpt serve exited: {p.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return p
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise AssertionError("minigpt serve did not start in 120 s")


@pytest.fixture(scope="module")
def server(runs):
    "`minigpt serve` of the chat run: (base URL, run)."
    port = free_port()
    p = start_server(runs[1], port)
    yield f"http://127.0.0.1:{port}", runs[1]
    p.terminate()
    p.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0)


def post(url, path, body, raw=False):
    "POST to the server without a client library: (status, parsed JSON body)."
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", path, body if raw else json.dumps(body),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def test_models_lists_the_run(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [server[1].name]
    assert models[0].chat is True


def test_completions_equal_minigpt_generate_at_temperature_0(client, server):
    ask = dict(model=server[1].name, prompt=PROMPT, max_tokens=12, temperature=0)
    whole = client.completions.create(**ask)
    streamed = "".join(c.choices[0].text for c in client.completions.create(**ask, stream=True))
    out = ok(minigpt("generate", "--run", server[1], "--prompt", PROMPT, "--max-new-tokens", 12,
                     "--temperature", 0, "--no-stream", "--device", "cpu"))
    assert out == PROMPT + whole.choices[0].text + "\n"
    assert streamed == whole.choices[0].text
    u = whole.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and u.prompt_tokens >= 1
    if whole.choices[0].finish_reason == "length":
        assert u.completion_tokens == 12


def test_sampling_with_a_seed_is_repeatable_and_stop_cuts(client, server):
    ask = dict(model=server[1].name, prompt=PROMPT, max_tokens=20, temperature=1.0,
               top_p=0.9, seed=7)
    a = client.completions.create(**ask).choices[0].text
    b = "".join(c.choices[0].text for c in client.completions.create(**ask, stream=True))
    assert a == b
    out = ok(minigpt("generate", "--run", server[1], "--prompt", PROMPT, "--max-new-tokens", 20,
                     "--temperature", 1.0, "--top-p", 0.9, "--seed", 7, "--device", "cpu"))
    assert out == PROMPT + a + "\n"
    if len(a) > 2:                    # a stop string from inside the text cuts it there
        stop = a[len(a) // 2:len(a) // 2 + 2]
        r = client.completions.create(**ask, stop=[stop, "never"])
        assert r.choices[0].text == a[:a.find(stop)]
        assert r.choices[0].finish_reason == "stop"


def test_chat_streamed_equals_whole_and_usage(client, server):
    ask = dict(model=server[1].name, messages=[
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Who speaks these lines? Answer ROMEO or JULIET."}],
        max_tokens=10, temperature=0)
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(
        **ask, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
        whole.choices[0].finish_reason
    # the reference: the chat template of chapter 9 and chapter 7's stream, in-process
    from minigpt.checkpoint import load_run
    from minigpt.common import CHAT_TOKENS
    from minigpt.finetune import chat_ids
    from minigpt.generate import SamplingConfig, stream
    model, tok = load_run(server[1], device="cpu")
    ids = chat_ids(tok, ["Answer briefly.\n\nWho speaks these lines? Answer ROMEO or JULIET."])
    assert whole.usage.prompt_tokens == len(ids)
    cfg = SamplingConfig(max_new_tokens=10, temperature=0, stop=CHAT_TOKENS)
    assert text == "".join(stream(model, tok, ids, cfg))


def test_ignore_eos_runs_to_max_tokens_with_the_end_tokens_banned(client, server):
    from minigpt.checkpoint import load_run
    from minigpt.device import autocast, choose_precision
    from minigpt.generate import SamplingConfig, decode_steps
    from minigpt.common import CHAT_TOKENS, ENDOFTEXT, PAD
    ask = dict(model=server[1].name, prompt=PROMPT, max_tokens=12, temperature=0,
               extra_body={"ignore_eos": True})
    whole = client.completions.create(**ask)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12
    # the reference: greedy decoding with padding and every end token banned (the
    # end of text, and the role tokens a chat reply stops at), in the server's precision
    model, tok = load_run(server[1], device="cpu")
    banned = tuple(tok.special_tokens[s] for s in (PAD, ENDOFTEXT) + CHAT_TOKENS)
    device = next(model.parameters()).device
    with autocast(device, choose_precision(device)):
        steps = decode_steps(model, [tok.encode(PROMPT)],
                             SamplingConfig(max_new_tokens=12, temperature=0), True,
                             tok.vocab_size, banned)
        ids = [int(nxt[0]) for nxt, _ in steps]
    assert whole.choices[0].text == tok.decode(ids)
    for seed in range(4):        # sampled chat answers: none ends by itself
        r = client.chat.completions.create(
            model=server[1].name, messages=[{"role": "user", "content": "And then?"}],
            max_tokens=40, temperature=1.0, seed=seed, extra_body={"ignore_eos": True})
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == 40
        assert "<|end" not in r.choices[0].message.content
    got, answer = post(server[0], "/v1/completions", {"prompt": "x", "ignore_eos": 1})
    assert got == 400 and answer["error"]["param"] == "ignore_eos"


def test_eight_clients_at_once_get_their_own_answers(client, server):
    ask = lambda seed: dict(model=server[1].name, prompt=PROMPT, max_tokens=16,
                            temperature=1.0, seed=seed)
    alone = [client.completions.create(**ask(s)).choices[0].text for s in range(8)]
    assert len(set(alone)) > 1

    def one(seed):
        if seed % 2:     # half of them stream
            return "".join(c.choices[0].text
                           for c in client.completions.create(**ask(seed), stream=True))
        return client.completions.create(**ask(seed)).choices[0].text
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(8)))
    print(f"8 concurrent clients: {time.perf_counter() - start:.2f} s")
    assert together == alone


BAD = [  # (path, body, status, param)
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": "warm"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"prompt": "ROMEO " * 600}, 400, "prompt"),
    ("/v1/completions", {"prompt": [10 ** 9]}, 400, "prompt"),
    ("/v1/completions", {"prompt": {"text": "x"}}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x"}]},
     400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x " * 600}]},
     400, "messages"),
    ("/v1/completions", [1, 2], 400, None),
    # numbers JSON has not, or no JSON int64 holds; flags that must be true or false
    ("/v1/completions", '{"prompt": "x", "temperature": NaN}', 400, None),
    ("/v1/completions", '{"prompt": "x", "top_p": NaN}', 400, None),
    ("/v1/completions", '{"prompt": "x", "temperature": 1e999}', 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "seed": 2 ** 70}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "seed": -1}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "stream": True, "stream_options": "x"}, 400,
     "stream_options"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": [True]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, 400, "stop"),
    # bounded work: no more tokens than --max-tokens, no prompt past the context untokenized
    ("/v1/completions", {"prompt": "x", "max_tokens": 10 ** 12}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 4097}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "thethe" * 2700}, 400, "prompt"),
]


@pytest.mark.parametrize("path, body, status, param", BAD)
def test_bad_request_gets_an_openai_error_and_the_server_goes_on(server, client, path, body,
                                                                 status, param):
    got, answer = post(server[0], path, body, raw=isinstance(body, str))
    assert got == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["param"] == param and answer["error"]["message"]
    assert client.completions.create(model=server[1].name, prompt="x", max_tokens=1)


def test_malformed_json_and_unknown_paths(server, client):
    status, answer = post(server[0], "/v1/completions", "{not json", raw=True)
    assert status == 400 and answer["error"]["code"] == "invalid_json"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=server[1].name, prompt="x", temperature=9)
    status, answer = post(server[0], "/v1/embeddings", {"input": "x"})
    assert status == 404 and "error" in answer


def test_a_run_without_chat_template_serves_completions_and_refuses_chat(runs):
    from minigpt.serve import Engine, Server, create_app
    with Server(create_app(Engine(runs[0], device="cpu"))) as s:
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="-", max_retries=0)
        assert c.models.list().data[0].chat is False
        c.completions.create(model=runs[0].name, prompt=PROMPT, max_tokens=3)
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            c.chat.completions.create(model=runs[0].name,
                                      messages=[{"role": "user", "content": "hi"}])


def test_port_in_use_and_missing_packages_are_one_line(runs, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); s.listen()
        r = minigpt("serve", "--run", runs[0], "--port", s.getsockname()[1])
    assert r.returncode == 1 and "cannot listen on 127.0.0.1" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "fastapi.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'fastapi'\", name='fastapi')\n")
    import os
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = minigpt("serve", "--run", runs[0], env=env)
    # the packages by name: the index's `minigpt` is another project
    assert r.returncode == 1 and 'pip install "fastapi>=' in r.stderr, r.stderr
    assert "uvicorn" in r.stderr and "minigpt[" not in r.stderr, r.stderr


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="no chromium binary on this machine "
                    "(apt-get install -y chromium; .ci/run installs it)")
def test_chat_page_streams_and_stops_in_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium())
        page = browser.new_page()
        page.set_default_timeout(120_000)        # a busy 2-core machine is slow
        page.goto(server[0])
        page.wait_for_function("document.getElementById('model').textContent"
                               ".includes('chat')")
        page.fill("#max_tokens", "12")
        page.fill("#prompt", "Who speaks these lines? Answer ROMEO or JULIET.")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('.msg').length == 2"
                               " && !document.getElementById('send').disabled")
        first = page.inner_text(".assistant")
        assert "error" not in page.get_attribute(".msg:nth-child(2)", "class")
        # a long answer: it grows while streaming, and Stop ends it. The tiny model
        # often ends a turn by itself within a few tokens, so the page's next
        # request gets ignore_eos on the way: an answer that only Stop can end
        def without_end(route):
            body = route.request.post_data_json
            route.continue_(post_data=json.dumps(body | {"ignore_eos": True}))
        page.route("**/v1/chat/completions", without_end)
        page.fill("#max_tokens", "4096")     # the most a request may ask for
        page.fill("#temperature", "1")
        page.fill("#prompt", "And then?")
        page.click("#send")
        answer = ".msg:nth-child(4)"
        page.wait_for_function(f"document.querySelector('{answer}')"
                               ".textContent.length > 0")
        n1 = len(page.inner_text(answer))
        page.wait_for_function(f"document.querySelector('{answer}')"
                               f".textContent.length > {n1}")
        page.click("#stop")
        page.wait_for_function("!document.getElementById('send').disabled")
        assert "stopped" in page.get_attribute(answer, "class")
        stopped = page.inner_text(answer)
        time.sleep(0.5)
        assert page.inner_text(answer) == stopped          # nothing more arrives
        page.screenshot(path=tmp_path / "chat.png")
        browser.close()
    assert (tmp_path / "chat.png").stat().st_size > 1000
    assert first is not None
    # the server is free again at once: the stopped generation did not go on
    start = time.perf_counter()
    status, answer = post(server[0], "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert status == 200 and time.perf_counter() - start < 10


def request(url, method, path, body=None, headers=None, timeout=120):
    "A raw request: (status, headers, body text); any method, any headers."
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), r.read().decode()


def test_departed_clients_a_long_prompt_and_a_huge_body_leave_a_small_request_fast(server):
    """The load test: 30 clients ask for 4,096 tokens each and leave after a second, a
    16 KB one-word prompt and a 50 MB body arrive; a small request still answers in a second."""
    url, run = server
    def leaver(k):
        try:
            request(url, "POST", "/v1/completions",
                    {"prompt": PROMPT, "max_tokens": 4096, "ignore_eos": True, "seed": k},
                    timeout=1)
        except (TimeoutError, OSError):
            return "left"
        return "answered"
    with ThreadPoolExecutor(32) as pool:
        left = list(pool.map(leaver, range(30)))
        assert left.count("left") >= 25        # they asked for more than a second of work
        long_prompt = pool.submit(request, url, "POST", "/v1/completions",
                                  {"prompt": "thethe" * 2700, "max_tokens": 1})
        start = time.perf_counter()
        huge = pool.submit(request, url, "POST", "/v1/completions",
                           b'{"prompt": "' + b"a" * 50_000_000 + b'"}')
        status, _, body = huge.result()
        assert status == 413 and "body_too_large" in body
        assert time.perf_counter() - start < 5        # refused as it came, not parsed
        status, _, body = long_prompt.result()
        assert status == 400 and "context_length_exceeded" in body
    time.sleep(0.5)         # the departed clients' disconnects are noticed (every 0.2 s)
    start = time.perf_counter()
    status, _, body = request(url, "POST", "/v1/completions",
                              {"prompt": PROMPT, "max_tokens": 5, "temperature": 0})
    took = time.perf_counter() - start
    print(f"a small request after 30 departed clients: {took:.3f} s")
    assert status == 200 and took < 1, (status, took)


def test_the_prompt_bound_refuses_only_prompts_too_long_for_any_tokenization(runs):
    "check_prompt_size: a prompt of `block * longest` bytes may fit; one byte more cannot."
    from minigpt.serve import APIError, Engine, check_prompt_size
    engine = Engine(runs[1], device="cpu")
    block, longest = engine.model.cfg.block_size, engine.longest
    assert longest == max(len(b) for b in engine.tok.vocab.values() if b)
    check_prompt_size(engine, {"prompt": "x" * (block * longest)}, False)
    with pytest.raises(APIError, match="context window"):
        check_prompt_size(engine, {"prompt": "x" * (block * longest + 1)}, False)
    check_prompt_size(engine, {"prompt": [0] * block}, False)     # token ids: counted
    with pytest.raises(APIError, match="context window"):
        check_prompt_size(engine, {"prompt": [0] * (block + 1)}, False)
    with pytest.raises(APIError, match="context window"):
        check_prompt_size(engine, {"messages": [{"role": "user", "content": "é" * (
            block * longest // 2 + 1)}]}, True)


@pytest.fixture(scope="module")
def keyed(runs):
    "`minigpt serve --api-key` of the chat run, with one page allowed from elsewhere."
    port = free_port()
    p = subprocess.Popen([str(BIN), "serve", "--run", str(runs[1]), "--port", str(port),
                          "--device", "cpu", "--api-key", "s3cret",
                          "--allow-origin", "http://notebook.example:8888"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert p.poll() is None and time.time() < deadline, p.stderr.read()
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}", runs[1]
    p.terminate()
    p.wait(timeout=30)


def test_api_key_is_checked_as_openai_clients_send_it(keyed):
    url, run = keyed
    good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
    assert good.completions.create(model=run.name, prompt="x", max_tokens=2).choices
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        bad.models.list()
    status, _, body = request(url, "POST", "/v1/completions", {"prompt": "x"})
    assert status == 401 and json.loads(body)["error"]["code"] == "access_denied"
    status, _, _ = request(url, "GET", "/")          # the page itself asks for the key
    assert status == 200


FOREIGN = [  # (headers, why): each refused with 403 on a loopback server without a key
    ({"Origin": "http://evil.example"}, "a page elsewhere drives the server"),
    ({"Origin": "http://evil.example", "Content-Type": "text/plain"}, "a simple POST"),
    ({"Host": "evil.example"}, "DNS rebinding: the page's own name"),
    ({"Host": "evil.example", "Origin": "http://evil.example"}, "rebinding, same-origin"),
    ({"Host": "127.0.0.1.evil.example:80"}, "a name that begins like loopback"),
]


@pytest.mark.parametrize("headers, why", FOREIGN)
def test_foreign_origins_and_hosts_are_refused(server, headers, why):
    url, _ = server
    status, _, body = request(url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1},
                              headers=headers)
    assert status == 403 and json.loads(body)["error"]["code"] == "access_denied", why
    status, _, _ = request(url, "OPTIONS", "/v1/completions", headers={
        **headers, "Access-Control-Request-Method": "POST"})
    assert status == 403, why


def test_the_server_own_page_and_an_allowed_origin_pass(server, keyed):
    url, _ = server
    port = url.rsplit(":", 1)[1]
    for own in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        status, _, _ = request(url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1},
                               headers={"Origin": own, "Host": own.removeprefix("http://")})
        assert status == 200, own
    url, _ = keyed
    allowed = "http://notebook.example:8888"
    status, headers, _ = request(url, "OPTIONS", "/v1/chat/completions", headers={
        "Origin": allowed, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 200 and headers["access-control-allow-origin"] == allowed
    status, headers, _ = request(url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1},
                                 headers={"Origin": allowed, "Authorization": "Bearer s3cret"})
    assert status == 200 and headers["access-control-allow-origin"] == allowed


def test_a_server_on_the_network_needs_a_key_and_bad_ports_are_one_line(runs):
    r = minigpt("serve", "--run", runs[0], "--host", "0.0.0.0")
    assert r.returncode == 1 and "--api-key" in r.stderr and "Traceback" not in r.stderr
    for port in (70000, -1, 0):
        r = minigpt("serve", "--run", runs[0], "--port", port)
        assert r.returncode == 1 and "1 to 65535" in r.stderr, r.stderr
    r = minigpt("serve", "--run", runs[0], "--max-tokens", 0)
    assert r.returncode == 1 and "--max-tokens" in r.stderr, r.stderr
    r = minigpt("serve", "--run", runs[0], "--max-batch", 0)
    assert r.returncode == 1 and "--max-batch" in r.stderr, r.stderr


def test_chat_says_when_the_conversation_outgrows_the_context(runs):
    "minigpt chat with a 3,000-character line: refused in a note, and the chat goes on."
    r = subprocess.run([str(BIN), "chat", "--run", str(runs[1]), "--device", "cpu",
                        "--max-new-tokens", "3"], input="word " * 600 + "\nhi\n\n",
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "context window leaves for it; shorten it" in r.stderr, r.stderr
    assert r.stdout.count("model>") == 1           # the short line is answered
    r = subprocess.run([str(BIN), "chat", "--run", str(runs[0]), "--device", "cpu"],
                       input="hi\n", capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "not fine-tuned" in r.stderr


@pytest.mark.skipif(chromium() is None, reason="no chromium binary on this machine "
                    "(apt-get install -y chromium; .ci/run installs it)")
def test_chat_page_survives_a_conversation_longer_than_the_context(server):
    "The page stops sending the oldest exchanges, greys them out and says so; no error."
    sync_api = pytest.importorskip("playwright.sync_api")
    from minigpt.checkpoint import load_run
    model, tok = load_run(server[1], device="cpu")
    block = model.cfg.block_size
    line = "But soft, what light through yonder window breaks? "
    message = line * max(1, int(0.4 * block / len(tok.encode(line))))   # 40% of the window
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium())
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(server[0])
        page.wait_for_function("document.getElementById('model').textContent"
                               ".includes('chat')")
        page.fill("#max_tokens", "8")
        for k in range(4):                       # 4 x 40%: the window overflows twice
            page.fill("#prompt", f"{k}. {message}")
            page.click("#send")
            page.wait_for_function(f"document.querySelectorAll('.msg').length == {2 * k + 2}"
                                   " && !document.getElementById('send').disabled")
        errors = page.query_selector_all(".error")
        forgotten = page.eval_on_selector_all(".forgotten", "els => els.map(e => e.textContent)")
        note = page.inner_text(".note")
        browser.close()
    assert not errors
    assert len(forgotten) >= 2 and len(forgotten) % 2 == 0 and forgotten[0].startswith("0. ")
    assert not any(f.startswith("3. ") for f in forgotten)    # the newest is always sent
    assert f"context window holds {block} tokens" in note and str(len(forgotten)) in note
# Continuous batching, logprobs and refused fields, on tiny runs with random weights, in this
# process (fp32, so that rounding cannot tip a greedy choice between two engines).

def random_run(path, chat=False, **settings):
    "A run directory: a tiny GPT with random weights and a byte-level tokenizer."
    import torch
    from minigpt.checkpoint import save_weights
    from minigpt.common import CHAT_TOKENS
    from minigpt.model import GPT, GPTConfig
    from minigpt.tokenizer import SPECIAL_TOKENS, BPETokenizer, save_tokenizer
    tok = BPETokenizer.from_merges([], specials=SPECIAL_TOKENS + (CHAT_TOKENS if chat else ()))
    torch.manual_seed(0)
    model = GPT(GPTConfig(**(dict(vocab_size=tok.vocab_size, block_size=64, n_layer=2,
                                  n_head=2, d_model=32) | settings)))
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": model.cfg.to_dict()}))
    save_tokenizer(tok, path / "tokenizer.json")
    save_weights(model, path / "best.safetensors")
    return path, model, tok


def replies(engine, requests, stagger=0.0):
    "Each (ids, cfg) answered by `engine`, all at once, request k joining after k * stagger s."
    import asyncio
    from minigpt.serve import Reply

    async def one(k, ids, cfg):
        await asyncio.sleep(k * stagger)
        reply = Reply()
        streamed = "".join([p async for p in engine.stream(ids, cfg, reply)])
        assert streamed == reply.text
        return reply

    async def every():
        return await asyncio.gather(*(one(k, *r) for k, r in enumerate(requests)))
    return asyncio.run(every())


@pytest.mark.parametrize("block_size", [64, 16])    # 16: the replies slide the window
def test_batched_replies_equal_each_reply_alone(tmp_path, block_size):
    from minigpt.generate import Continuation, stream
    from minigpt.serve import Engine, ServeConfig
    run, _, _ = random_run(tmp_path / "run", block_size=block_size)
    greedy = lambda n: ServeConfig(max_new_tokens=n, temperature=0, stop_at_eot=False)
    requests = [([65 + k] * (1 + 4 * k), greedy(12 + 9 * k)) for k in range(5)]
    requests += [([70, 71], ServeConfig(max_new_tokens=30, temperature=0.9, seed=3, top_k=20,
                                        repetition_penalty=1.3, ignore_eos=True))]
    alone, batching = (Engine(run, device="cpu", precision="fp32", max_batch=m) for m in (1, 8))
    for stagger in (0.0, 0.02):
        together = replies(batching, requests, stagger)
        assert [r.tokens for r in together] == [c.max_new_tokens for _, c in requests]
        assert together == replies(alone, requests, stagger)
    for (ids, cfg), reply in zip(requests, together):       # chapter 7's stream, unchanged
        banned = (256,) if cfg.ignore_eos else ()
        out = Continuation()
        list(stream(batching.model, batching.tok, ids, cfg, banned=banned, out=out))
        assert out.text == reply.text
    if block_size == 16:
        assert max(len(ids) + c.max_new_tokens for ids, c in requests) > 2 * block_size


def test_a_cancelled_request_leaves_the_batch_and_the_others_go_on(tmp_path):
    import asyncio
    from minigpt.serve import Engine, Reply, ServeConfig
    run, _, _ = random_run(tmp_path / "run")
    engine = Engine(run, device="cpu", precision="fp32", max_batch=4)
    cfg = ServeConfig(max_new_tokens=4096, temperature=0, ignore_eos=True)

    async def main():
        long, short = Reply(), Reply()
        task = asyncio.ensure_future(engine.complete([65], cfg))
        await asyncio.sleep(0.3)
        task.cancel()
        small = await engine.complete([66], ServeConfig(max_new_tokens=5, temperature=0))
        await asyncio.sleep(0.3)     # the worker has noticed: the batch is empty again
        return small
    small = asyncio.run(main())
    assert small.tokens == 5
    assert engine.waiting.empty()


def test_logprobs_are_those_of_the_model(tmp_path):
    "Completions and chat, whole and streamed: each token's log-probability as computed here."
    import torch
    from minigpt.common import CHAT_TOKENS, ENDOFTEXT, PAD
    from minigpt.finetune import chat_ids
    from minigpt.serve import Engine, Server, create_app
    run, model, tok = random_run(tmp_path / "run", chat=True)
    model.eval()
    banned = [tok.special_tokens[s] for s in (ENDOFTEXT, PAD) + CHAT_TOKENS]  # ignore_eos: ends
    id_of = {b: i for i, b in tok.vocab.items()}

    def log_probs(ids, temperature=1.0, top_k=None):
        "The log-probabilities (V,) of the token after `ids`, computed directly."
        with torch.no_grad():
            z = model(torch.tensor([ids]))[0][0, -1, :tok.vocab_size].float()
        z[banned] = float("-inf")
        z = z / temperature
        if top_k:
            z = z.masked_fill(z < z.topk(top_k).values[-1], float("-inf"))
        return torch.log_softmax(z, -1)

    def text(i):         # OpenAI's way to write a token that is not UTF-8 on its own
        b = tok.decode_bytes([i])
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{x:02x}" for x in b)
    decoded = lambda ids: codecs.getincrementaldecoder("utf-8")("replace").decode(
        tok.decode_bytes(ids))        # the text of ids, an unfinished character held back
    engine = Engine(run, device="cpu", precision="fp32")
    with Server(create_app(engine)) as s:
        ask = {"prompt": "Hi", "max_tokens": 8, "temperature": 0, "logprobs": 3,
               "ignore_eos": True}
        status, whole = post(s.url, "/v1/completions", ask)
        assert status == 200, whole
        lp, ids = whole["choices"][0]["logprobs"], tok.encode("Hi")
        for k in range(8):                        # greedy, one token at a time
            want = log_probs(ids)
            best = want.topk(3)
            i = best.indices[0].item()
            assert lp["tokens"][k] == text(i)
            assert lp["token_logprobs"][k] == pytest.approx(want[i].item(), abs=1e-4)
            assert list(lp["top_logprobs"][k]) == [text(j) for j in best.indices.tolist()]
            assert list(lp["top_logprobs"][k].values()) == pytest.approx(
                best.values.tolist(), abs=1e-4)
            ids.append(i)
        n = len(tok.encode("Hi"))
        assert lp["text_offset"] == [len(decoded(ids[n:n + k])) for k in range(8)]
        assert whole["choices"][0]["text"] == decoded(ids[n:])

        ask = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "seed": 1,
               "temperature": 0.7, "logprobs": True, "top_logprobs": 5}
        status, whole = post(s.url, "/v1/chat/completions",
                             ask | {"top_k": 4, "ignore_eos": True})
        content, ids = whole["choices"][0]["logprobs"]["content"], chat_ids(tok, ["Hi"])
        assert len(content) == 6
        for c in content:
            want, i = log_probs(ids, 0.7, 4), id_of[bytes(c["bytes"])]
            assert c["logprob"] == pytest.approx(want[i].item(), abs=1e-4)
            assert len(c["top_logprobs"]) == 4         # top_k: the others cannot be drawn
            assert [a["logprob"] for a in c["top_logprobs"]] == pytest.approx(
                want.topk(4).values.tolist(), abs=1e-4)
            ids.append(i)
        r = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x").chat.completions.create(
            model=engine.name, stream=True, **ask, extra_body={"top_k": 4, "ignore_eos": True})
        streamed = [t for chunk in r if chunk.choices and chunk.choices[0].logprobs
                    for t in chunk.choices[0].logprobs.content]
        assert [t.model_dump() for t in streamed] == content


REFUSED = [("/v1/completions", {"frequency_penalty": 0.5}, "frequency_penalty"),
           ("/v1/completions", {"presence_penalty": -1}, "presence_penalty"),
           ("/v1/completions", {"logit_bias": {"65": 5}}, "logit_bias"),
           ("/v1/completions", {"best_of": 2}, "best_of"),
           ("/v1/completions", {"echo": True}, "echo"),
           ("/v1/completions", {"suffix": "end"}, "suffix"),
           ("/v1/completions", {"logprobs": 6}, "logprobs"),
           ("/v1/completions", {"logprobs": True}, "logprobs"),
           ("/v1/chat/completions", {"tools": [{"type": "function"}]}, "tools"),
           ("/v1/chat/completions", {"response_format": {"type": "json_object"}},
            "response_format"),
           ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
           ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
           ("/v1/chat/completions", {"logprobs": 2}, "logprobs")]


def test_fields_not_implemented_are_refused_unless_at_their_defaults(tmp_path):
    from minigpt.serve import Engine, Server, create_app
    run, _, _ = random_run(tmp_path / "run", chat=True)
    with Server(create_app(Engine(run, device="cpu", precision="fp32"))) as s:
        ask = lambda path: ({"prompt": "x"} if "chat" not in path else
                            {"messages": [{"role": "user", "content": "x"}]}) | {
            "max_tokens": 2}
        for path, fields, name in REFUSED:
            status, answer = post(s.url, path, ask(path) | fields)
            assert status == 400 and answer["error"]["param"] == name, answer
            assert name in answer["error"]["message"]
        defaults = {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {},
                    "best_of": 1, "echo": False, "user": "me", "logprobs": None}
        status, answer = post(s.url, "/v1/completions", ask("") | defaults)
        assert status == 200 and answer["choices"][0]["logprobs"] is None
        status, answer = post(s.url, "/v1/chat/completions", ask("chat") | {
            "response_format": {"type": "text"}, "tools": [], "logprobs": False})
        assert status == 200, answer


def test_a_chat_reply_stops_at_any_role_token(tmp_path):
    "A model that always writes <|user|> (its last layer's output points at that token)."
    import torch
    from minigpt.checkpoint import save_weights
    from minigpt.common import CHAT_TOKENS, USER
    from minigpt.serve import Engine, Server, create_app
    run, model, tok = random_run(tmp_path / "run", chat=True, tie_weights=False)
    with torch.no_grad():
        model.norm_f.weight.zero_()
        model.norm_f.bias.normal_()
        model.lm_head.weight[tok.special_tokens[USER]] = 100 * model.norm_f.bias
    save_weights(model, run / "best.safetensors")
    with Server(create_app(Engine(run, device="cpu", precision="fp32"))) as s:
        status, r = post(s.url, "/v1/completions", {"prompt": "Hi", "max_tokens": 3})
        assert r["choices"][0]["text"] == USER * 3         # a completion writes it
        status, r = post(s.url, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        c = r["choices"][0]
        assert c["finish_reason"] == "stop" and c["message"]["content"] == ""
        assert r["usage"]["completion_tokens"] == 1
    assert USER in CHAT_TOKENS
