"""The README and docs/ as a newcomer uses them: every Python block runs as written (on the
embedded glyphs data), every ``mmnet`` / ``benchmarks/run.py`` / ``torchrun`` command line
parses with the real command-line parser, and a block that cannot run says why."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
from pathlib import Path
from typing import List, NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FRAMEWORKS = ("easyfsl", "learn2learn", "torchmeta")


class Block(NamedTuple):
    page: str
    line: int
    info: str
    text: str


def blocks() -> List[Block]:
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = re.match(r"^```(.*)$", lines[i])
            if m and m.group(1).strip():
                start, body = i + 1, []
                i += 1
                while i < len(lines) and lines[i] != "```":
                    body.append(lines[i])
                    i += 1
                found.append(Block(page.relative_to(REPO).as_posix(), start, m.group(1).strip(), "\n".join(body)))
            i += 1
    return found


def _id(b: Block) -> str:
    return f"{b.page}:{b.line}"


PYTHON = [b for b in blocks() if b.info.split()[0] == "python"]
RUNNABLE = [b for b in PYTHON if b.info == "python"]
SHELL = [b for b in blocks() if b.info.split()[0] in ("bash", "sh", "shell")]


def test_every_python_block_runs_or_says_why_not():
    assert RUNNABLE, "the README's examples are gone"
    for b in PYTHON:
        if b.info != "python":
            assert re.fullmatch(r"python no-run: \S.{9,}", b.info), f"{_id(b)}: tag a block 'python no-run: <reason>'"


@pytest.mark.parametrize("block", RUNNABLE, ids=_id)
def test_python_block_runs_as_written(block, monkeypatch, tmp_path):
    for name in FRAMEWORKS:
        if re.search(rf"^\s*(from|import) {name}\b", block.text, re.M):
            if os.environ.get("MMNET_REQUIRE_FRAMEWORKS") == "1":
                __import__(name)
            elif importlib.util.find_spec(name) is None:  # not imported here: torchmeta needs its patch first
                pytest.skip(f"{name} is not installed")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.text, _id(block), "exec"), {"__name__": "__main__"})


# ---------------------------------------------------------------- shell lines
def _commands(text: str) -> List[List[str]]:
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|\|\||;", line):
            words = shlex.split(part, comments=True)
            if words:
                out.append(words)
    return out


def _without_env(words: List[str]) -> List[str]:
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]  # VAR=value before the command
    return words


def _cli_argv(words: List[str]):
    """``("mmnet" | "bench", argv)`` for a command of ours, else ``None``."""
    words = _without_env(words)
    if not words:
        return None
    cmd, rest = Path(words[0]).name, words[1:]
    if cmd == "torchrun":
        if "-m" in rest:
            i = rest.index("-m")
            if rest[i + 1] != "mmnet_plugin":
                return None
            return "mmnet", rest[i + 2 :]
        scripts = [j for j, w in enumerate(rest) if w.endswith(".py")]
        return ("bench", rest[scripts[0] + 1 :]) if scripts and rest[scripts[0]].endswith("run.py") else None
    if cmd == "mmnet":
        return "mmnet", rest
    if cmd.startswith("python"):
        if rest[:2] == ["-m", "mmnet_plugin"]:
            return "mmnet", rest[2:]
        if rest[:1] == ["benchmarks/run.py"]:
            return "bench", rest[1:]
    return None


COMMANDS = [(b, words) for b in SHELL for words in _commands(b.text) if _cli_argv(words) is not None]


def test_the_docs_show_our_commands():
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("block,words", COMMANDS, ids=[f"{_id(b)}:{w[0]}" for b, w in COMMANDS])
def test_shell_command_parses_with_the_real_parser(block, words, monkeypatch):
    from mmnet_plugin.bench.cli import parse_args
    from mmnet_plugin.cli import build_parser

    monkeypatch.chdir(REPO)  # config files are named relative to the checkout
    for word in words[: len(words) - len(_without_env(words))]:
        if word.startswith("PYTHONPATH="):
            monkeypatch.syspath_prepend(str(REPO / word.split("=", 1)[1]))
    kind, argv = _cli_argv(words)
    if kind == "mmnet" and argv[:1] == ["bench"]:
        kind, argv = "bench", argv[1:]
    try:
        if kind == "bench":
            parse_args(argv)
        else:
            build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0:  # --help
            return
        pytest.fail(f"{_id(block)}: {shlex.join(words)} does not parse (exit {exc.code})")
