"""`builtin:pystdlib`: instruction -> docstring pairs from the running Python's standard library.

Present on every machine, no download, and naturally split into topic families, which makes it the default
non-IID data set: one family per client with `partition = "by-domain"`.

Why a curated module list instead of walking `sys.stdlib_module_names`: importing every module has side effects
(`this` prints, `antigravity` opens a browser, `tkinter` needs a display) and families must be chosen anyway.
Modules missing from this Python (removed in newer versions, or not built) are skipped, so the set is
deterministic for a given Python version, not across versions.

The examples are built in a fresh isolated interpreter (`python -I -S this_file.py`): libraries loaded in the
calling process patch the standard library (torch replaces `inspect.getfile`, transformers adds
`logging.Logger.warning_once`), which would make the data set depend on what happened to be imported. That also
keeps ~150 stdlib imports out of the training process.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import subprocess
import sys
import warnings

SOURCE_NAME = "pystdlib"

# Exactly four families so that the default config (4 clients, by-domain) works out of the box.
FAMILIES: dict[str, list[str]] = {
    # Text processing, encodings and text file formats.
    "text": [
        "string",
        "re",
        "textwrap",
        "difflib",
        "unicodedata",
        "codecs",
        "locale",
        "gettext",
        "shlex",
        "fnmatch",
        "pprint",
        "reprlib",
        "tokenize",
        "json",
        "csv",
        "configparser",
        "tomllib",
        "base64",
        "binascii",
        "quopri",
        "html",
        "html.parser",
        "html.entities",
        "xml.etree.ElementTree",
        "xml.dom.minidom",
        "xml.dom.pulldom",
        "xml.sax",
        "xml.sax.saxutils",
        "xml.sax.handler",
        "xml.sax.xmlreader",
        "plistlib",
        "argparse",
        "optparse",
        "cmd",
    ],
    # Data types, containers, numbers, dates, algorithms, serialization and compression; the core language
    # (builtins and the language-reference topics of `pydoc_data.topics`) belongs here too.
    "data": [
        "builtins",
        "pydoc_data.topics",
        "collections",
        "collections.abc",
        "dataclasses",
        "enum",
        "types",
        "typing",
        "abc",
        "copy",
        "functools",
        "itertools",
        "operator",
        "heapq",
        "bisect",
        "array",
        "graphlib",
        "weakref",
        "math",
        "cmath",
        "decimal",
        "fractions",
        "numbers",
        "random",
        "statistics",
        "datetime",
        "calendar",
        "zoneinfo",
        "pickle",
        "pickletools",
        "copyreg",
        "shelve",
        "marshal",
        "struct",
        "sqlite3",
        "hashlib",
        "hmac",
        "secrets",
        "zlib",
        "gzip",
        "bz2",
        "lzma",
        "zipfile",
        "tarfile",
    ],
    # Operating system, files, processes, concurrency, and the interpreter's runtime and debugging tools.
    "system": [
        "os",
        "os.path",
        "sys",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
        "stat",
        "filecmp",
        "glob",
        "fileinput",
        "subprocess",
        "signal",
        "threading",
        "multiprocessing",
        "multiprocessing.pool",
        "concurrent.futures",
        "queue",
        "sched",
        "asyncio",
        "contextlib",
        "contextvars",
        "atexit",
        "gc",
        "time",
        "platform",
        "sysconfig",
        "resource",
        "select",
        "selectors",
        "mmap",
        "errno",
        "inspect",
        "traceback",
        "logging",
        "logging.handlers",
        "warnings",
        "tracemalloc",
        "faulthandler",
        "unittest",
        "unittest.mock",
        "doctest",
        "pdb",
        "bdb",
        "timeit",
        "cProfile",
        "pstats",
        "importlib",
        "importlib.util",
        "pkgutil",
        "ast",
        "dis",
        "symtable",
        "code",
        "codeop",
    ],
    # Internet protocols, email and the web.
    "net": [
        "socket",
        "ssl",
        "socketserver",
        "ipaddress",
        "http",
        "http.client",
        "http.server",
        "http.cookies",
        "http.cookiejar",
        "urllib.parse",
        "urllib.request",
        "urllib.response",
        "urllib.error",
        "urllib.robotparser",
        "email",
        "email.message",
        "email.utils",
        "email.parser",
        "email.generator",
        "email.policy",
        "email.headerregistry",
        "email.header",
        "email.charset",
        "email.contentmanager",
        "email.mime.text",
        "email.mime.multipart",
        "email.mime.base",
        "email.iterators",
        "email.encoders",
        "smtplib",
        "imaplib",
        "poplib",
        "ftplib",
        "nntplib",
        "telnetlib",
        "mailbox",
        "mimetypes",
        "uuid",
        "xmlrpc.client",
        "xmlrpc.server",
        "wsgiref.simple_server",
        "wsgiref.util",
        "wsgiref.headers",
        "wsgiref.handlers",
        "wsgiref.validate",
        "webbrowser",
        "cgi",
    ],
}

# A leading docstring paragraph that is only a call signature, e.g. "sorted(iterable, /, *, key=None)".
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$", re.DOTALL)
_MIN_RESPONSE_CHARS = 20
_ENOUGH_CHARS = 120  # stop adding paragraphs once the answer says this much


def summarize_doc(doc: str | None) -> str:
    """First paragraph(s) of a docstring, hard line wraps joined (docstrings wrap at ~72 columns)."""
    if not isinstance(doc, str) or not doc:
        return ""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", inspect.cleandoc(doc))]
    paragraphs = [p for p in paragraphs if p and not _SIGNATURE.match(p)]
    kept: list[str] = []
    for para in paragraphs[:2]:
        if para.startswith((">>>", "Example", "Usage", "Args:", "Parameters", "Returns")):
            break
        kept.append(para)
        if sum(len(k) for k in kept) >= _ENOUGH_CHARS:
            break
    return "\n".join(kept)


def _topic_doc(text: str) -> str:
    """A `pydoc_data.topics` page without its underlined title and grammar blocks."""
    lines = text.splitlines()
    if len(lines) > 1 and set(lines[1].strip()) <= set("*=-") and lines[1].strip():
        lines = lines[2:]
    paragraphs = [p for p in re.split(r"\n\s*\n", "\n".join(lines)) if p.strip() and not p.startswith("   ")]
    return summarize_doc("\n\n".join(paragraphs))


def _owned(obj: object, module_name: str, public: set[str] | None, attr: str) -> bool:
    """Whether `obj` belongs to this module's own API rather than being re-exported from elsewhere."""
    if public is not None:
        return attr in public
    owner = getattr(obj, "__module__", None) or ""
    base = module_name.split(".")[-1]
    return owner in (module_name, "_" + base) or owner.startswith(module_name + ".")


def _module_examples(module_name: str, family: str, seen_objects: set[int]) -> list[dict]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated modules (cgi, telnetlib...) still document well
            module = importlib.import_module(module_name)
    except Exception:  # not in this Python (removed, or an optional extension that was not built)
        return []
    out: list[dict] = []

    def add(instruction: str, doc: str | None) -> None:
        response = summarize_doc(doc)
        if len(response) >= _MIN_RESPONSE_CHARS:
            out.append(
                {
                    "instruction": instruction,
                    "input": "",
                    "response": response,
                    "domain": family,
                    "category": module_name,
                    "source": SOURCE_NAME,
                }
            )

    if module_name == "pydoc_data.topics":
        for topic, text in sorted(module.topics.items()):
            response = _topic_doc(text)
            if len(response) >= _MIN_RESPONSE_CHARS:
                out.append(
                    {
                        "instruction": f"Explain the Python language topic `{topic}`.",
                        "input": "",
                        "response": response,
                        "domain": family,
                        "category": module_name,
                        "source": SOURCE_NAME,
                    }
                )
        return out

    if module_name != "builtins":
        add(f"What is the Python module `{module_name}` for?", module.__doc__)
    public = set(getattr(module, "__all__", None) or []) or None
    prefix = "" if module_name == "builtins" else module_name + "."
    for attr in sorted(dir(module)):
        if attr.startswith("_"):
            continue
        obj = getattr(module, attr, None)
        is_class = inspect.isclass(obj)
        if not (is_class or inspect.isroutine(obj)) or id(obj) in seen_objects:
            continue
        if not _owned(obj, module_name, public, attr):
            continue
        seen_objects.add(id(obj))
        if is_class:
            add(f"Explain what the class `{prefix}{attr}` is for.", obj.__doc__)
            for name, member in sorted(vars(obj).items()):
                if name.startswith("_") or not callable(member) and not isinstance(member, (classmethod, staticmethod)):
                    continue
                add(f"Explain what `{prefix}{attr}.{name}` does.", getattr(member, "__doc__", None))
        else:
            add(f"Explain what `{prefix}{attr}` does.", obj.__doc__)
    return out


def build() -> list[dict]:
    """The examples, from the modules importable in this interpreter (see the module docstring)."""
    examples: list[dict] = []
    seen_objects: set[int] = set()
    seen_responses: set[str] = set()
    for family, modules in FAMILIES.items():
        for module_name in modules:
            for ex in _module_examples(module_name, family, seen_objects):
                # Identical docstrings (inherited or shared) would be the same answer to different questions,
                # and would leak between train and eval splits.
                if ex["response"] not in seen_responses:
                    seen_responses.add(ex["response"])
                    examples.append(ex)
    return examples


@functools.lru_cache(maxsize=1)
def _built_in_clean_interpreter() -> str:
    proc = subprocess.run([sys.executable, "-I", "-S", __file__], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        from ..errors import DataError

        last = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
        raise DataError(f"builtin:pystdlib: building the examples in {sys.executable} failed: {last}")
    return proc.stdout


def load_pystdlib() -> list[dict]:
    """Examples with keys instruction, input, response, domain (family), category (module), source."""
    return json.loads(_built_in_clean_interpreter())


if __name__ == "__main__":
    json.dump(build(), sys.stdout)
