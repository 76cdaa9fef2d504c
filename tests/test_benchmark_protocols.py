"""GSM8K's and HumanEval's protocols (chapter 8) on small task files in the real formats,
with a scripted "model" whose completions are right, wrong, slow, raising or networking."""
import gzip
import itertools
import json
import math
import socket
import time

import pytest

from minigpt.evaluate import (final_number, load_gsm8k, load_humaneval, pass_at_k,
                              run_check, score_gsm8k, score_humaneval)


def write_jsonl(path, records):
    "One JSON object a line, gzipped when the name ends in .gz (as HumanEval ships)."
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f: f.write(text)
    else: path.write_text(text)
    return path


GSM_TRAIN = [{"question": "Ann has 2 cats and gets 3 more. How many cats?",
              "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
             {"question": "A pen costs $2. What do 4 pens cost?",
              "answer": "4 * 2 = <<4*2=8>>8\n#### 8"}]
GSM_TEST = [{"question": "Bo saves $1,000 a month for 2 months and earns 234 more. "
                         "How much does he have?",
             "answer": "1000 * 2 = <<1000*2=2000>>2000\n2000 + 234 = 2234\n#### 2,234"},
            {"question": "A cup of tea costs $3.50. What do 2 cups cost?",
             "answer": "2 * 3.5 = <<2*3.5=7>>7\n#### 7"},
            {"question": "It is 3 degrees and gets 8 degrees colder. What is it?",
             "answer": "3 - 8 = <<3-8=-5>>-5\n#### -5"},
            {"question": "Cy has 10 eggs and breaks 4. How many are left?",
             "answer": "10 - 4 = <<10-4=6>>6\n#### 6"}]
GSM_ANSWERS = {   # question -> the scripted completion
    GSM_TEST[0]["question"]: " He saves 2,000 and has 2,234.\n#### 2,234",           # right
    GSM_TEST[1]["question"]: " 2 * 3.50 = 7. The answer is $7.00.",                  # right
    GSM_TEST[2]["question"]: " 8 - 3 = 5 degrees.\n#### 5",                          # sign
    GSM_TEST[3]["question"]: " 10 - 4 = 6 eggs.\n\nQuestion: Di has 9 dogs and 1 cat."}  # cut


def test_gsm8k_exact_match_of_the_final_number(tmp_path):
    train = load_gsm8k(write_jsonl(tmp_path / "train.jsonl", GSM_TRAIN))
    test = load_gsm8k(write_jsonl(tmp_path / "test.jsonl.gz", GSM_TEST))
    prompts = []

    def model(prompt):
        prompts.append(prompt)
        return GSM_ANSWERS[prompt.rsplit("Question: ", 1)[1].split("\n")[0]]

    r = score_gsm8k(model, test, k_shot=2, shots=train)
    assert [x["predicted"] for x in r["results"]] == ["2234", "7", "5", "6"]
    assert [x["correct"] for x in r["results"]] == [True, True, False, True]
    assert r["exact_match"] == 3 / 4
    for p, t in zip(prompts, test):    # 2 solved training problems, then the question
        assert p.count("Question:") == 3 and "<<" not in p and "#### 8" in p
        assert p.endswith(f"Question: {t['question']}\nAnswer:")
    # the solved examples come from the training file, never from the test problems
    with pytest.raises(ValueError, match="needs 3 solved examples, and has 2"):
        score_gsm8k(model, test, k_shot=3, shots=train)
    with pytest.raises(ValueError, match="--shots"):
        score_gsm8k(model, test, k_shot=1)
    assert score_gsm8k(model, test, k_shot=0)["exact_match"] == 3 / 4   # zero-shot
    with pytest.raises(ValueError, match="no GSM8K problems"):
        score_gsm8k(model, [], k_shot=0)


def test_a_multi_paragraph_answer_is_not_cut_at_its_blank_line(tmp_path):
    test = load_gsm8k(write_jsonl(tmp_path / "test.jsonl", GSM_TEST[3:]))
    reasoning = " Cy had 10 eggs.\n\nHe broke 4 of them.\n\nSo 10 - 4 = 6.\n#### 6"
    r = score_gsm8k(lambda p: reasoning + "\n\nQuestion: more?", test, k_shot=0)
    assert r["results"][0]["completion"] == reasoning + "\n\n"
    assert r["exact_match"] == r["strict-match"] == 1.0


@pytest.mark.parametrize("text, number", [
    ("#### 1,234", "1234"), ("The answer is $3.50.", "3.5"), ("so 12 apples.", "12"),
    ("It is -$7 now", "-7"), ("3.0", "3"), ("between 3-4 hours", "4"),
    ("#### 18\nand then 7", "18"), ("nothing", None),
    # the cases: the last number of the marked sentence; no lower() offsets; no
    # number made of part of another
    ("The answer is that 3 bags of 5 apples make 15", "15"),
    ("İİİ the answer is 42. Check: 7", "42"), ("Total: 1,2345 dollars", "2345"),
    ("1,2,3", "3"), ("The answer is 7.5. Then 2", "7.5")])
def test_final_number(text, number):
    assert final_number(text) == number


def test_bad_and_missing_files_are_refused(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "?", "answer": "7"}])
    with pytest.raises(ValueError, match="#### <number>"): load_gsm8k(bad)
    with pytest.raises(FileNotFoundError, match="download the benchmark from https://"):
        load_humaneval(tmp_path / "HumanEval.jsonl.gz")
    half = write_jsonl(tmp_path / "half.jsonl", [{"task_id": "x", "prompt": "def f():"}])
    with pytest.raises(ValueError, match="entry_point"): load_humaneval(half)


def humaneval_task(name, doc, asserts):
    return {"task_id": f"Test/{name}", "entry_point": name,
            "prompt": f'def {name}(x):\n    """{doc}"""\n',
            "canonical_solution": "    return x\n",
            "test": "def check(candidate):\n" + "".join(f"    assert {a}\n" for a in asserts)}


def test_humaneval_outcomes_and_pass_at_k(tmp_path):
    tasks = load_humaneval(write_jsonl(tmp_path / "HumanEval.jsonl.gz", [
        humaneval_task("double", "2 * x.", ["candidate(2) == 4", "candidate(-1) == -2"]),
        humaneval_task("first", "The first item of x.", ["candidate([7, 8]) == 7"])]))
    with socket.socket() as server:         # a listener the networking sample aims at
        server.bind(("127.0.0.1", 0)); server.listen(); server.settimeout(0.5)
        port = server.getsockname()[1]
        bodies = {"double": ["return 2 * x", "return x + x", "return x * x",
                             "while True:\n        pass"],
                  "first": ["return x[1]", "raise ValueError('no idea')",
                            f"import socket\n    socket.create_connection(('127.0.0.1', {port}))",
                            "return x[0]"]}
        queue = {t["prompt"]: iter(bodies[t["entry_point"]]) for t in tasks}
        start = time.perf_counter()
        r = score_humaneval(lambda p: "    " + next(queue[p]) + "\nprint('extra')\n",
                            tasks, n_samples=4, k=(1, 2, 4), timeout=2)
        took = time.perf_counter() - start
        with pytest.raises(socket.timeout): server.accept()     # nothing connected
    double, first = r["results"]
    assert [s["outcome"] for s in double["samples"]] == ["passed", "passed", "failed", "timed out"]
    assert [s["outcome"] for s in first["samples"]] == ["failed", "failed", "failed", "passed"]
    errors = [s["error"] for s in first["samples"]]
    assert errors[0] == "AssertionError" and errors[1] == "ValueError: no idea"
    assert errors[2].startswith("PermissionError: sandbox refused socket.")
    assert all("print" not in s["completion"] for s in double["samples"])    # cut
    assert (double["correct"], first["correct"]) == (2, 1)
    assert double["pass@1"] == 0.5 and first["pass@1"] == 0.25
    assert math.isclose(double["pass@2"], 1 - math.comb(2, 2) / math.comb(4, 2))
    assert math.isclose(first["pass@2"], 1 - math.comb(3, 2) / math.comb(4, 2))
    assert double["pass@4"] == first["pass@4"] == 1.0
    assert math.isclose(r["pass@1"], (0.5 + 0.25) / 2)
    assert took < 10                        # the endless sample stopped at its limit
    with pytest.raises(ValueError, match="draw more samples"):
        score_humaneval(lambda p: "", tasks, n_samples=2, k=3)


def test_pass_at_k_is_the_share_of_k_subsets_with_a_pass():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                hit = sum(any(i < c for i in s) for s in subsets) / len(subsets)
                assert math.isclose(pass_at_k(n, c, k), hit, abs_tol=1e-12)
            assert math.isclose(pass_at_k(n, c, 1), c / n, abs_tol=1e-12)
    assert math.isclose(pass_at_k(200, 7, 100), 1 - math.comb(193, 100) / math.comb(200, 100))
    with pytest.raises(ValueError, match="draw more samples"): pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="0 <= c <= n"): pass_at_k(3, 4, 1)


ADD = {"task_id": "Test/add", "entry_point": "add",
       "prompt": 'def add(a, b):\n    """a + b"""\n', "canonical_solution": "    return a + b\n",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"
               "    assert candidate(-1, 1) == 0\n"}

# (name, completion of `add`, outcome, what the error says): hostile programs, each of which
# must neither pass nor reach outside its folder. {out}: a folder outside the sandbox
HOSTILE = [
    ("forges the token and exits 0", "    return 0\nimport __main__, os\n"
     "os.write(1, (__main__.token + '\\n').encode())\nos._exit(0)\n", "failed", "token"),
    ("prints 'passed' and exits 0", "    return 0\nimport os\nos.write(1, b'passed\\n')\n"
     "os._exit(0)\n", "failed", "exit status 0"),
    ("writes a fake answer to every descriptor", "    return 0\nimport os\n"
     "for fd in range(3, 64):\n    try: os.write(fd, b\"('value', 5)\\n\")\n"
     "    except OSError: pass\n", "failed", "answered before a call"),
    ("an object equal to everything", "    class Yes:\n        def __eq__(self, other): "
     "return True\n    return Yes()\n", "failed", "not plain data"),
    ("exits 0 at import", "    return a + b\nimport sys\nsys.exit(0)\n", "failed", "exited (0)"),
    ("exits 0 inside the call", "    import os\n    os._exit(0)\n", "failed", "exit status 0"),
    ("writes through dir_fd", "    return a + b\nimport os\nfd = os.open({out!r}, os.O_RDONLY)\n"
     "os.close(os.open('planted', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n", "failed",
     "sandbox refused reading"),
    ("writes outside", "    return a + b\nopen({out!r} + '/planted', 'w').write('x')\n",
     "failed", "outside its folder"),
    ("sqlite3 writes outside", "    return a + b\nimport sqlite3\n"
     "sqlite3.connect({out!r} + '/planted').execute('create table t (x)')\n", "failed",
     "sandbox refused"),
    ("fork_exec starts a shell", "    return a + b\nimport _posixsubprocess\n", "failed",
     "refused import _posixsubprocess"),
    ("subprocess", "    return a + b\nimport subprocess\nsubprocess.run(['true'])\n",
     "failed", "sandbox refused"),
    ("os.system", "    return a + b\nimport os\nos.system('touch ' + {out!r} + '/planted')\n",
     "failed", "sandbox refused os.system"),
    ("a fork bomb", "    return a + b\nimport os\nwhile True: os.fork()\n", "failed",
     "sandbox refused os.fork"),
    ("reads the parent's environment", "    return a + b\nimport os\n"
     "raise ValueError(open(f'/proc/{{os.getppid()}}/environ').read())\n", "failed",
     "sandbox refused reading /proc/"),
    ("reads a file outside", "    return a + b\nraise ValueError(open({secret!r}).read())\n",
     "failed", "sandbox refused reading"),
    ("switches the guard off", "    return a + b\nimport __main__\n__main__.REFUSED = ()\n"
     "__main__.CHANGES = ()\nopen({out!r} + '/planted', 'w').write('x')\n", "failed",
     "outside its folder"),
    ("patches os.path", "    return a + b\nimport os\nos.path.realpath = lambda p: '/tmp/x'\n"
     "os.path.abspath = lambda p: '/tmp/x'\nopen({out!r} + '/planted', 'w').write('x')\n",
     "failed", "outside its folder"),
    ("finds the hook with gc", "    return a + b\nimport gc\ngc.get_objects()\n", "failed",
     "sandbox refused gc.get_objects"),
    ("moves out of its folder", "    return a + b\nimport os\nos.chdir({out!r})\n", "failed",
     "sandbox refused os.chdir"),
    ("raises its limits", "    return a + b\nimport resource\n"
     "resource.setrlimit(resource.RLIMIT_CPU, (-1, -1))\n", "failed", "sandbox refused"),
    ("loops forever", "    while True:\n        pass\n", "timed out", "still running"),
    ("connects", "    import socket\n    socket.create_connection(('127.0.0.1', 9))\n",
     "failed", "sandbox refused socket"),
    # correct code that does odd things still passes
    ("prints without a newline", "    print('dbg', end='')\n    return a + b\n", "passed", ""),
    ("prints to stderr and writes its own folder", "    import sys\n    print('x', file=sys.stderr)"
     "\n    open('mine.txt', 'w').write('x')\n    return a + b\n", "passed", ""),
]


@pytest.mark.parametrize("name, completion, outcome, says", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_programs_neither_pass_nor_reach_out(tmp_path, monkeypatch, name, completion,
                                                     outcome, says):
    out, secret = tmp_path / "outside", tmp_path / "secret.txt"
    out.mkdir()
    secret.write_text("CANARY-file")
    monkeypatch.setenv("MINIGPT_CANARY", "CANARY-environ")       # the parent's environment
    r = run_check(ADD, completion.format(out=str(out), secret=str(secret)), timeout=2)
    assert r["outcome"] == outcome and says in r["error"], r
    assert list(out.iterdir()) == [], "a file was made outside the sandbox"
    assert "CANARY" not in r["error"]


def test_the_reference_solution_and_helpers_of_the_prompt_work(tmp_path):
    "The tests run in the parent with the prompt's helper functions, as HumanEval/38's do."
    task = {"task_id": "Test/decode", "entry_point": "decode",
            "prompt": "def encode(s):\n    return s[::-1]\n\n\ndef decode(s):\n"
                      "    \"\"\"The inverse of encode.\"\"\"\n",
            "canonical_solution": "    return s[::-1]\n",
            "test": "def check(candidate):\n    for s in ['abc', '', 'xy']:\n"
                    "        assert candidate(encode(s)) == s\n"}
    assert run_check(task, task["canonical_solution"])["outcome"] == "passed"
    assert run_check(task, "    return s\n")["outcome"] == "failed"
    bare = ADD | {"prompt": "def add(a, b):\n"}               # a signature without a docstring
    assert run_check(bare, "    return a + b\n")["outcome"] == "passed"


# completions a model writes, scored by lm-eval's own GSM8K filters and metric (read from the
# installed harness's task file) and by ours: each string must give the same verdicts
HARNESS_CASES = [
    ("#### 72", "#### 72"), ("so 72.\n#### 72", "#### 72"), ("#### 72.", "#### 72"),
    ("#### 1,234", "#### 1234"), ("#### $1,234", "#### 1234"), ("#### -5", "#### -5"),
    ("#### 72\n#### 73", "#### 73"), ("The answer is 72.", "#### 72"),
    ("The answer is $72.00.", "#### 72"), ("I think 70, no 72", "#### 72"),
    ("12 + 60 = 72 apples.", "#### 72"), ("nothing", "#### 0"), ("", "#### 0"),
    ("-3 and then 4", "#### 4"), ("####72", "#### 72"), ("#### 7.5", "#### 7.5"),
    ("#### 7.50", "#### 7.5"), ("3.5 hours, so 7", "#### 7"), ("#### 1.000", "#### 1000"),
    ("Total: 1,2345 dollars", "#### 12345"), ("x = 4. y = 5.", "#### 5"),
    ("THE ANSWER IS 9", "#### 9")]


def harness_gsm8k():
    "lm-eval's GSM8K filters (strict-match, flexible-extract) and exact-match arguments."
    lm_eval = pytest.importorskip("lm_eval")
    import yaml
    from pathlib import Path
    from lm_eval.filters.extraction import RegexFilter
    cfg = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    filters = {f["name"]: RegexFilter(regex_pattern=f["filter"][0]["regex_pattern"],
                                      group_select=f["filter"][0].get("group_select", 0))
               for f in cfg["filter_list"]}
    metric = {k: v for k, v in cfg["metric_list"][0].items()
              if k in ("regexes_to_ignore", "ignore_case", "ignore_punctuation")}
    return filters, metric


@pytest.mark.parametrize("completion, answer", HARNESS_CASES)
def test_harness_scores_equal_lm_eval_string_for_string(completion, answer):
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from minigpt.evaluate import harness_answer, harness_scores
    filters, metric = harness_gsm8k()
    ours = harness_scores(completion, answer)
    for name, f in filters.items():
        extracted = f.apply([[completion]], [{}])[0][0]
        assert harness_answer(completion, name) == extracted, name
        theirs = exact_match_hf_evaluate([extracted], [answer], **metric)["exact_match"]
        assert ours[name] == bool(theirs), (name, extracted)
