"""The user documentation names only things that exist: config keys, command-line flags,
sub-commands, ``--json`` keys and files.

Each check reads the documents as text and compares what they name with the code
(:data:`midi_bridge.commands.config.SCHEMA`, the ``midi-bridge`` argument parser, the JSON the
commands print).  Wording and figures are not checked here.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from midi_bridge.commands import cli
from midi_bridge.commands.config import SCHEMA
from midi_bridge.runtime.discovery import PluginInfo

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + [ROOT / "docs" / f"{n}.md" for n in (
    "ableton", "reaper", "controllers", "recording", "security", "plugins", "architecture",
    "encoding")]
#: ``midi-bridge X`` where X is a port or track name, not a sub-command.
NOT_COMMANDS = {"in", "out", "session"}
FILE_SUFFIXES = {"mid", "midi", "wav", "yaml", "md", "pt", "py", "sf2", "jsonl", "json", "toml"}


def _code(text: str) -> list[str]:
    """The contents of fenced code blocks (line by line) and of inline code spans."""
    out: list[str] = []
    fenced = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
    for m in fenced.finditer(text):
        out += m.group(1).splitlines()
    rest = fenced.sub("", text)
    out += [m.group(1) for m in re.finditer(r"`([^`\n]+)`", rest)]
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def commands(text: str) -> list[tuple[str, list[str]]]:
    """``(shown, words after 'midi-bridge')`` for every command written in code."""
    found = []
    for snippet in _code(text):
        snippet = re.sub(r"(^|\s)#.*$", "", snippet)  # a shell comment
        for m in re.finditer(r"(?:(?<![\w\"':.-])midi-bridge|\./run\.sh)((?:[ \t]+[^\s`|;&<>]+)*)",
                             snippet):
            shown = m.group(0)
            if shown.startswith("midi-bridge-"):
                continue
            try:
                words = shlex.split(m.group(1))
            except ValueError:
                words = m.group(1).split()
            if shown.startswith("./run.sh") and not (words and words[0] in RUN_SH_COMMANDS):
                words = ["run"] + words
            if words and words[0] not in NOT_COMMANDS:
                found.append((shown, words))
    return found


#: What ``./run.sh NAME ...`` runs as ``midi-bridge NAME ...`` (else ``midi-bridge run ...``).
RUN_SH_COMMANDS = ("doctor", "plugins", "ports")


def problems(shown: str, words: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with one documented command line ([] when nothing)."""
    subs = _subparsers(parser)
    if not words or words[0].startswith("-"):
        bad = [w for w in words if w.startswith("--") and w.split("=")[0] not in _options(parser)]
        return [f"{shown!r}: no option {w}" for w in bad]
    if words[0] not in subs:
        return [f"{shown!r}: no sub-command '{words[0]}' (have: {', '.join(subs)})"]
    p, rest = subs[words[0]], words[1:]
    nested = _subparsers(p)
    if nested and rest and rest[0] in nested:
        p, rest = nested[rest[0]], rest[1:]
    opts = _options(p)
    return [f"{shown!r}: '{words[0]}' has no option {w}" for w in rest
            if re.match(r"^--?[a-zA-Z]", w) and w.split("=")[0] not in opts]


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return cli.build_parser()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_command_and_flag_exists(doc, parser):
    text = doc.read_text(encoding="utf-8")
    bad = [p for shown, words in commands(text) for p in problems(shown, words, parser)]
    assert not bad, "\n".join(bad)


def test_the_command_check_catches_a_wrong_flag_and_sub_command(parser):
    text = "Run `midi-bridge run --generator markov --no-such-flag`, then\n```sh\nmidi-bridge plugn\n```\n"
    found = [p for shown, words in commands(text) for p in problems(shown, words, parser)]
    assert len(found) == 2
    assert any("--no-such-flag" in f for f in found) and any("'plugn'" in f for f in found)
    assert problems("./run.sh", ["run", "--mode", "thru", "--no-tui"], parser) == []
    assert [w for _, w in commands("`./run.sh doctor --json` or `./run.sh --mode thru`")] == [
        ["doctor", "--json"], ["run", "--mode", "thru"]]


@pytest.mark.parametrize("doc", DOCS + [ROOT / "config.yaml"], ids=lambda p: p.name)
def test_every_documented_config_key_exists(doc):
    """``section.key`` written in code (``engine.bpm``, ``output.offset_ms``) is in SCHEMA."""
    text = doc.read_text(encoding="utf-8")
    spans = _code(text) if doc.suffix == ".md" else [text]
    bad = set()
    for span in spans:
        for section, key in re.findall(r"(?<![\w./-])([a-z]+)\.([a-z_]+)\b(?![./(-])", span):
            if key in FILE_SUFFIXES:
                continue  # a file name (phrase.mid), not a key
            if section in SCHEMA and section != "generators" and key not in SCHEMA[section]:
                bad.add(f"{section}.{key}")
    assert not bad, f"{doc.name} names config keys that do not exist: {sorted(bad)}"


def test_the_flags_said_to_override_keys_do(parser):
    """README and config.yaml list the flags that override config keys."""
    run_opts = _options(_subparsers(parser)["run"])
    overriding = {"--" + f.replace("_", "-") for f in cli.OVERRIDES}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"flags override\s+keys\s+\(`([^`]+)`\)", readme)
    assert m, "README: the list of flags that override keys is gone"
    yaml_line = re.search(r"^# Flags override keys: (.*)$",
                          (ROOT / "config.yaml").read_text(encoding="utf-8"), re.M)
    assert yaml_line, "config.yaml: the list of flags that override keys is gone"
    for listed in (m.group(1).split(), yaml_line.group(1).split()):
        assert listed and set(listed) <= run_opts & overriding, set(listed) - (run_opts & overriding)


def test_relative_links_point_to_files_and_headings():
    bad = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append(f"{doc.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                         for h in re.findall(r"^#+ (.*)$", dest.read_text(encoding="utf-8"), re.M)}
                if anchor not in slugs:
                    bad.append(f"{doc.name}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_plugins_json_keys_named_in_plugins_md():
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    m = re.search(r"`midi-bridge plugins --json` lists every registered generator\s+with (.*?); your",
                  text, re.S)
    assert m, "plugins.md: the description of 'plugins --json' is gone"
    named = set(re.findall(r"`([a-z_]+)`", m.group(1))) - {"ok", "error"} | {"error"}
    keys = set(PluginInfo("x", "m:C", "d", "1").as_json())
    assert named and named <= keys, named - keys


def test_render_json_counters_named_in_plugins_md():
    from helpers import make_config
    from midi_bridge.core.engine import Engine
    from midi_bridge.runtime.host import GeneratorHost

    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    m = re.search(r"`--json` prints a summary with the engine's counters; (.*?)\s+should be 0", text, re.S)
    assert m, "plugins.md: the description of 'render --json' is gone"
    named = set(re.findall(r"`([a-z_]+)`", m.group(1)))
    cfg = make_config()
    stats = Engine(cfg, send=lambda msg: None, host=GeneratorHost({}, [], plugins={}), now_ns=0).stats
    assert named and named <= set(stats), named - set(stats)
