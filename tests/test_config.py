"""midi_bridge.commands.config: the shipped config.yaml, validation errors, and how the CLI reports them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from midi_bridge.commands import config
from midi_bridge.commands.config import SCHEMA, ConfigError, defaults_raw, load, validate

ROOT = Path(__file__).resolve().parents[1]
CONFIG_YAML = ROOT / "config.yaml"


# -- the shipped file -------------------------------------------------------------------------


def test_config_yaml_loads_and_equals_the_builtin_defaults():
    loaded = load(CONFIG_YAML)
    defaults = validate(defaults_raw())
    assert {k: v for k, v in loaded.items() if k != "generators"} == \
        {k: v for k, v in defaults.items() if k != "generators"}
    # generators: the file lists the first-party plugins with empty settings (= defaults)
    assert all(v == {} for v in loaded["generators"].values())
    assert defaults["generators"] == {}


def test_config_yaml_lists_every_key_of_the_schema():
    raw = yaml.safe_load(CONFIG_YAML.read_text(encoding="utf-8"))
    assert list(raw) == list(SCHEMA)
    for section, keys in SCHEMA.items():
        if "*" in keys:
            continue
        assert list(raw[section]) == list(keys), f"section {section} out of step with the schema"
        for key, spec in keys.items():
            assert raw[section][key] == spec.default, f"{section}.{key}: file and default differ"


def test_every_key_in_config_yaml_is_documented_inline():
    current = None
    for line in CONFIG_YAML.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            current = line.split(":")[0]
            continue
        if current == "generators":
            continue
        assert "#" in line, f"undocumented key in config.yaml: {line.strip()}"


def test_defaults_are_normalised():
    cfg = validate({})
    assert cfg["input"]["channels"] is None             # 'all'
    assert cfg["thru"]["channel"] is None               # 'same'
    assert cfg["engine"]["output_channel"] == 0         # 1 as people count
    assert cfg["control"]["channel"] == 15
    assert cfg == validate(None)
    assert load(None) == cfg


def test_channels_are_counted_from_one():
    cfg = validate({"input": {"channels": [1, 16]}, "thru": {"channel": 10},
                    "engine": {"output_channel": 16}})
    assert cfg["input"]["channels"] == frozenset({0, 15})
    assert cfg["thru"]["channel"] == 9
    assert cfg["engine"]["output_channel"] == 15
    assert validate({"input": {"channels": 3}})["input"]["channels"] == frozenset({2})


def test_validate_does_not_share_mutable_defaults():
    a = validate({})
    a["ports"]["extra_inputs"].append("x")
    assert validate({})["ports"]["extra_inputs"] == []


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, must_contain", [
    ({"enigne": {}}, ["unknown section 'enigne'", "engine", "phrase"]),
    ({"engine": {"tempo": 100}}, ["unknown key 'engine.tempo'", "bpm", "mode"]),
    ({"engine": {"bpm": "fast"}}, ["engine.bpm", "'fast'", "a number from 20 to 400"]),
    ({"engine": {"bpm": 1000}}, ["engine.bpm", "1000", "a number from 20 to 400"]),
    ({"engine": {"bpm": True}}, ["engine.bpm", "a number"]),
    ({"engine": {"mode": "jam"}}, ["engine.mode", "'jam'", "continue, accompany, thru"]),
    ({"engine": {"output_channel": 0}}, ["engine.output_channel", "an integer from 1 to 16"]),
    ({"engine": {"output_channel": 2.5}}, ["engine.output_channel", "an integer from 1 to 16"]),
    ({"ports": {"backend": "oss"}}, ["ports.backend", "auto, alsa, jack, jack-rtmidi, coremidi, winmm"]),
    ({"ports": {"client_name": ""}}, ["ports.client_name", "a non-empty string"]),
    ({"ports": {"extra_inputs": "Keystation"}}, ["ports.extra_inputs", "a list of non-empty strings"]),
    ({"input": {"channels": [0]}}, ["input.channels", "'all' or a list of channels 1-16"]),
    ({"input": {"channels": []}}, ["input.channels", "'all' or a list of channels 1-16"]),
    ({"input": {"channels": "some"}}, ["input.channels", "'all' or a list of channels 1-16"]),
    ({"input": {"feedback_window_ms": -1}}, ["input.feedback_window_ms", "from 0 to 1000"]),
    ({"thru": {"enabled": "yes"}}, ["thru.enabled", "true or false"]),
    ({"thru": {"channel": 17}}, ["thru.channel", "'same' or a channel 1-16"]),
    ({"phrase": {"min_notes": 0}}, ["phrase.min_notes", "an integer from 1 to 1000"]),
    ({"phrase": {"silence_ms": float("nan")}}, ["phrase.silence_ms", "a number from 50 to 10000"]),
    ({"continuation": {"max_beats": float("inf")}}, ["continuation.max_beats", "a number"]),
    ({"output": {"burst": 0}}, ["output.burst", "an integer from 1 to 4096"]),
    ({"control": {"next_cc": 128}}, ["control.next_cc", "null (off) or an integer from 0 to 127"]),
    ({"control": {"next_cc": True}}, ["control.next_cc", "null (off)"]),
    ({"control": {"order": "markov"}}, ["control.order", "a list of non-empty strings"]),
    ({"logging": {"level": "loud"}}, ["logging.level", "debug, info, warning, error"]),
    ({"engine": ["mode", "thru"]}, ["engine", "must be a mapping", "mode"]),
    ({"generators": ["markov"]}, ["generators", "a mapping of generator name to its settings"]),
    ({"generators": {"markov": 3}}, ["generators", "a mapping of generator name to its settings"]),
    (["engine"], ["top level must be a mapping"]),
])
def test_bad_config_raises_one_line_naming_the_key_and_what_is_allowed(raw, must_contain):
    with pytest.raises(ConfigError) as e:
        validate(raw, source="my.yaml")
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith("my.yaml: ")
    for part in must_contain:
        assert part in text, f"{part!r} missing from: {text}"


def test_null_sections_and_generator_settings_mean_defaults():
    cfg = validate({"ports": None, "generators": {"markov": None}})
    assert cfg["ports"]["backend"] == "auto"
    assert cfg["generators"] == {"markov": {}}


def test_invalid_yaml_reports_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("engine:\n  mode: continue\n  bpm: [120\nphrase:\n  silence_ms: 600\n")
    with pytest.raises(ConfigError) as e:
        load(p)
    text = str(e.value)
    assert "\n" not in text
    assert str(p) in text
    m = re.search(r"line (\d+)", text)
    assert m and 3 <= int(m.group(1)) <= 5, text
    assert "not valid YAML" in text


def test_yaml_with_tabs_reports_the_line(tmp_path):
    p = tmp_path / "tabs.yaml"
    p.write_text("engine:\n\tmode: thru\n")
    with pytest.raises(ConfigError, match=r"line 2"):
        load(p)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.yaml")


def test_unsafe_yaml_tags_are_refused(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("engine: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(p)


def test_override_checks_the_flag_value():
    cfg = validate({})
    config.override(cfg, "engine.mode", "thru")
    assert cfg["engine"]["mode"] == "thru"
    with pytest.raises(ConfigError) as e:
        config.override(cfg, "ports.client_name", "  ")
    assert str(e.value).startswith("--client-name: ")


# -- through the command line ------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "midi_bridge", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("content, must_contain", [
    ("engine:\n  mode: jam\n", "engine.mode"),
    ("engine:\n  temp: 3\n", "unknown key 'engine.temp'"),
    ("enigne:\n  mode: thru\n", "unknown section 'enigne'"),
    ("engine:\n  bpm: [120\n", "line "),
])
def test_run_with_a_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path, content, must_contain):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    r = run_cli("run", "--config", str(bad), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("midi-bridge: ")
    assert must_contain in lines[0]
    assert r.stdout == ""


def test_run_with_a_missing_config_file_exits_2(tmp_path):
    r = run_cli("run", "--config", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "cannot read" in r.stderr


def test_unquoted_on_and_off_are_taken_as_written(tmp_path):
    # YAML 1.1 (yaml.safe_load) reads a bare on/off as true/false; config.yaml documents
    # 'tui: auto | on | off' and 'quantize: off | 1/16 ...', so people write them bare.
    p = tmp_path / "c.yaml"
    p.write_text("status:\n  tui: off\noutput:\n  quantize: off\n")
    cfg = load(p)
    assert cfg["status"]["tui"] == "off" and cfg["output"]["quantize"] is None
    p.write_text("status:\n  tui: on\n")
    assert load(p)["status"]["tui"] == "on"
    with pytest.raises(ConfigError, match="output.quantize"):
        validate({"output": {"quantize": True}})


@pytest.mark.parametrize("flag", ["--in-port", "--out-port", "--record"])
def test_a_bad_flag_value_names_the_flag_that_was_given(flag, capsys):
    from midi_bridge.commands.cli import main
    assert main(["run", flag, " "]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"midi-bridge: {flag}: "), err


def test_interaction_modes_are_defined_once():
    """The generator modes of the plugin contract plus thru, in one place (before: three
    copies, in the plugin contract, the live controls and the config)."""
    from midi_bridge import plugin
    from midi_bridge.commands import cli
    from midi_bridge.core import control, modes
    assert modes.MODES == (*plugin.MODES, "thru")
    assert config.MODES is modes.MODES and control.MODES is modes.MODES and cli.MODES is modes.MODES
