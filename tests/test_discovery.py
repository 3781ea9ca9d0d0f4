"""midi_bridge.runtime.discovery and midi_bridge.runtime.host: broken plugins are reported, the others keep working."""

from __future__ import annotations

import logging
import sys
import textwrap
import time
from importlib import metadata

import pytest

from midi_bridge.core.messages import Swap
from midi_bridge.runtime import discovery
from midi_bridge.runtime.host import GeneratorHost
from midi_bridge.plugin import ENTRY_POINT_GROUP, Generator, Note, PluginError

PLUGIN_MODULE = textwrap.dedent('''
    from midi_bridge.plugin import Generator, Note

    class Good(Generator):
        api_version = 1
        modes = frozenset({"continue"})
        default_config = {"depth": 3}
        def continuation(self, context):
            yield Note(60)

    class Other(Generator):
        name = "other-display-name"
        api_version = 1
        modes = frozenset({"accompany"})
        def accompany(self, event, context):
            return []

    class OldApi(Generator):
        api_version = 0
        modes = frozenset({"continue"})

    class WeirdMode(Generator):
        modes = frozenset({"continue", "harmonise"})

    class NotAGenerator:
        modes = frozenset({"continue"})

    def factory():
        return Good()

    class Explodes(Generator):
        api_version = 1
        modes = frozenset({"continue"})
        def __init__(self, config=None):
            raise RuntimeError("checkpoint missing")
        def continuation(self, context):
            yield Note(60)
''')


class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """What discovery reads from an entry point: name, value, dist, load()."""

    def __init__(self, name: str, value: str, dist: FakeDist | None) -> None:
        self.name, self.value, self.dist, self.group = name, value, dist, ENTRY_POINT_GROUP
        self.loads = 0

    def load(self):
        self.loads += 1
        return metadata.EntryPoint(self.name, self.value, self.group).load()


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Entry points of a few distributions, good and broken; returns them by name."""
    mod = "fake_bridge_plugins_mod"
    (tmp_path / f"{mod}.py").write_text(PLUGIN_MODULE)
    (tmp_path / "fake_broken_import_mod.py").write_text("import this_module_does_not_exist_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (mod, "fake_broken_import_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    good = FakeDist("good-gens", "1.2.3")
    bad = FakeDist("broken-gens", "0.0.1")
    shadow = FakeDist("shadow-gens", "0.0.2")  # (after good-gens by name: good-gens wins)
    eps = [
        FakeEntryPoint("good", f"{mod}:Good", good),
        FakeEntryPoint("other", f"{mod}:Other", good),
        FakeEntryPoint("noimport", "fake_broken_import_mod:Gen", bad),
        FakeEntryPoint("missingattr", f"{mod}:DoesNotExist", bad),
        FakeEntryPoint("oldapi", f"{mod}:OldApi", bad),
        FakeEntryPoint("weirdmode", f"{mod}:WeirdMode", bad),
        FakeEntryPoint("notagen", f"{mod}:NotAGenerator", bad),
        FakeEntryPoint("factory", f"{mod}:factory", bad),
        FakeEntryPoint("explodes", f"{mod}:Explodes", bad),
        FakeEntryPoint("good", f"{mod}:Other", shadow),   # same name registered twice
    ]

    def entry_points(**kw):
        assert kw == {"group": ENTRY_POINT_GROUP}
        return list(eps)

    monkeypatch.setattr(discovery.metadata, "entry_points", entry_points)
    return {ep.name + ("#2" if ep.dist is shadow else ""): ep for ep in eps}


def test_discover_lists_without_importing(fake_plugins):
    infos = discovery.discover()
    assert sorted(infos) == sorted(["good", "other", "noimport", "missingattr", "oldapi",
                                    "weirdmode", "notagen", "factory", "explodes"])
    assert all(ep.loads == 0 for ep in fake_plugins.values())
    assert all(i.status == "not loaded" for i in infos.values())
    assert (infos["good"].distribution, infos["good"].version) == ("good-gens", "1.2.3")
    assert (infos["oldapi"].distribution, infos["oldapi"].version) == ("broken-gens", "0.0.1")


def test_a_name_registered_twice_goes_to_the_same_one_on_every_machine(fake_plugins, caplog, monkeypatch):
    """Entry points come in sys.path and directory-listing order, which differs between
    machines: the winner is by distribution name, whatever the order found."""
    eps = list(fake_plugins.values())
    for order in (eps, eps[::-1]):
        monkeypatch.setattr(discovery.metadata, "entry_points", lambda order=order, **kw: list(order))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            infos = discovery.discover()
        assert infos["good"].distribution == "good-gens"
        assert "shadow-gens" in caplog.text and "shadowed" in caplog.text


def test_the_bridges_own_registration_of_a_name_wins(fake_plugins, monkeypatch):
    """A third-party 'markov' never replaces the first-party one, wherever it is installed."""
    own = FakeDist(discovery.OWN_DISTRIBUTION, "0.1")
    eps = [FakeEntryPoint("markov", "fake_x:Markov", FakeDist("a-markov", "1.0")),
           FakeEntryPoint("markov", "midi_bridge.generators.markov:MarkovGenerator", own)]
    for order in (eps, eps[::-1]):
        monkeypatch.setattr(discovery.metadata, "entry_points", lambda order=order, **kw: list(order))
        assert discovery.discover()["markov"].distribution == discovery.OWN_DISTRIBUTION


@pytest.mark.parametrize("name, reason", [
    ("noimport", "import failed: ModuleNotFoundError"),
    ("missingattr", "import failed: AttributeError"),
    ("oldapi", "written for plugin API v0, this bridge provides v1"),
    ("weirdmode", "unknown modes ['harmonise']"),
    ("notagen", "is not a subclass of midi_bridge.plugin.Generator"),
    ("factory", "is not a subclass of midi_bridge.plugin.Generator"),
])
def test_a_plugin_that_cannot_load_is_reported_with_distribution_version_and_reason(
        fake_plugins, name, reason):
    infos = discovery.discover()
    with pytest.raises(PluginError) as e:
        discovery.load_class(infos[name])
    text = str(e.value)
    for part in (f"plugin '{name}'", "broken-gens", "0.0.1", reason):
        assert part in text, f"{part!r} missing from: {text}"
    assert infos[name].status == "error"
    assert reason in infos[name].error
    assert infos[name].as_json()["status"] == "error"


def test_a_plugin_whose_constructor_raises_is_reported(fake_plugins):
    infos = discovery.discover()
    with pytest.raises(PluginError) as e:
        discovery.create(infos["explodes"], {})
    text = str(e.value)
    for part in ("plugin 'explodes'", "broken-gens", "0.0.1",
                 "construction failed: RuntimeError: checkpoint missing"):
        assert part in text, f"{part!r} missing from: {text}"
    assert infos["explodes"].status == "error"


def test_an_unknown_plugin_config_key_is_refused_naming_the_key_and_the_plugin(fake_plugins):
    infos = discovery.discover()
    with pytest.raises(PluginError) as e:
        discovery.create(infos["good"], {"depht": 4})
    text = str(e.value)
    assert "generators.good.depht" in text
    assert "allowed: depth" in text
    assert "\n" not in text
    # the good plugin is still usable with good settings
    assert discovery.create(infos["good"], {"depth": 2}).config == {"depth": 2}


def test_an_unknown_plugin_config_key_names_the_distribution_and_version(fake_plugins):
    """BUG candidate (per the brief): every plugin failure names distribution and version;
    the unknown-key refusal names only the key."""
    infos = discovery.discover()
    with pytest.raises(PluginError) as e:
        discovery.create(infos["good"], {"depht": 4})
    text = str(e.value)
    assert "good-gens" in text and "1.2.3" in text, text


def test_good_plugins_load_and_construct_after_broken_ones_failed(fake_plugins):
    infos = discovery.discover()
    for name in ("noimport", "oldapi", "notagen", "explodes"):
        with pytest.raises(PluginError):
            discovery.create(infos[name], {})
    gen = discovery.create(infos["good"], {"depth": 5})
    assert isinstance(gen, Generator)
    assert gen.config == {"depth": 5}
    assert gen.name == "good"                    # the entry-point name when the class has none
    assert infos["good"].status == "ok" and infos["good"].modes == ("continue",)
    other = discovery.create(infos["other"], None)
    assert other.name == "other-display-name"
    assert infos["other"].modes == ("accompany",)
    assert fake_plugins["good"].loads == 1
    discovery.create(infos["good"], {})
    assert fake_plugins["good"].loads == 1       # the class is imported once


def test_default_config_is_merged_under_the_settings(fake_plugins):
    infos = discovery.discover()
    assert discovery.create(infos["good"], None).config == {"depth": 3}


def test_host_reports_broken_plugins_and_serves_the_good_ones(fake_plugins):
    host = GeneratorHost({"good": {"depth": 1}}, plugins=discovery.discover(), post=None)
    assert host.names() == sorted(["good", "other", "noimport", "missingattr", "oldapi",
                                   "weirdmode", "notagen", "factory", "explodes"])
    with pytest.raises(PluginError, match="broken-gens"):
        host.get("noimport")
    with pytest.raises(PluginError, match="no generator named 'nope'.*available: "):
        host.get("nope")
    g = host.get("good")
    assert g.config == {"depth": 1}
    assert host.get("good") is g

    results = []
    host.request("explodes", lambda name, gen, err: results.append((name, gen, err)))
    host.request("other", lambda name, gen, err: results.append((name, gen, err)))
    assert results[0][0] == "explodes" and results[0][1] is None
    assert "construction failed" in results[0][2]
    assert results[1][0] == "other" and isinstance(results[1][1], Generator) and results[1][2] == ""


def test_host_resolve():
    host = GeneratorHost({}, order=["b", "a"], plugins={}, post=None)
    assert host.resolve(0, None) == "b"
    assert host.resolve(1, "b") == "a"
    assert host.resolve(2, "b") is None
    assert host.resolve("next", "b") == "a"
    assert host.resolve("next", "a") == "b"
    assert host.resolve("next", None) == "b"
    assert host.resolve("markov", None) == "markov"
    assert GeneratorHost({}, plugins={}, post=None).resolve("next", None) is None


def test_host_close_closes_every_generator_and_survives_a_failing_close(fake_plugins, caplog):
    closed = []

    class Closing(Generator):
        modes = frozenset({"continue"})

        def close(self):
            closed.append(self)
            raise OSError("already gone")

    from helpers import plugin_info
    host = GeneratorHost({}, plugins={"x": plugin_info("x", Closing), "y": plugin_info("y", Closing)},
                         post=None)
    host.get("x"), host.get("y")
    with caplog.at_level(logging.ERROR):
        host.close()
    assert len(closed) == 2


def test_the_installed_first_party_plugins_are_discovered_through_entry_points():
    infos = discovery.discover()  # the real entry points of this checkout's install
    for name, mode in (("markov", "continue"), ("harmony", "accompany")):
        assert name in infos
        cls = discovery.load_class(infos[name])
        assert issubclass(cls, Generator)
        assert mode in infos[name].modes
        assert infos[name].distribution == "midi-bridge"


class _DirectEntryPoint:
    """An entry point whose load() runs ``loader`` (to simulate what an import does)."""

    def __init__(self, name: str, loader) -> None:
        self.name, self.value, self.group = name, f"exiting_mod:{name}", ENTRY_POINT_GROUP
        self.dist, self._loader = FakeDist("exiting-gens", "0.3.0"), loader

    def load(self):
        return self._loader()


def _info(name: str, loader) -> discovery.PluginInfo:
    info = discovery.PluginInfo(name, f"exiting_mod:{name}", "exiting-gens", "0.3.0")
    info._ep = _DirectEntryPoint(name, loader)  # type: ignore[attr-defined]
    return info


class _ExitsInInit(Generator):
    api_version = 1
    modes = frozenset({"continue"})

    def __init__(self, config=None):
        raise SystemExit("the model file is missing")  # what sys.exit(...) in a plugin does

    def continuation(self, context):
        yield Note(60)


def _exits_at_import():
    raise SystemExit(1)  # a plugin module that calls sys.exit() when a dependency is missing


def test_a_plugin_that_calls_sys_exit_in_its_constructor_is_reported_not_obeyed():
    # Before: SystemExit went through create(): at start-up the bridge quit with the
    # plugin's text and no plugin named; on a live swap the loader thread died silently
    # and the swap never happened (nothing logged, nothing posted to the engine).
    with pytest.raises(PluginError) as e:
        discovery.create(_info("exits", lambda: _ExitsInInit), {})
    text = str(e.value)
    assert "plugin 'exits'" in text and "exiting-gens" in text
    assert "construction failed: SystemExit: the model file is missing" in text


def test_a_plugin_that_calls_sys_exit_at_import_is_reported_not_obeyed():
    info = _info("exitsimport", _exits_at_import)
    with pytest.raises(PluginError) as e:
        discovery.load_class(info)
    assert "plugin 'exitsimport'" in str(e.value) and "import failed: SystemExit" in str(e.value)
    assert info.status == "error"


def test_a_live_swap_to_a_plugin_that_calls_sys_exit_reports_the_failure():
    posted = []
    host = GeneratorHost({}, plugins={"exits": _info("exits", lambda: _ExitsInInit)},
                         post=posted.append)
    host.request("exits", lambda *a: None)
    for _ in range(200):  # the loader thread posts its result
        if posted:
            break
        time.sleep(0.01)
    assert posted and type(posted[0]) is Swap and posted[0].gen is None
    assert "construction failed: SystemExit" in posted[0].err


class _ModesAsString(Generator):
    modes = "continue"  # a common slip for frozenset({"continue"})


def test_modes_written_as_a_string_get_a_message_that_says_so():
    """Before: 'declares unknown modes ['c', 'e', 'i', 'n', 'o', 't', 'u']'."""
    info = _info("stringmodes", lambda: _ModesAsString)
    with pytest.raises(PluginError) as e:
        discovery.load_class(info)
    text = str(e.value)
    assert "plugin 'stringmodes'" in text
    assert "modes must be a set of mode names" in text and "frozenset({'continue'})" in text
    assert "['c', 'e'" not in text


class _TupleApi(Generator):
    api_version = (1, 1)  # API_VERSION's shape, not the major the contract asks for
    modes = frozenset({"continue"})


class _MinorApi(Generator):
    api_version = 1.1  # the contract's version as written in the docs, not its major
    modes = frozenset({"continue"})


class _FloatMajorApi(Generator):
    api_version = 1.0
    modes = frozenset({"continue"})

    def continuation(self, context):
        yield Note(60)


@pytest.mark.parametrize("cls", [_TupleApi, _MinorApi])
def test_an_api_version_that_is_not_a_major_is_explained_not_blamed_on_the_versions(cls):
    """Before: 'written for plugin API v(1, 1), this bridge provides v1 (upgrade the plugin
    or the bridge)': wrong advice, both are fine."""
    info = _info("badapi", lambda: cls)
    with pytest.raises(PluginError) as e:
        discovery.load_class(info)
    text = str(e.value)
    assert "upgrade" not in text
    assert "api_version must be the major version as an integer" in text and "api_version = 1" in text


def test_an_integral_float_api_version_still_loads():
    assert discovery.load_class(_info("floatapi", lambda: _FloatMajorApi)) is _FloatMajorApi


class _ModesNone(Generator):
    modes = None  # not iterable: discovery's own checks raise TypeError


class _ReadOnlyName(Generator):
    api_version = 1
    modes = frozenset({"continue"})
    name = property(lambda self: "")  # the bridge cannot set it

    def continuation(self, context):
        yield Note(60)


@pytest.mark.parametrize("cls", [_ModesNone, _ReadOnlyName])
def test_a_plugin_broken_in_an_unforeseen_way_is_a_reported_failure_live_and_at_start(cls):
    """Not a PluginError from discovery's checks: the loader thread died silently (the swap
    never happened, nothing logged) and start-up printed a traceback."""
    host = GeneratorHost({}, plugins={"odd": _info("odd", lambda: cls)}, post=None)
    with pytest.raises(PluginError) as e:
        host.get("odd")
    assert "plugin 'odd'" in str(e.value)
    posted = []
    host = GeneratorHost({}, plugins={"odd": _info("odd", lambda: cls)}, post=posted.append)
    host.request("odd", lambda *a: None)
    for _ in range(200):
        if posted:
            break
        time.sleep(0.01)
    assert posted and (posted[0].name, posted[0].gen) == ("odd", None) and "plugin 'odd'" in posted[0].err

