"""The plugin contract (midi_bridge.plugin) checked when a plugin loads
(midi_bridge.runtime.discovery): a class that breaks it is refused in one line naming the
plugin, the attribute and the fix, and never played; a missing api_version is warned.
Third-party plugins are the distribution in tests/fixtures/refused_plugins, built and
installed by pip."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from midi_bridge.plugin import ENTRY_POINT_GROUP, Context, Generator, Note, PluginError
from midi_bridge.runtime import discovery
from midi_bridge.runtime.host import GeneratorHost


class _EntryPoint:
    def __init__(self, name: str, loader) -> None:
        self.name, self.value, self.group, self._loader = name, f"fake_mod:{name}", ENTRY_POINT_GROUP, loader

    def load(self):
        return self._loader()


def _info(name: str, loader) -> discovery.PluginInfo:
    info = discovery.PluginInfo(name, f"fake_mod:{name}", "fake-gens", "0.3.0")
    info._ep = _EntryPoint(name, loader)  # type: ignore[attr-defined]
    return info



class _Fits(Generator):
    """Every way of fitting the contract's signatures the bridge accepts."""

    api_version = 1
    modes = frozenset({"continue", "accompany"})

    def __init__(self, config=None, *, verbose=False):  # an extra keyword with a default
        super().__init__(config)

    def continuation(self, ctx, depth=3):                # renamed, an extra with a default
        yield Note(60)

    def accompany(self, *args):
        return []

    def observe(self, event, **extra):
        pass

    @staticmethod
    def reset():
        pass

    @classmethod
    def close(cls):
        pass

    rating_context = lambda self: {}                     # noqa: E731


def _cls(**body) -> type:
    body.setdefault("api_version", 1)
    body.setdefault("modes", frozenset({"accompany"}))
    body.setdefault("accompany", lambda self, event, context: [])
    return type("Plugin", (Generator,), body)


def test_every_accepted_way_of_fitting_the_contract_loads():
    assert discovery.contract_problem(_Fits) == ""
    assert discovery.load_class(_info("fits", lambda: _Fits)) is _Fits


@pytest.mark.parametrize("body, said", [
    ({"accompany": lambda self, event: []},
     "accompany(self, event) does not fit the contract's accompany(self, event, context)"),
    ({"accompany": lambda self, event, context, *, width: []},
     "accompany(self, event, context, *, width) does not fit"),
    ({"observe": lambda self: None}, "observe(self) does not fit the contract's observe(self, event)"),
    ({"reset": lambda self, hard: None}, "reset(self, hard) does not fit the contract's reset(self)"),
    ({"__init__": lambda self: None}, "__init__(self) does not fit the contract's __init__(self, config=None)"),
    ({"rating_context": staticmethod(lambda last: {})}, "rating_context(last) does not fit"),
    ({"observe": None}, "observe must be a method (the bridge calls observe(self, event)), not NoneType"),
    ({"modes": frozenset()}, "modes is empty: declare the modes it plays"),
    ({"default_config": ["depth"]}, "default_config must be a dict of setting names"),
])
def test_a_class_breaking_the_contract_is_refused_with_the_attribute_and_the_fix(body, said):
    info = _info("broken", lambda: _cls(**body))
    with pytest.raises(PluginError) as e:
        discovery.load_class(info)
    text = str(e.value)
    assert text.startswith("plugin 'broken' (fake-gens 0.3.0, fake_mod:broken): ")
    assert said in text and "\n" not in text
    assert info.status == "error" and said in info.error and info.cls is None


def test_usable_says_what_can_be_selected_for_a_mode():
    ok = _info("ok", lambda: _cls())
    refused = _info("refused", lambda: _cls(accompany=lambda self: []))
    assert discovery.usable(ok, "accompany") and discovery.usable(refused, "accompany")  # not loaded yet
    discovery.load_class(ok)
    with pytest.raises(PluginError):
        discovery.load_class(refused)
    assert discovery.usable(ok, "accompany") and discovery.usable(ok, "thru")
    assert not discovery.usable(ok, "continue")
    assert not discovery.usable(refused, "accompany") and not discovery.usable(refused, "thru")


REFUSED = Path(__file__).parent / "fixtures" / "refused_plugins"
REFUSED_DIST = ("mb-refused-plugins", "0.2.0")


@pytest.fixture(scope="module")
def refused_site(tmp_path_factory) -> Path:
    """tests/fixtures/refused_plugins built and installed by pip, as a user would, but into
    a folder of its own (``--target``), not into the environment other tests share."""
    root = tmp_path_factory.mktemp("refused")
    src, site = root / "src", root / "site"
    shutil.copytree(REFUSED, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    flags = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *flags,
                    "--target", str(site), str(src)], check=True, timeout=300)
    assert list(site.glob("mb_refused_plugins-0.2.0.dist-info"))
    return site


@pytest.fixture
def refused(refused_site, monkeypatch):
    """The installed entry points, real and first-party ones alike (none imported)."""
    monkeypatch.syspath_prepend(str(refused_site))
    sys.modules.pop("mb_refused_plugins", None)
    yield discovery.discover()
    sys.modules.pop("mb_refused_plugins", None)


@pytest.mark.parametrize("name, mode, method, params", [
    ("fx-nocontinue", "continue", "continuation", "(self, context)"),
    ("fx-noaccompany", "accompany", "accompany", "(self, event, context)"),
])
def test_an_installed_plugin_declaring_a_mode_without_its_method_is_refused_at_load(
        refused, name, mode, method, params):
    """Before: it loaded fine and raised NotImplementedError at the first phrase end."""
    info = refused[name]
    assert (info.distribution, info.version) == REFUSED_DIST
    with pytest.raises(PluginError) as e:
        discovery.load_class(info)
    text = str(e.value)
    assert text == (f"plugin '{name}' (mb-refused-plugins 0.2.0, {info.value}): declares mode "
                    f"'{mode}' but does not define {method}(): add 'def {method}{params}' to "
                    f"{info.value.split(':')[1]}, or take '{mode}' out of modes")
    assert info.as_json()["status"] == "error" and info.as_json()["error"] in text


def test_an_installed_plugin_whose_method_does_not_fit_the_signature_is_refused(refused):
    with pytest.raises(PluginError) as e:
        discovery.load_class(refused["fx-badsignature"])
    assert "plugin 'fx-badsignature' (mb-refused-plugins 0.2.0" in str(e.value)
    assert ("continuation(self) does not fit the contract's continuation(self, context): "
            "take the same parameters (any extra one needs a default)") in str(e.value)


def test_an_installed_plugin_without_api_version_loads_with_one_warning_line(refused, caplog):
    """Before: it silently got the bridge's own major, so the version check never failed."""
    info = refused["fx-noapi"]
    with caplog.at_level(logging.WARNING, logger="midi_bridge.runtime.discovery"):
        cls = discovery.load_class(info)
        discovery.load_class(info)                     # (loaded once: warned once)
    assert cls.__name__ == "NoApiVersion" and info.status == "ok" and info.modes == ("continue",)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "\n" not in warned[0], warned
    assert warned[0].startswith("plugin 'fx-noapi' (mb-refused-plugins 0.2.0")
    assert "api_version is not declared: add 'api_version = 1' to NoApiVersion" in warned[0]
    assert info.as_json()["warning"] in warned[0] and info.as_json()["error"] is None


def test_a_refused_plugin_is_never_played_and_the_bridge_plays_on(refused):
    """The host never constructs it, at start (get) or in a live swap (request: the engine
    keeps its current generator on an error); the other generators load as before."""
    host = GeneratorHost({}, plugins=refused, post=None)
    with pytest.raises(PluginError, match="fx-nocontinue.*declares mode 'continue'"):
        host.get("fx-nocontinue")
    swaps = []
    for name in ("fx-badsignature", "fx-nocontinue", "fx-steady", "markov"):
        host.request(name, lambda *answer: swaps.append(answer))
    assert [(name, gen is None) for name, gen, _ in swaps] == [
        ("fx-badsignature", True), ("fx-nocontinue", True), ("fx-steady", False), ("markov", False)]
    assert "plugin 'fx-badsignature'" in swaps[0][2] and "does not fit" in swaps[0][2]
    assert "plugin 'fx-nocontinue'" in swaps[1][2] and swaps[2][2] == swaps[3][2] == ""
    answer = list(swaps[2][1].continuation(Context(120.0, 0.0)))
    assert len(answer) == 4
    assert not discovery.usable(refused["fx-nocontinue"], "continue")
    assert discovery.usable(refused["fx-steady"], "continue")


def _bridge(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "midi_bridge", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_midi_bridge_plugins_and_render_with_the_refused_plugins_installed(refused_site, tmp_path):
    listing = _bridge(refused_site, "plugins", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = {ln.split()[0]: ln for ln in listing.stdout.splitlines() if ln.strip()}
    assert "ERROR: declares mode 'continue' but does not define continuation()" in lines["fx-nocontinue"]
    assert "ERROR: continuation(self) does not fit" in lines["fx-badsignature"]
    for ok in ("fx-steady", "fx-noapi", "markov", "harmony"):
        assert lines[ok].split()[1] == "ok", lines[ok]
    warned = [ln for ln in listing.stderr.splitlines() if "WARNING" in ln and "plugin 'fx-" in ln]
    assert len(warned) == 1 and "plugin 'fx-noapi'" in warned[0] and "api_version" in warned[0], \
        listing.stderr

    entries = {e["name"]: e for e in json.loads(_bridge(refused_site, "plugins", "--json", cwd=tmp_path).stdout)}
    assert entries["fx-noaccompany"]["status"] == "error"
    assert "does not define accompany()" in entries["fx-noaccompany"]["error"]
    assert entries["fx-noapi"]["status"] == "ok" and "api_version" in entries["fx-noapi"]["warning"]
    assert entries["fx-steady"] == {**entries["fx-steady"], "status": "ok", "error": None,
                                    "warning": None, "modes": ["continue", "accompany"]}

    import mido
    song = tmp_path / "in.mid"
    mf = mido.MidiFile(ticks_per_beat=480)
    mf.tracks.append(mido.MidiTrack([mido.Message("note_on", note=60, velocity=100, time=0),
                                     mido.Message("note_off", note=60, time=240),
                                     mido.Message("note_on", note=64, velocity=100, time=0),
                                     mido.Message("note_off", note=64, time=240),
                                     mido.MetaMessage("end_of_track", time=480 * 8)]))
    mf.save(str(song))
    refused_run = _bridge(refused_site, "render", str(song), "-o", str(tmp_path / "x.mid"),
                          "--generator", "fx-nocontinue", "--mode", "continue", "-q", cwd=tmp_path)
    assert refused_run.returncode == 2 and not (tmp_path / "x.mid").exists()
    assert refused_run.stderr.strip().splitlines() == [
        "midi-bridge: plugin 'fx-nocontinue' (mb-refused-plugins 0.2.0, mb_refused_plugins:"
        "NoContinuation): declares mode 'continue' but does not define continuation(): add "
        "'def continuation(self, context)' to NoContinuation, or take 'continue' out of modes"]
    played = _bridge(refused_site, "render", str(song), "-o", str(tmp_path / "y.mid"), "--json",
                     "--generator", "fx-steady", "--mode", "continue", "-q", cwd=tmp_path)
    assert played.returncode == 0, played.stderr
    summary = json.loads(played.stdout.strip().splitlines()[-1])
    assert summary["answers"] >= 1 and summary["plugin_errors"] == 0, summary


FIRST_PARTY = ("markov", "harmony", "rnn", "gan")


@pytest.mark.parametrize("name", FIRST_PARTY)
def test_the_first_party_generators_pass_the_checks(name):
    info = discovery.discover()[name]
    cls = discovery.load_class(info)
    assert info.distribution == discovery.OWN_DISTRIBUTION
    assert info.status == "ok" and info.modes
    assert discovery.contract_problem(cls) == ""
    assert discovery.contract_problem(type("Broken", (cls,), {"modes": frozenset({"harmonise"})}))


@pytest.mark.parametrize("name", FIRST_PARTY)
def test_the_first_party_generators_declare_their_api_version(name, caplog):
    info = discovery.discover()[name]
    with caplog.at_level(logging.WARNING, logger="midi_bridge.runtime.discovery"):
        discovery.load_class(info)
    assert info.warning == "" and not caplog.records, info.warning
