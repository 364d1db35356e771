"""Every relative link and every command of the README, the CHANGELOG and docs/ points at
something that exists.

Links: each ``[text](target)`` that is not a URL names an existing file or folder, relative to the
page, and a ``#anchor`` names a heading of the target page (GitHub's slugs). Commands: in each
fenced ``bash``/``sh``/``shell``/``console`` block, ``python3 tools/X.py`` names an existing tool
and only flags that the tool's ``--help`` lists, ``python3 -m M`` an importable module, every
argument under ``configs/``, ``tools/``, ``tests/``, ``docs/`` or ``fpn_plugin/`` an existing path,
and ``make T`` a target of the Makefile. The checker is tested on a page with one mistake of each
kind.
"""

import glob
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

from tests.conftest import REPO

REPO_DIRS = ("configs/", "tools/", "tests/", "docs/", "fpn_plugin/")
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
PLACEHOLDER = re.compile(r"[<>*?{}$]|\.\.\.|…")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")


def doc_pages(repo: str = REPO) -> List[str]:
    """README.md, CHANGELOG.md and docs/*.md of ``repo`` (those that exist)."""
    pages = [os.path.join(repo, name) for name in ("README.md", "CHANGELOG.md")]
    pages += sorted(glob.glob(os.path.join(repo, "docs", "*.md")))
    return [p for p in pages if os.path.isfile(p)]


def split_fences(text: str) -> Tuple[List[Tuple[int, str]], List[Tuple[str, int, str]]]:
    """(prose lines as (line number, text), fenced blocks as (language, first line, body))."""
    prose, blocks = [], []
    fence, language, start, body = None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, language, start, body = match.group(1), match.group(2).lower(), number + 1, []
        elif fence is not None and line.strip().startswith(fence):
            blocks.append((language, start, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        else:
            prose.append((number, line))
    return prose, blocks


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text in lower case, punctuation dropped
    (letters, digits, ``_`` and ``-`` kept), spaces as ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: str) -> Set[str]:
    """The anchors of the headings of the Markdown file ``path`` (duplicates get -1, -2, ...)."""
    with open(path, encoding="utf-8") as f:
        prose, _ = split_fences(f.read())
    seen: Dict[str, int] = {}
    result = set()
    for _, line in prose:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def check_links(page: str) -> List[str]:
    """Problems with the relative links of ``page``, one message each."""
    with open(page, encoding="utf-8") as f:
        prose, _ = split_fences(f.read())
    problems = []
    for number, line in prose:
        line = re.sub(r"`[^`]*`", "", line)  # code spans hold no links
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            where = f"{os.path.relpath(page, REPO)}:{number}: ({target})"
            path, _, anchor = target.partition("#")
            file = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(file):
                problems.append(f"{where} {path} does not exist")
            elif anchor and (not file.endswith(".md") or anchor not in anchors(file)):
                problems.append(f"{where} no heading #{anchor} in {os.path.relpath(file, REPO)}")
    return problems


def commands(page: str) -> Iterator[Tuple[str, List[str]]]:
    """Every command of the shell blocks of ``page``: (where, its words without environment
    assignments), continuation lines joined and comments dropped."""
    with open(page, encoding="utf-8") as f:
        _, blocks = split_fences(f.read())
    for language, start, body in blocks:
        if language not in SHELL_LANGUAGES:
            continue
        for offset, line in enumerate(re.sub(r"\\\n", " ", body).splitlines()):
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            try:
                words = list(lexer)
            except ValueError as e:
                yield f"{os.path.relpath(page, REPO)}:{start + offset}", ["<unparsable>", str(e)]
                continue
            command: List[str] = []
            for word in words + [";"]:
                if word in SEPARATORS:
                    while command and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", command[0]):
                        command.pop(0)
                    if command:
                        yield f"{os.path.relpath(page, REPO)}:{start + offset}", command
                    command = []
                else:
                    command.append(word)


def make_targets(repo: str = REPO) -> Set[str]:
    with open(os.path.join(repo, "Makefile"), encoding="utf-8") as f:
        return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", f.read(), flags=re.M))


def tool_of(words: List[str]) -> Optional[str]:
    """``tools/X.py`` when ``words`` runs a tool with Python, else None."""
    if words and re.match(r"^python(3(\.\d+)?)?$", os.path.basename(words[0])):
        scripts = [w for w in words[1:] if w.endswith(".py") and not w.startswith("-")]
        if scripts and scripts[0].startswith("tools/"):
            return scripts[0]
    return None


def check_command(where: str, words: List[str], repo: str = REPO) -> List[str]:
    """Problems with one command of a page (files, modules, make targets; not flags)."""
    if words[0] == "<unparsable>":
        return [f"{where}: cannot parse the command ({words[1]})"]
    problems = []
    text = " ".join(words)
    if words[0] == "make":
        targets = make_targets(repo)
        for word in words[1:]:
            if not word.startswith("-") and "=" not in word and word not in targets:
                problems.append(f"{where}: make has no target {word!r} ({text})")
    if re.match(r"^python(3(\.\d+)?)?$", os.path.basename(words[0])) and "-m" in words:
        module = words[words.index("-m") + 1]
        if module not in ("pip", "pytest") and importlib.util.find_spec(module) is None:
            problems.append(f"{where}: no module {module} ({text})")
    for word in words[1:]:
        value = word.split("=", 1)[1] if word.startswith("-") and "=" in word else word
        if value.startswith(REPO_DIRS) and not PLACEHOLDER.search(value):
            if not os.path.exists(os.path.join(repo, value)):
                problems.append(f"{where}: {value} does not exist ({text})")
    return problems


def flags_of(words: List[str]) -> Set[str]:
    """The ``--flags`` a tool command passes (before any ``--opts``' KEY VALUE pairs too)."""
    return {w.split("=", 1)[0] for w in words if re.match(r"^--[A-Za-z]", w)}


HELP_SCRIPT = r"""
import contextlib, io, json, os, runpy, sys
repo = sys.argv[1]
sys.path.insert(0, os.path.join(repo, "tools"))  # as when a tool runs: its folder first
out = {}
for tool in sys.argv[2:]:
    buffer = io.StringIO()
    sys.argv = [tool, "--help"]
    try:
        with contextlib.redirect_stdout(buffer):
            runpy.run_path(os.path.join(repo, tool), run_name="__main__")
    except SystemExit:
        pass
    except Exception as e:  # reported as the tool's help
        buffer.write(f"<--help failed: {e!r}>")
    out[tool] = buffer.getvalue()
print("HELP-JSON" + json.dumps(out))
"""


def tool_help(tools: List[str], repo: str = REPO) -> Dict[str, str]:
    """Each tool's ``--help`` text, from one Python process (the imports shared)."""
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, repo, *tools],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
        timeout=600,
    )
    marker = result.stdout.rfind("HELP-JSON")
    assert marker >= 0, result.stderr[-3000:]
    return json.loads(result.stdout[marker + len("HELP-JSON") :])


def check_flags(uses: List[Tuple[str, str, Set[str]]], helps: Dict[str, str]) -> List[str]:
    """Problems where a page passes a tool a flag its ``--help`` does not list."""
    problems = []
    for where, tool, flags in uses:
        text = helps.get(tool, "")
        for flag in sorted(flags):
            if not re.search(re.escape(flag) + r"(?![\w-])", text):
                problems.append(f"{where}: {tool} has no flag {flag}")
    return problems


def tool_uses(pages: List[str], repo: str = REPO) -> List[Tuple[str, str, Set[str]]]:
    """(where, tool, flags) for every tool command of ``pages`` whose tool exists."""
    uses = []
    for page in pages:
        for where, words in commands(page):
            tool = tool_of(words)
            if tool and os.path.isfile(os.path.join(repo, tool)):
                uses.append((where, tool, flags_of(words)))
    return uses


# --- the checks on this checkout -------------------------------------------------------------


def test_the_pages_are_found():
    names = [os.path.relpath(p, REPO) for p in doc_pages()]
    assert "README.md" in names and "CHANGELOG.md" in names
    assert "docs/performance.md" in names and "docs/gpu.md" in names


def test_every_relative_link_resolves():
    problems = [p for page in doc_pages() for p in check_links(page)]
    assert not problems, "\n".join(problems)


def test_every_command_names_existing_things():
    found = [(where, words) for page in doc_pages() for where, words in commands(page)]
    assert len(found) > 20  # the pages' commands are found at all
    problems = [p for where, words in found for p in check_command(where, words)]
    assert not problems, "\n".join(problems)


def test_every_flag_given_to_a_tool_is_in_its_help():
    uses = tool_uses(doc_pages())
    assert len({tool for _, tool, _ in uses}) >= 5
    helps = tool_help(sorted({tool for _, tool, _ in uses}))
    problems = check_flags(uses, helps)
    assert not problems, "\n".join(problems)


def test_performance_page_stays_short():
    assert os.path.getsize(os.path.join(REPO, "docs", "performance.md")) <= 10 * 1024


# --- the checker on a page with one mistake of each kind -------------------------------------


BAD_PAGE = """# A page

## Modes: `MODEL.ACCEL` and more

[fine](other.md#its-heading) [fine too](#modes-modelaccel-and-more) [web](https://example.com)
[missing file](nowhere.md) [missing anchor](other.md#no-such-heading) [self](#nothing-here)
`[in code](nowhere_in_code.md)`

```bash
python3 tools/ok_tool.py --config-file configs/ok.yaml --fine 1
python3 tools/missing_tool.py --config-file configs/missing.yaml
make ok-target && make no-such-target VAR=1
FOO=1 python3 -m no_such_module_anywhere --x
python3 tools/ok_tool.py --config-file configs/<your>.yaml --unknown-flag \\
    --opts MODEL.X 1
```

```python
python3 tools/not_checked_in_python_blocks.py
```
"""


@pytest.fixture
def bad_repo(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "tools").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(BAD_PAGE, encoding="utf-8")
    (tmp_path / "docs" / "other.md").write_text("# Its heading\n", encoding="utf-8")
    (tmp_path / "tools" / "ok_tool.py").write_text(
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--config-file')\n"
        "p.add_argument('--fine')\np.add_argument('--opts', nargs='*')\np.parse_args()\n"
    )
    (tmp_path / "configs" / "ok.yaml").write_text("{}\n")
    (tmp_path / "Makefile").write_text("ok-target:\n\techo ok\nVAR := 1\n")
    return str(tmp_path)


def test_the_checker_finds_each_kind_of_mistake(bad_repo):
    page = os.path.join(bad_repo, "docs", "page.md")
    links = check_links(page)
    assert len(links) == 3, links
    assert "nowhere.md does not exist" in links[0]
    assert "no heading #no-such-heading in" in links[1]
    assert "no heading #nothing-here" in links[2]

    found = list(commands(page))
    assert [words[0] for _, words in found] == ["python3", "python3", "make", "make", "python3"] + [
        "python3"
    ]
    problems = [p for where, words in found for p in check_command(where, words, repo=bad_repo)]
    assert len(problems) == 4, problems
    assert "tools/missing_tool.py does not exist" in problems[0]
    assert "configs/missing.yaml does not exist" in problems[1]
    assert "make has no target 'no-such-target'" in problems[2]
    assert "no module no_such_module_anywhere" in problems[3]

    uses = tool_uses([page], repo=bad_repo)
    assert [(tool, sorted(flags)) for _, tool, flags in uses] == [
        ("tools/ok_tool.py", ["--config-file", "--fine"]),
        ("tools/ok_tool.py", ["--config-file", "--opts", "--unknown-flag"]),
    ]
    helps = tool_help(["tools/ok_tool.py"], repo=bad_repo)
    assert "--fine" in helps["tools/ok_tool.py"]
    problems = check_flags(uses, helps)
    assert len(problems) == 1 and "has no flag --unknown-flag" in problems[0], problems


def test_github_slugs():
    assert github_slug("How the model is run: `MODEL.ACCEL`") == "how-the-model-is-run-modelaccel"
    assert github_slug("The RoI pooler: exact by default") == "the-roi-pooler-exact-by-default"
    assert github_slug("0.2.0 (2026-11-28, commits a to b)") == "020-2026-11-28-commits-a-to-b"
    assert github_slug("Detectron2 ↔ fpn_plugin: a swap") == "detectron2--fpn_plugin-a-swap"
