"""The bundled demo conversations: questions about Python answered from text every CPython ships with,
so that a chat fine-tune needs no file (`data=chat` with no `data.path`).

Three kinds, about 1,500 conversations in all, made the same way on every run of one Python version:
- each section of the pydoc topics (the corpus `data=pydoc` pretrains on): "Tell me about the "with"
  statement." answered with its paragraphs, "Go on." asking for the next;
- each method and attribute the pydoc topics define (`str.upper()`): "What does str.upper() do?";
- the public functions and classes of some well-known standard-library modules, from their docstrings
  (read with `ast`, nothing imported): "What does json.dumps do?", then "And json.loads?".

Each conversation's questions and answers hold at most CONVERSATION_CHARS characters and MAX_TURNS answers,
so that it fits the 128-token context of model=tiny with the pydoc tokenizer (the few that do not are
skipped); every fourth starts with a system prompt.
"""

from __future__ import annotations

import ast
import json
import re
import sysconfig
from pathlib import Path
from typing import Callable, Iterator

CONVERSATION_CHARS = 200
ANSWER_CHARS = (30, 150)  # shorter is a fragment ("Note:"); longer is cut after a sentence
MAX_TURNS = 3
SYSTEM_PROMPT = "You answer questions about Python from its documentation."
# (module, its file below the standard library's folder): os.path is posixpath's, on every platform.
MODULES = (
    ("os", "os.py"),
    ("os.path", "posixpath.py"),
    ("json", "json/__init__.py"),
    ("re", "re/__init__.py"),
    ("random", "random.py"),
    ("string", "string.py"),
    ("functools", "functools.py"),
    ("collections", "collections/__init__.py"),
    ("pathlib", "pathlib.py"),
    ("shutil", "shutil.py"),
    ("textwrap", "textwrap.py"),
    ("statistics", "statistics.py"),
    ("heapq", "heapq.py"),
    ("bisect", "bisect.py"),
    ("copy", "copy.py"),
    ("glob", "glob.py"),
    ("fnmatch", "fnmatch.py"),
    ("tempfile", "tempfile.py"),
    ("csv", "csv.py"),
    ("base64", "base64.py"),
    ("difflib", "difflib.py"),
    ("pprint", "pprint.py"),
    ("contextlib", "contextlib.py"),
    ("dataclasses", "dataclasses.py"),
    ("argparse", "argparse.py"),
    ("logging", "logging/__init__.py"),
    ("subprocess", "subprocess.py"),
    ("fractions", "fractions.py"),
    ("calendar", "calendar.py"),
    ("zipfile", "zipfile/__init__.py"),
    ("gzip", "gzip.py"),
    ("urllib.parse", "urllib/parse.py"),
    ("threading", "threading.py"),
    ("queue", "queue.py"),
    ("uuid", "uuid.py"),
    ("secrets", "secrets.py"),
    ("inspect", "inspect.py"),
    ("enum", "enum.py"),
    ("operator", "operator.py"),
    ("shlex", "shlex.py"),
    ("configparser", "configparser.py"),
    ("traceback", "traceback.py"),
    ("warnings", "warnings.py"),
    ("ipaddress", "ipaddress.py"),
    ("html", "html/__init__.py"),
    ("mimetypes", "mimetypes.py"),
    ("tokenize", "tokenize.py"),
    ("ast", "ast.py"),
    ("pickle", "pickle.py"),
    ("graphlib", "graphlib.py"),
    ("colorsys", "colorsys.py"),
    ("filecmp", "filecmp.py"),
    ("linecache", "linecache.py"),
    ("reprlib", "reprlib.py"),
    ("tarfile", "tarfile.py"),
    ("hashlib", "hashlib.py"),
    ("hmac", "hmac.py"),
    ("timeit", "timeit.py"),
    ("typing", "typing.py"),
    ("abc", "abc.py"),
    ("weakref", "weakref.py"),
    ("platform", "platform.py"),
    ("locale", "locale.py"),
    ("gettext", "gettext.py"),
    ("codecs", "codecs.py"),
    ("unittest", "unittest/case.py"),
    ("doctest", "doctest.py"),
    ("sched", "sched.py"),
    ("selectors", "selectors.py"),
    ("email.utils", "email/utils.py"),
    ("webbrowser", "webbrowser.py"),
    ("dis", "dis.py"),
    ("shelve", "shelve.py"),
    ("numbers", "numbers.py"),
    ("wave", "wave.py"),
    ("socket", "socket.py"),
    ("http.client", "http/client.py"),
    ("smtplib", "smtplib.py"),
    ("imaplib", "imaplib.py"),
    ("sysconfig", "sysconfig.py"),
    ("zipapp", "zipapp.py"),
    ("getopt", "getopt.py"),
    ("optparse", "optparse.py"),
    ("cmd", "cmd.py"),
    ("code", "code.py"),
    ("pdb", "pdb.py"),
    ("bdb", "bdb.py"),
    ("trace", "trace.py"),
    ("pstats", "pstats.py"),
    ("tracemalloc", "tracemalloc.py"),
    ("asyncio", "asyncio/tasks.py"),
    ("concurrent.futures", "concurrent/futures/_base.py"),
    ("multiprocessing", "multiprocessing/pool.py"),
    ("xml.dom.minidom", "xml/dom/minidom.py"),
    ("xml.etree.ElementTree", "xml/etree/ElementTree.py"),
)
UNDERLINE = re.compile(r"^([*=\-^~])\1{2,}$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")
DEFINITION = re.compile(r"^[A-Za-z_][\w.]*\(.*\)$|^[a-z_][\w.]*\.[a-z_]\w*$")  # `str.upper()`, `object.__slots__`
COMPLETE = re.compile(r"[.!?][\"')]?$")
PYDOC_QUESTIONS = ("Tell me about {}.", "What do you know about {}?", "Explain {}.")


def demo_jsonl() -> str:
    """The demo conversations as JSON Lines of OpenAI messages."""
    return "".join(json.dumps({"messages": messages}, ensure_ascii=False) + "\n" for messages in demo_conversations())


def demo_conversations() -> list[list[dict[str, str]]]:
    conversations = [*pydoc_conversations(), *definition_conversations(), *docstring_conversations()]
    system = {"role": "system", "content": SYSTEM_PROMPT}
    return [[system, *turns] if index % 4 == 3 else turns for index, turns in enumerate(conversations)]


def pydoc_conversations() -> Iterator[list[dict[str, str]]]:
    """A section's paragraphs, as many per conversation as fit: "Tell me about X.", then "Go on."."""
    from pydoc_data.topics import topics

    seen = set()
    for name in sorted(topics):
        for heading, paragraphs in _sections(topics[name]):
            answers = [answer for answer in (_cut(_prose(block)) for block in paragraphs) if answer]
            if not answers or (heading, answers[0]) in seen:
                continue
            seen.add((heading, answers[0]))
            subject = _in_sentence(heading)
            first = PYDOC_QUESTIONS[len(seen) % len(PYDOC_QUESTIONS)].format(subject)

            def question(turn: int, conversation: int, answer: str) -> str:
                if turn:
                    return "Go on."
                return f"What else is there to know about {subject}?" if conversation else first

            yield from _grouped(answers, question)


def definition_conversations() -> Iterator[list[dict[str, str]]]:
    """Each method or attribute the topics define, with its description: "What does str.upper() do?"."""
    from pydoc_data.topics import topics

    seen = set()
    for name in sorted(topics):
        blocks = topics[name].split("\n\n")
        for signature, description in zip(blocks, blocks[1:]):
            lines = description.split("\n")
            if "\n" in signature or not DEFINITION.match(signature) or signature in seen:
                continue
            if not all(line.startswith("   ") and not line.startswith("      ") for line in lines):
                continue
            answer = _cut(" ".join(description.split()))
            question = f"What does {signature} do?" if "(" in signature else f"What is {signature}?"
            if answer and len(question) + len(answer) <= CONVERSATION_CHARS:
                seen.add(signature)
                yield [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def docstring_conversations() -> Iterator[list[dict[str, str]]]:
    """A module's functions and classes, as many per conversation as fit: "What does json.dumps do?", then
    "And json.loads?"."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for module, file_name in MODULES:
        path = root / file_name
        if not path.is_file():
            continue
        entries = list(_documented(module, ast.parse(path.read_text(encoding="utf-8"))))
        answers = [answer for _, _, answer in entries]
        asked = {answer: (name, kind) for name, kind, answer in entries}

        def question(turn: int, conversation: int, answer: str) -> str:
            name, kind = asked[answer]
            if turn:
                return f"And {name}?"
            return f"What is {name}?" if kind == "class" else f"What does {name} do?"

        yield from _grouped(answers, question)


def _documented(module: str, tree: ast.Module) -> Iterator[tuple[str, str, str]]:
    """(qualified name, function or class, the first paragraph of its docstring) of a module's public names."""
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        children = node.body if kind == "class" else []
        for name, item, item_kind in [
            (f"{module}.{node.name}", node, kind),
            *[
                (f"{module}.{node.name}.{child.name}", child, "function")
                for child in children
                if isinstance(child, ast.FunctionDef) and not child.name.startswith("_")
            ],
        ]:
            docstring = ast.get_docstring(item)
            # reStructuredText's ``code`` quoted as the pydoc topics quote it: "code".
            answer = _cut(" ".join(docstring.split("\n\n")[0].replace("``", '"').split())) if docstring else None
            if answer:
                yield name, item_kind, answer


def _grouped(answers: list[str], question: Callable[[int, int, str], str]) -> Iterator[list[dict[str, str]]]:
    """Conversations of consecutive answers, as many per conversation as keep its text within
    CONVERSATION_CHARS, each asked by `question(turn, conversation, answer)` (turn and conversation
    counted from 0)."""
    turns: list[dict[str, str]] = []
    size = conversations = 0
    for answer in answers:
        asked = question(len(turns) // 2, conversations, answer)
        if turns and (size + len(asked) + len(answer) > CONVERSATION_CHARS or len(turns) == 2 * MAX_TURNS):
            yield turns
            turns, size, conversations = [], 0, conversations + 1
            asked = question(0, conversations, answer)
        if len(asked) + len(answer) > CONVERSATION_CHARS:
            continue  # too long even alone
        turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answer}]
        size += len(asked) + len(answer)
    if turns:
        yield turns


def _sections(text: str) -> Iterator[tuple[str, list[list[str]]]]:
    """A topic's sections: each heading (a line underlined with *, =, -) and its paragraphs' lines."""
    heading, paragraphs, block = None, [], []
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        underlined = index + 1 < len(lines) and UNDERLINE.match(lines[index + 1].strip())
        if underlined and line.strip() and not line.startswith(" "):
            if heading and (paragraphs or block):
                yield heading, [*paragraphs, block] if block else paragraphs
            heading, paragraphs, block = line.strip(), [], []
            index += 2
            continue
        if line.strip():
            block.append(line)
        elif block:
            paragraphs.append(block)
            block = []
        index += 1
    if heading and (paragraphs or block):
        yield heading, [*paragraphs, block] if block else paragraphs


def _prose(block: list[str]) -> str:
    """A paragraph of prose, its lines joined; "" for grammar, code and indented text, and for a
    paragraph that introduces code (it ends with a colon)."""
    if any(line.startswith(" ") or "::=" in line for line in block) or block[-1].rstrip().endswith(":"):
        return ""
    return " ".join(line.strip() for line in block)


def _cut(text: str) -> str:
    """`text`, or as many of its first sentences as fit ANSWER_CHARS; "" for a fragment or a first
    sentence too long."""
    shortest, longest = ANSWER_CHARS
    kept = ""
    for sentence in SENTENCE_END.split(text):
        if len(kept) + len(sentence) + 1 > longest:
            break
        kept = f"{kept} {sentence}".strip()
    # An answer is whole sentences: a paragraph that stops mid-sentence introduces code that is not kept.
    return kept if len(kept) >= shortest and COMPLETE.search(kept) else ""


def _in_sentence(heading: str) -> str:
    """A heading as the middle of a sentence: `The "with" statement` -> `the "with" statement`."""
    first, _, rest = heading.partition(" ")
    if first.istitle() and first.isalpha() and first not in ("Python", "Unicode"):
        return f"{first.lower()} {rest}".strip()
    return heading
