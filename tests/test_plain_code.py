"""The package reads plainly: one statement per line. No `;` joins statements, and no
compound statement (`if`, `for`, `while`, `with`, `try`, `except`, `else`, `finally`,
`def`, `class`...) keeps its body on its header's line. Python's own tokenizer and parser
decide, so a `;` or a `:` inside a string or a comment, a lambda, a slice or an
annotation is no statement; the checker is itself tested on small snippets."""
import ast
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p for p in (ROOT / "minigpt").glob("*.py") if p.name != "_modidx.py")
LOGICAL_END = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)


def statement_lists(tree: ast.AST):
    "Every non-empty list of statements: a module's, a body, an `else`, a `finally`..."
    for node in ast.walk(tree):
        for _, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                yield value


def crowded_lines(src: str) -> list[tuple[int, str]]:
    "Where `src` puts more than one statement on a line: (line, what), in order."
    tokens = list(tokenize.generate_tokens(io.StringIO(src).readline))
    at = {tok.start: i for i, tok in enumerate(tokens)}
    found = [(t.start[0], "';' joins statements") for t in tokens
             if t.type == tokenize.OP and t.string == ";"]
    lines = src.splitlines()
    for stmts in statement_lists(ast.parse(src)):
        first = stmts[0]
        col = len(lines[first.lineno - 1].encode()[:first.col_offset].decode())  # bytes
        i = at[(first.lineno, col)]
        if i and tokens[i - 1].type == tokenize.OP and tokens[i - 1].string == ":":
            head = i - 1                       # back to where the header begins
            while head and tokens[head - 1].type not in LOGICAL_END:
                head -= 1
            while tokens[head].type in (tokenize.NL, tokenize.COMMENT):
                head += 1
            found.append((first.lineno, f"a one-line `{tokens[head].string}`"))
    return sorted(found)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_one_statement_per_line(module):
    found = crowded_lines(module.read_text(encoding="utf-8"))
    assert not found, "\n".join(f"minigpt/{module.name}:{n}: {what}" for n, what in found)


def test_the_modules_are_there():
    assert len(MODULES) > 10 and ROOT / "minigpt" / "model.py" in MODULES


@pytest.mark.parametrize("src, line, what", [
    ("a = 1; b = 2\n", 1, "';' joins statements"),
    ("x = 1\nprint(x);\n", 2, "';' joins statements"),
    ("if x: y = 1\n", 1, "a one-line `if`"),
    ("if x:\n    y = 1\nelif z: y = 2\n", 3, "a one-line `elif`"),
    ("if x:\n    y = 1\nelse: y = 2\n", 3, "a one-line `else`"),
    ("for a in b: f(a)\n", 1, "a one-line `for`"),
    ("while c: c -= 1\n", 1, "a one-line `while`"),
    ("with x as y: z(y)\n", 1, "a one-line `with`"),
    ("def f(): return 1\n", 1, "a one-line `def`"),
    ("async def f() -> int: return 1\n", 1, "a one-line `async`"),
    ("class A: pass\n", 1, "a one-line `class`"),
    ("try: import x\nexcept ImportError:\n    x = None\n", 1, "a one-line `try`"),
    ("try:\n    import x\nexcept ImportError: x = None\n", 3, "a one-line `except`"),
    ("try:\n    f()\nfinally: g()\n", 3, "a one-line `finally`"),
    ("if (a and\n        b): c()\n", 2, "a one-line `if`"),
    ("if a: \\\n    b()\n", 2, "a one-line `if`"),
    ("def f():\n    for i in x:\n        if i: yield i\n", 3, "a one-line `if`"),
    ("if s == 'é': y = 1\n", 1, "a one-line `if`"),     # columns in bytes and in characters
])
def test_the_checker_finds_each_kind(src, line, what):
    assert (line, what) in crowded_lines(src)


def test_the_checker_counts_every_statement():
    src = "if x: a(); b()\nelse: c()\n"
    assert crowded_lines(src) == [(1, "';' joins statements"), (1, "a one-line `if`"),
                                  (2, "a one-line `else`")]


@pytest.mark.parametrize("src", [
    's = "a; b"\nt = \'if x: y\'\n',                # in strings
    'doc = """\nif x: y; z\n"""\n',                 # in a multi-line string
    "x = 1   # if x: y; z\n",                       # in a comment
    "f = lambda v: v + 1\n",                        # a lambda's colon
    "d = {'k': 1}\ns = a[1:2]\nn: int = 3\n",      # dict, slice, annotation
    "print(f'{x:>8}; {y!r:^3}')\n",                 # an f-string's format spec
    "if x:   # why\n    y = 1\nelse:\n    y = 2\n",  # a comment on the header
    "def f(x: int = 1) -> int:\n    return x\n",
])
def test_the_checker_passes_plain_code(src):
    assert crowded_lines(src) == []
