"""The conditional bar GAN: bar encoding, networks, train-gan, the ``gan`` plugin."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from midi_bridge.runtime import discovery
from midi_bridge.model import gan, gan_bars
from midi_bridge.training import gan_eval
from midi_bridge.model.checkpoint import CheckpointError
from midi_bridge.training.dataset import pack
from midi_bridge.model.encoding import ENCODING_VERSION, NOTE_SPEC, STEPS_PER_BEAT, GridNote, encode_notes
from midi_bridge.plugin import Context, Note, PlayedEvent, PluginError
from midi_bridge.generators.gan import GANGenerator

TINY = {"z": 8, "ch": 16, "cond": 8, "n_styles": 2}


def random_melody(rng: np.random.Generator, n_bars: int) -> list[tuple[int, float, float]]:
    """Monophonic notes on the sixteenth grid inside the GAN's range, some tied over bar lines."""
    out, step, total = [], 0, n_bars * gan_bars.STEPS
    while step < total:
        if rng.random() < 0.2:
            step += int(rng.integers(1, 4))  # a rest
            continue
        dur = min(int(rng.integers(1, 9)), total - step)
        out.append((int(rng.integers(gan_bars.LOW, gan_bars.LOW + gan_bars.N_PITCH)), step * 0.25, dur * 0.25))
        step += dur
    return out


def test_bar_encoding_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mel = random_melody(rng, 3)
        bars = gan_bars.melody_to_bars(mel, 3)
        assert bars.shape == (3, gan_bars.STEPS)
        assert gan_bars.bars_to_melody(bars) == mel


def test_bar_encoding_ties_folds_and_rounds():
    # a note over the bar line is a HOLD at step 0 of the next bar
    bars = gan_bars.melody_to_bars([(60, 3.0, 2.0), (62, 5.0, 1.0)], 2)
    assert bars[0, 12] == 60 - gan_bars.LOW and list(bars[0, 13:]) == [gan_bars.HOLD] * 3
    assert list(bars[1, :4]) == [gan_bars.HOLD] * 4 and bars[1, 4] == 62 - gan_bars.LOW
    assert list(bars[1, 8:]) == [gan_bars.REST] * 8
    # out-of-range pitches move by octaves; a triplet onset is rounded to the sixteenth
    bars = gan_bars.melody_to_bars([(30, 0.0, 1.0), (110, 1.34, 0.5)], 1)
    assert bars[0, 0] + gan_bars.LOW == 54 and bars[0, 5] + gan_bars.LOW == 98 - 12
    # a HOLD after a rest is a rest; a HOLD at the very start starts nothing
    assert gan_bars.bars_to_melody([[gan_bars.HOLD, gan_bars.REST, gan_bars.HOLD, 0] + [gan_bars.HOLD] * 12]) == [(gan_bars.LOW, 0.75, 3.25)]


def test_generator_and_discriminator_shapes_and_conditioning():
    torch.manual_seed(0)
    cfg = gan.GanConfig(**TINY)
    g, d = gan.BarGenerator(cfg), gan.BarDiscriminator(cfg)
    z = torch.randn(3, cfg.z)
    prev_a = gan.one_hot(torch.full((3, gan_bars.STEPS), gan_bars.REST))
    prev_b = gan.one_hot(torch.randint(0, gan_bars.N_PITCH, (3, gan_bars.STEPS)))
    style0, style1 = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    ctx_a, ctx_b = torch.zeros(3, 12), torch.eye(12)[[0, 4, 7]]
    out = g(z, style0, prev_a, ctx_a)
    assert out.shape == (3, gan_bars.N_CLASSES, gan_bars.STEPS)
    assert not torch.allclose(out, g(z, style0, prev_b, ctx_a))  # the previous bar matters
    assert not torch.allclose(out, g(z, style1, prev_a, ctx_a))  # the style matters
    assert not torch.allclose(out, g(z, style0, prev_a, ctx_b))  # the tonal context matters
    bar = gan.one_hot(torch.randint(0, gan_bars.N_CLASSES, (3, gan_bars.STEPS)))
    score, feat = d(bar, prev_a, style0, ctx_a)
    assert score.shape == (3,) and feat.shape == (3, cfg.ch)
    assert not torch.allclose(score, d(bar, prev_b, style0, ctx_a)[0])
    assert not torch.allclose(score, d(bar, prev_a, style1, ctx_a)[0])
    bars = gan.sample_bars(g, np.full((5, gan_bars.STEPS), gan_bars.REST), 1, 1.0, torch.Generator().manual_seed(1))
    assert bars.shape == (5, gan_bars.STEPS) and bars.min() >= 0 and bars.max() < gan_bars.N_CLASSES


def test_pitch_class_profile():
    bars = gan_bars.melody_to_bars([(60, 0.0, 1.0), (72, 1.0, 1.0), (67, 4.0, 3.0)], 2)
    prof = gan_bars.pc_profile(bars)
    assert prof.shape == (12,) and prof[0] == pytest.approx(2 / 3) and prof[7] == pytest.approx(1 / 3)
    assert gan_bars.pc_profile(bars[None, 1:])[0, 7] == 1.0  # batched: one profile per passage
    assert not gan_bars.pc_profile(np.full((1, gan_bars.STEPS), gan_bars.REST)).any()


def test_phrase_to_bar():
    # the bar is the 4 beats ending on the beat after the last onset: here beats 2..6
    notes = [(60, 0.0, None), (64, 2.0, None), (67, 2.5, 0.25), (72, 5.0, None), (69, 5.0, None)]
    bar = gan.phrase_to_bar(notes)
    assert gan_bars.bars_to_melody(bar, origin=2.0) == [(64, 2.0, 0.5), (67, 2.5, 0.25), (72, 5.0, 1.0)]
    assert list(gan.phrase_to_bar([])) == [gan_bars.REST] * gan_bars.STEPS
    bars = gan.phrase_to_bars(notes, 2)  # beats -2..6: the first note lies in the first bar
    assert bars.shape == (2, gan_bars.STEPS) and bars[0, 8] == 60 - gan_bars.LOW and (bars[1] == bar).all()


def tiny_checkpoint(path, styles=("chorale", "folk")):
    torch.manual_seed(0)
    g = gan.BarGenerator(gan.GanConfig(**TINY))
    rng = np.random.default_rng(0)
    primers = np.stack([gan_bars.melody_to_bars(random_melody(rng, gan_bars.CTX_BARS), gan_bars.CTX_BARS) for _ in range(6)])
    gan.save(path, g, {"styles": list(styles)}, primers, np.array([0, 1, 0, 1, 0, 1]), half=True)
    return path


def check_melody(mel, bars):
    assert all(isinstance(p, int) and 0 <= p <= 127 for p, _, _ in mel)
    starts = [s for _, s, _ in mel]
    assert starts == sorted(starts)
    assert all(d > 0 and s + d <= bars * 4 + 1e-9 for _, s, d in mel)


def test_generate_melodies_api(tmp_path):
    path = tiny_checkpoint(tmp_path / "g.pt")
    mels = gan_eval.generate_melodies(str(path), 5, bars=3, seed=2)
    assert len(mels) == 5
    for mel in mels:
        check_melody(mel, 3)
    assert mels == gan_eval.generate_melodies(path, 5, bars=3, seed=2)
    assert len(gan_eval.generate_melodies(path, 2, bars=1, style="chorale")) == 2
    with pytest.raises(ValueError):
        gan_eval.generate_melodies(path, 1, style="jazz")


def test_pickled_code_is_refused(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"format": gan.FORMAT, "payload": Evil()}, bad)
    with pytest.raises(CheckpointError, match="refusing"):
        gan.load(bad)
    with pytest.raises(PluginError, match="refusing"):
        GANGenerator({"checkpoint": str(bad)})
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a midi-bridge GAN"):
        gan.load(tmp_path / "other.pt")


class Evil:
    def __reduce__(self):
        return (print, ("this ran on load",))


def write_dataset(root, seed=0):
    """A tiny prepared melody dataset (scales and arpeggios in two styles)."""
    root.mkdir()
    rng = np.random.default_rng(seed)
    pieces = {"train": [], "val": [], "test": []}
    for split, n in (("train", 12), ("val", 3), ("test", 3)):
        for i in range(n):
            base = int(rng.integers(60, 72))
            steps = [0, 2, 4, 5, 7, 5, 4, 2] if i % 2 else [0, 4, 7, 12, 7, 4, 0, -5]
            notes = [GridNote(k * STEPS_PER_BEAT // 2, base + steps[k % 8], STEPS_PER_BEAT // 2, 80)
                     for k in range(32)]
            pieces[split].append((encode_notes(notes), i % 2, 0))
    for split, ps in pieces.items():
        torch.save(pack(ps, 4), root / f"{split}.pt")
    (root / "meta.json").write_text(json.dumps({
        "format": "midi-bridge-dataset", "encoding_version": ENCODING_VERSION, "spec": NOTE_SPEC.to_dict(),
        "mono": True, "styles": ["chorale", "folk"], "dataset_hash": "tiny"}))
    return root


def test_train_gan_checkpoints_reload_and_resume(tmp_path, capsys):
    from midi_bridge.commands.cli import main

    ds = write_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    common = ["train-gan", "-d", str(ds), "-o", str(run), "--steps-per-epoch", "3", "--batch", "8",
              "--z", "8", "--channels", "16", "--cond", "8", "--val-count", "4", "--eval-count", "4",
              "--eval-bars", "2", "--seed", "3"]
    assert main(common + ["--epochs", "1", "--objective", "wgan-gp", "--n-critic", "2"]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "ETA" in err and "val JS" in err
    blob = torch.load(run / "last.pt", weights_only=True)
    assert blob["format"] == gan.FORMAT and "train" in blob and "discriminator" in blob
    assert json.loads(blob["meta"])["objective"] == "wgan-gp"
    assert (run / "best.pt").exists()
    export = tmp_path / "small.pt"
    assert main(common + ["--epochs", "2", "--resume", "--export", str(export)]) == 0
    captured = capsys.readouterr()
    assert "resumed from" in captured.err and "epoch 2/2" in captured.err and "epoch 1/" not in captured.err
    assert "resuming with the run's objective wgan-gp" in captured.err
    meta = json.loads(torch.load(run / "last.pt", weights_only=True)["meta"])
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    small = torch.load(export, weights_only=True)
    assert "discriminator" not in small and "train" not in small
    assert all(v.dtype == torch.float16 for v in small["generator"].values() if v.is_floating_point())
    res = json.loads(captured.out)  # the final JS divergences against the test split
    assert set(res["gan"]) == set(res["unigram"]) == {"pitch_class", "interval"}
    check_melody(gan_eval.generate_melodies(export, 2, bars=2)[0], 2)
    # feature matching runs too, and --evaluate prints the divergences of a checkpoint
    assert main(common[:4] + [str(tmp_path / "fm")] + common[5:] + ["--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["train-gan", "-d", str(ds), "--evaluate", str(export), "--eval-count", "3",
                 "--eval-bars", "2", "--eval-split", "val"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["melodies"] == 3 and res["split"] == "val" and 0 <= res["gan"]["interval"] <= 1
    assert main(["train-gan", "-d", str(ds), "--evaluate", str(tmp_path / "missing.pt")]) == 2


def ev(pitch, beat, on=True, vel=80):
    return PlayedEvent(on=on, pitch=pitch, velocity=vel, channel=0, beat=beat, seconds=beat / 2)


PHRASE = tuple(ev(60 + 2 * i, 0.5 * i) for i in range(8))


def check_answer(gen: GANGenerator, context: Context) -> list[Note]:
    it = gen.continuation(context)
    assert iter(it) is it  # an iterator
    before = gen.bars_sampled
    notes = list(it)
    assert notes and gen.bars_sampled > before
    starts = [n.start for n in notes]
    assert starts == sorted(starts) and starts[0] >= 0
    for n in notes:
        assert isinstance(n, Note) and 0 <= n.pitch <= 127 and n.duration > 0
        assert n.start + n.duration <= context.max_beats + 1e-9
    return notes


def test_plugin_answers_lazily_bar_by_bar(tmp_path):
    path = tiny_checkpoint(tmp_path / "g.pt")
    gen = GANGenerator({"checkpoint": str(path), "seed": 1, "temperature": 0.8})
    for e in PHRASE:
        gen.observe(e)
        gen.observe(ev(e.pitch, e.beat + 0.25, on=False))
    it = gen.continuation(Context(tempo_bpm=120, beat=5.0, max_beats=12, phrase=PHRASE))
    assert gen.bars_sampled == 0  # nothing sampled before the first pull
    first = next(it)
    assert 1 <= gen.bars_sampled <= 2  # one bar (two when its last note is held over)
    assert first.start < 8
    it.close()
    assert gen.bars_sampled <= 2
    notes = check_answer(gen, Context(tempo_bpm=120, beat=5.0, max_beats=6, phrase=PHRASE))
    assert max(n.start for n in notes) < 6
    # max_beats unset: the configured number of bars
    gen = GANGenerator({"checkpoint": str(path), "seed": 1, "bars": 2})
    notes = list(gen.continuation(Context(tempo_bpm=120, beat=5.0, phrase=PHRASE)))
    assert gen.bars_sampled == 2 and all(n.start + n.duration <= 8 + 1e-9 for n in notes)
    notes = list(gen.continuation(Context(tempo_bpm=120, beat=5.0, phrase=())))  # nothing played: an empty bar
    assert gen.bars_sampled == 4 and all(n.start + n.duration <= 8 + 1e-9 for n in notes)


def test_plugin_honours_context_temperature(tmp_path, monkeypatch):
    path = tiny_checkpoint(tmp_path / "g.pt")
    gen = GANGenerator({"checkpoint": str(path), "seed": 1, "temperature": 0.7})
    seen = []
    real = gan.continue_bars

    def spy(g, prev, style, temperature, generator, **kw):
        seen.append(temperature)
        return real(g, prev, style, temperature, generator, **kw)

    monkeypatch.setattr(gan, "continue_bars", spy)
    list(gen.continuation(Context(tempo_bpm=120, beat=4.0, max_beats=4, phrase=PHRASE)))
    list(gen.continuation(Context(tempo_bpm=120, beat=4.0, max_beats=4, phrase=PHRASE, temperature=0.2)))
    assert seen == [0.7, 0.2]


def test_plugin_same_seed_same_answer_and_conditioning(tmp_path):
    path = tiny_checkpoint(tmp_path / "g.pt")
    ctx = Context(tempo_bpm=120, beat=5.0, max_beats=8, phrase=PHRASE)
    a = list(GANGenerator({"checkpoint": str(path), "seed": 5}).continuation(ctx))
    b = list(GANGenerator({"checkpoint": str(path), "seed": 5}).continuation(ctx))
    assert a == b
    with pytest.raises(PluginError, match="style"):
        GANGenerator({"checkpoint": str(path), "style": "jazz"})
    with pytest.raises(PluginError, match="^gan: checkpoint .* not found"):
        GANGenerator({"checkpoint": str(tmp_path / "nope.pt")})


def test_plugin_via_discovery(tmp_path):
    info = discovery.discover()["gan"]
    assert discovery.load_class(info) is GANGenerator
    path = tiny_checkpoint(tmp_path / "g.pt")
    gen = discovery.create(info, {"checkpoint": str(path), "seed": 0})
    assert gen.modes == {"continue"}
    check_answer(gen, Context(tempo_bpm=100, beat=4.0, max_beats=8, phrase=PHRASE))
    with pytest.raises(PluginError, match="unknown key"):
        discovery.create(info, {"checkpoint": str(path), "top_p": 0.9})


def test_shipped_checkpoint_is_small_and_loads():
    from midi_bridge.model.paths import MODELS_DIR

    path = MODELS_DIR / "gan.pt"
    if not path.exists():
        pytest.skip("models/gan.pt not shipped yet")
    assert path.stat().st_size <= 3_000_000
    model = gan.load(path)
    assert "folk" in model.styles and len(model.primers) > 0
    gen = GANGenerator({"seed": 0})
    check_answer(gen, Context(tempo_bpm=120, beat=4.0, max_beats=8, phrase=PHRASE))


def test_calibration_moves_pitch_classes_towards_target(tmp_path):
    from midi_bridge.training.gan_train import calibrate, onset_pc_counts
    from midi_bridge.model.theory import js_divergence

    path = tiny_checkpoint(tmp_path / "g.pt")
    old = gan.load(path)
    assert old.pc_bias is None and "pc_bias" not in torch.load(path, weights_only=True)  # no bias: none applied
    target = np.array([8, 0.5, 3, 0.5, 5, 3, 0.5, 6, 0.5, 3, 0.5, 2]) * 100  # a C-major-like profile
    targets = np.stack([target, target])

    def js_of(model, bias, frame="absolute"):
        toks, _, ctxs = gan_eval.generate_bars(model, 300, 2, "folk", seed=7, contexts=True, pc_bias=bias)
        return js_divergence(onset_pc_counts(toks, ctxs, frame), target)

    before = js_of(old, None)
    bias, hist = calibrate(old, targets, "absolute", iterations=3, count=300, bars=2, seed=1)
    assert bias.shape == (2, 12) and len(hist) == 4
    after = js_of(old, bias)
    assert after < 0.5 * before and hist[-1]["folk"] < hist[0]["folk"]
    # stored in the checkpoint, loaded with weights_only, used by generate_melodies and the plugin
    gan.save(tmp_path / "c.pt", old.gen, dict(old.meta), old.primers, old.primer_styles, half=True, pc_bias=bias)
    cal = gan.load(tmp_path / "c.pt")
    assert np.allclose(cal.pc_bias, bias) and cal.bias_frame == "absolute"
    mels = gan_eval.generate_melodies(cal, 200, bars=2, style="folk", seed=3)
    plain = gan_eval.generate_melodies(old, 200, bars=2, style="folk", seed=3)
    got = [0] * 12
    base = [0] * 12
    for mel, ref in ((mels, got), (plain, base)):
        for m in mel:
            for p, _s, _d in m:
                ref[p % 12] += 1
    assert js_divergence(got, target) < js_divergence(base, target)
    gen = GANGenerator({"checkpoint": str(tmp_path / "c.pt"), "seed": 0})
    check_answer(gen, Context(tempo_bpm=120, beat=4.0, max_beats=8, phrase=PHRASE))
    # key-relative frame: the bias follows the tonic of the tonal context
    ctx = np.zeros((2, 12), np.float32)
    ctx[0, [0, 4, 7]] = 1 / 3  # C major
    ctx[1, [2, 6, 9]] = 1 / 3  # D major
    assert list(gan_bars.context_tonic(ctx)) == [0, 2]
    rel = np.arange(12, dtype=np.float32)
    b = gan_bars.pitch_bias(rel, [0, 0], ctx, "key")
    assert b[0, 60 - gan_bars.LOW] == 0 and b[1, 62 - gan_bars.LOW] == 0 and b[1, 60 - gan_bars.LOW] == 10
    kb, _ = calibrate(gan.load(path), targets, "key", iterations=1, count=50, bars=1)
    assert np.isfinite(kb).all()


def test_transposition_and_tonal_feature_matching():
    from midi_bridge.model.gan import transpose_tokens
    from midi_bridge.training.gan_train import tonal_loss, tonal_profiles

    c_major = gan_bars.melody_to_bars([(60, 0, 1), (64, 1, 1), (67, 2, 1), (95, 3, 1)], 1)
    toks = torch.as_tensor(np.concatenate([c_major, c_major]))
    moved = transpose_tokens(toks, torch.tensor([2, -1]))
    assert gan_bars.bars_to_melody(moved[0].numpy()) == [(62, 0, 1), (66, 1, 1), (69, 2, 1), (85, 3, 1)]  # 97 folds down
    assert gan_bars.bars_to_melody(moved[1].numpy())[0] == (59, 0, 1)
    assert (moved == gan_bars.HOLD).sum() == (toks == gan_bars.HOLD).sum() and (moved == gan_bars.REST).sum() == (toks == gan_bars.REST).sum()
    # the key-relative profile of a transposed bar with its transposed tonic is unchanged
    a_abs, a_rel = tonal_profiles(gan.one_hot(toks[:1]), torch.tensor([0]))
    b_abs, b_rel = tonal_profiles(gan.one_hot(moved[:1]), torch.tensor([2]))
    assert torch.allclose(a_rel, b_rel) and not torch.allclose(a_abs, b_abs)
    assert a_abs[0] == pytest.approx(0.25) and a_abs[4] == pytest.approx(0.25) and a_abs.sum() == pytest.approx(1)
    # the loss is ~0 for logits that reproduce the real bars, positive (with a gradient) otherwise
    real = gan.one_hot(toks)
    tonic = torch.tensor([0, 0])
    assert float(tonal_loss(real * 50, real, tonic)) < 1e-6
    wrong = gan.one_hot(moved).requires_grad_(True)
    loss = tonal_loss(wrong * 50, real, tonic)
    loss.backward()
    assert float(loss.detach()) > 0.01 and wrong.grad.abs().sum() > 0


def test_continuation_of_heldout_passages(tmp_path):
    model = gan.load(tiny_checkpoint(tmp_path / "g.pt"))
    rng = np.random.default_rng(1)
    pieces = [random_melody(rng, 10), random_melody(rng, 5), random_melody(rng, 3)]
    pas, sty = gan_eval.heldout_windows(pieces, [1, 0, 1], every=4)
    assert pas.shape == (3, gan_bars.CTX_BARS, gan_bars.STEPS) and list(sty) == [1, 1, 0]  # bars 4 and 8; bar 4; none
    assert (pas[0] == gan_bars.melody_to_bars(pieces[0], 10)[:4]).all()
    toks, ctxs = gan_eval.continue_passages(model, pas, sty, 2, seed=3)
    assert toks.shape == (3, 2, gan_bars.STEPS) and ctxs.shape == (3, 2, 12)
    assert np.allclose(ctxs[:, 0], gan_bars.pc_profile(pas))  # the first bar hears the held-out passage
    assert (toks == gan_eval.continue_passages(model, pas, sty, 2, seed=3)[0]).all()
    res = gan_eval.continuation_js(model, pieces, [1, 0, 1], bars=4, seed=0, train=pieces)
    assert res["windows"] == 3 and res["notes"] > 0
    for prof in res["key_profile"].values():
        assert len(prof) == 12 and sum(prof) == pytest.approx(1, abs=1e-3)
    # degrees counted from each passage's tonic: D major bars in D put D on degree 0
    d_major = gan_bars.melody_to_bars([(62, 0, 1), (66, 1, 1), (69, 2, 1), (74, 3, 1)], 1)[None]
    assert gan_eval.key_profile(d_major, [2]) == [0.5, 0, 0, 0, 0.25, 0, 0, 0.25, 0, 0, 0, 0]
    assert set(res["gan"]) == set(res["unigram"]) == set(res["passage_unigram"]) == {"pitch_class", "interval"}
    assert gan_eval.continuation_js(model, pieces[2:], [1], bars=4) == {"windows": 0, "bars": 4, "notes": 0}
    # the passage baseline draws only the pitches of the passage it continues
    base = gan_eval.passage_unigram_melodies(pas, [5, 0, 7], seed=1)
    assert [len(m) for m in base] == [5, 0, 7]
    assert {p for p, _, _ in base[2]} <= {p for p, _, _ in gan_bars.bars_to_melody(pas[2])}


def test_train_gan_warm_start_with_augmentation(tmp_path, capsys):
    from midi_bridge.commands.cli import main

    ds = write_dataset(tmp_path / "ds")
    common = ["train-gan", "-d", str(ds), "--steps-per-epoch", "2", "--batch", "8", "--z", "8",
              "--channels", "16", "--cond", "8", "--val-count", "4", "--eval-count", "0", "--epochs", "1",
              "--objective", "wgan-gp", "--n-critic", "1"]
    assert main(common + ["-o", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(common + ["-o", str(tmp_path / "b"), "--init", str(tmp_path / "a" / "last.pt"), "--transpose", "5",
                          "--tonal-weight", "10", "--select", "continuation"]) == 0
    err = capsys.readouterr().err
    assert "starting from the networks of" in err and "val JS" in err
    meta = json.loads(torch.load(tmp_path / "b" / "last.pt", weights_only=True)["meta"])
    assert meta["train_args"]["transpose"] == 5 and meta["train_args"]["tonal_weight"] == 10
    assert main(common + ["-o", str(tmp_path / "c"), "--transpose", "12"]) == 2
    assert "--transpose 12" in capsys.readouterr().err
    assert main(common + ["-o", str(tmp_path / "k"), "--key-normalise", "--select", "continuation"]) == 0
    assert "moved to C" in capsys.readouterr().err
    assert isinstance(gan.load(tmp_path / "k" / "best.pt").gen, gan.KeyNormalised)
    assert main(common + ["-o", str(tmp_path / "k"), "--epochs", "2", "--resume"]) == 0  # stays key-normalised
    assert json.loads(torch.load(tmp_path / "k" / "last.pt", weights_only=True)["meta"])["key_normalised"] is True
    capsys.readouterr()
    assert main(common + ["-o", str(tmp_path / "x"), "--key-normalise", "--transpose", "3"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(common + ["-o", str(tmp_path / "d"), "--init", str(tmp_path / "a" / "best.pt")]) == 2
    assert "no discriminator" in capsys.readouterr().err


def test_key_normalised_generator_is_transposition_equivariant(tmp_path):
    """A key-normalised generator answers a passage in D as it answers the same passage in
    C, a whole tone up; stored as its network, it loads wrapped again."""
    torch.manual_seed(0)
    inner = gan.BarGenerator(gan.GanConfig(**TINY)).eval()
    kn = gan.KeyNormalised(inner).eval()
    c_major = gan_bars.melody_to_bars([(60 + d, i * 0.5, 0.5) for i, d in enumerate([0, 2, 4, 5, 7, 9, 11, 12])], 1)
    prev_c = torch.as_tensor(c_major)
    ctx_c = torch.as_tensor(gan_bars.pc_profile(c_major[None]))
    prev_d = gan.transpose_tokens(prev_c, torch.tensor([2]))
    ctx_d = torch.roll(ctx_c, 2, 1)
    assert list(gan_bars.context_tonic(ctx_c.numpy())) == [0] and list(gan_bars.context_tonic(ctx_d.numpy())) == [2]
    z, style = torch.randn(1, inner.cfg.z), torch.tensor([1])
    with torch.no_grad():
        out_c = kn(z, style, gan.one_hot(prev_c), ctx_c)
        out_d = kn(z, style, gan.one_hot(prev_d), ctx_d)
        plain = inner(z, style, gan.one_hot(prev_c), ctx_c)
    assert torch.allclose(out_c, plain)  # a passage in C is not moved
    assert torch.allclose(out_d[:, 2:gan_bars.N_PITCH], out_c[:, :gan_bars.N_PITCH - 2], atol=1e-6)  # pitches a tone up
    assert torch.allclose(out_d[:, gan_bars.N_PITCH:], out_c[:, gan_bars.N_PITCH:], atol=1e-6)  # HOLD, REST
    assert list(gan_bars.tonic_shift([0, 2, 5, 6, 7, 11])) == [0, 2, 5, -6, -5, -1]
    gan.save(tmp_path / "k.pt", kn, {"styles": ["chorale", "folk"], "key_normalised": True},
             np.tile(c_major, (1, gan_bars.CTX_BARS, 1)), np.array([1]))
    loaded = gan.load(tmp_path / "k.pt")
    assert isinstance(loaded.gen, gan.KeyNormalised) and "inner.fc.weight" not in torch.load(
        tmp_path / "k.pt", weights_only=True)["generator"]
    check_melody(gan_eval.generate_melodies(loaded, 2, bars=2)[0], 2)


def test_train_gan_refuses_a_harmony_dataset(tmp_path, capsys):
    from midi_bridge.commands.cli import main
    from test_model_dataset import make_corpus

    from midi_bridge.training.dataset import prepare

    make_corpus(tmp_path / "src", n=6, voices=4)
    prepare([tmp_path / "src"], tmp_path / "harm", view="harmony", log=lambda *a, **k: None)
    assert main(["train-gan", "-d", str(tmp_path / "harm"), "-o", str(tmp_path / "run"), "--epochs", "1",
                 "--quiet"]) == 2
    assert "is a harmony dataset; the GAN needs a melody dataset (midi-bridge prepare --mono)" in \
        capsys.readouterr().err


def test_train_gan_resume_refuses_another_dataset(tmp_path, capsys):
    from midi_bridge.commands.cli import main

    ds = write_dataset(tmp_path / "ds")
    other = write_dataset(tmp_path / "other")
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps(dict(meta, dataset_hash="another", styles=["a", "b", "c"])))
    common = ["train-gan", "-o", str(tmp_path / "run"), "--steps-per-epoch", "2", "--batch", "8", "--z", "8",
              "--channels", "16", "--cond", "8", "--val-count", "4", "--eval-count", "0", "--quiet"]
    assert main(common + ["-d", str(ds), "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(common + ["-d", str(other), "--epochs", "2", "--resume"]) == 2
    assert "was trained on another dataset" in capsys.readouterr().err
    assert main(common + ["-d", str(ds), "--epochs", "2", "--resume"]) == 0
