"""Export music21's bundled public-domain corpus to MIDI files (``corpus export``).

Needs the optional extra ``corpus`` (``pip install midi-bridge[corpus]`` -> music21).
Collections written (see docs/models.md for the licence situation):

* ``folk/``: O'Neill's 1850, Ryan's Mammoth, Aird's Airs, miscFolk (.abc, public-domain
  sources; chord symbols are dropped, repeats are expanded by music21's MIDI writer).
* ``chorale/``: the Bach chorales (Riemenschneider numbering), every part of the score as
  a track of its own (soprano, alto, tenor, bass, and the instrumental parts of the few
  that have them), from music21's MusicXML encodings: where the corpus also holds a
  Humdrum (.krn) encoding of a chorale (CCARH, "rights to all derivative electronic
  formats reserved"), the MusicXML one is read instead.

Deliberately left out: the Essen folksong collection (non-commercial terms), the
Palestrina encodings (copyrighted encodings), and music21's other polyphonic pieces:
their encodings either state restrictive terms or state none (see ``LICENCE_NOTE``).
"""

from __future__ import annotations

import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

FOLK_COLLECTIONS = ("oneills1850", "ryansMammoth", "airdsAirs", "miscFolk")
EXCLUDED = {"essenFolksong": "non-commercial terms", "palestrina": "copyrighted encodings"}
LICENCE_NOTE = """\
Files exported from music21's bundled corpus (music21 itself: BSD-3-Clause).
folk/: O'Neill's Music of Ireland (1850), Ryan's Mammoth Collection (1883), Aird's
Selection of Scotch, English, Irish and Foreign Airs (1782-1803), miscFolk: transcriptions
of public-domain printed sources.
chorale/: J. S. Bach's chorale harmonisations (public domain), music21's MusicXML
encodings, all four voices (and any instrumental parts), one MIDI track per part.  The
CCARH Humdrum encodings that music21 also holds for three chorales (bach/bwv277.krn,
bwv281.krn, bwv366.krn: "Copyright 1994 CCARH, rights to all derivative electronic
formats reserved") are not used; the MusicXML encodings of those chorales are.
Not exported:
  essenFolksong - non-commercial terms;
  palestrina - copyrighted encodings;
  josquin (.abc) - GPL (Laura Conrad, 1999): a model trained on it could not ship
    under other terms;
  beethoven, mozart, haydn, corelli, handel (Humdrum/MusicXML from CCARH and others),
  monteverdi, trecento, ciconia, luca (modern editions), and the single pieces
  (cpebach, joplin, schubert, schumann, weber, verdi, chopin, ...): the encodings
  state restrictive terms or none, and music21's corpus licence says some encodings
  "may not be used for commercial uses": not shipped in a model without clear terms;
  nottingham-dataset - one file only in music21 (reels a-c), terms not stated.
"""


def _need_music21():
    try:
        import music21  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("corpus export needs music21: pip install 'midi-bridge[corpus]'") from exc
    return music21


def _slug(text: str, limit: int = 40) -> str:
    text = re.sub(r"[^A-Za-z0-9]+", "-", text or "").strip("-")
    return (text[:limit] or "untitled").lower()


def _strip_chord_symbols(score) -> None:
    from music21 import harmony

    for cs in list(score.recurse().getElementsByClass(harmony.ChordSymbol)):
        cs.activeSite.remove(cs)


def _drop_repeated_time_signatures(score) -> None:
    """music21 reuses one TimeSignature object in several measures of some abc tunes, which
    its MIDI writer rejects; time signatures carry nothing MIDI needs, keep the first."""
    from music21 import meter

    for part in score.parts:
        first = True
        for measure in part.getElementsByClass("Measure"):
            for ts in list(measure.getElementsByClass(meter.TimeSignature)):
                if not first:
                    measure.remove(ts)
                first = False


def _export_folk_file(args: tuple[str, str, str]) -> tuple[int, list[str]]:
    """Parse one .abc file (maybe an opus of many tunes) and write one .mid per tune."""
    src, collection, out_dir = args
    from music21 import converter, stream

    errors: list[str] = []
    written = 0
    try:
        parsed = converter.parse(src)
    except Exception as exc:  # a broken file is listed, never fatal
        return 0, [f"{src}: {type(exc).__name__}: {exc}"]
    scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
    stem = Path(src).stem
    for i, score in enumerate(scores):
        title = getattr(score.metadata, "title", None) if score.metadata else None
        dest = Path(out_dir) / collection / f"{_slug(stem, 24)}-{i:03d}-{_slug(title)}.mid"
        try:
            _strip_chord_symbols(score)
            try:
                score.write("midi", fp=str(dest))
            except Exception:
                _drop_repeated_time_signatures(score)
                score.write("midi", fp=str(dest))
            written += 1
        except Exception as exc:
            errors.append(f"{src}#{i}: {type(exc).__name__}: {exc}")
    return written, errors


def _export_chorale(args: tuple[int, str]) -> tuple[int, list[str]]:
    index, out_dir = args
    from music21 import converter, corpus

    try:
        entry = corpus.chorales.ChoraleListRKBWV().byRiemenschneider.get(index)
        if entry is None:
            raise StopIteration
        found = corpus.getWork(f"bach/bwv{entry['bwv']}")
        paths = [Path(p) for p in (found if isinstance(found, list) else [found])]
        paths = [p for p in paths if p.suffix.lower() != ".krn"]  # CCARH: rights reserved
        if not paths:
            return 0, [f"chorale {index}: only a Humdrum encoding (CCARH terms), not exported"]
        score = converter.parse(str(paths[0]))
        name = f"riemenschneider-{index:03d}"
        if len(score.parts) < 2:
            return 0, [f"chorale {index}: fewer than 2 parts"]
        score.write("midi", fp=str(Path(out_dir) / "bach" / f"{name}.mid"))
        return 1, []
    except StopIteration:
        return 0, [f"chorale {index}: not in the corpus"]
    except Exception as exc:
        return 0, [f"chorale {index}: {type(exc).__name__}: {exc}"]


def export(out: str | os.PathLike, *, folk: bool = True, chorales: bool = True, jobs: int = 1,
           limit: int | None = None, log=print) -> dict:
    """Write the corpus under ``out``; returns counts and the list of failures."""
    m21 = _need_music21()
    from music21 import corpus

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "LICENCES.txt").write_text(LICENCE_NOTE)
    tasks: list[tuple] = []
    if folk:
        base = Path(m21.__file__).parent / "corpus"
        for coll in FOLK_COLLECTIONS:
            (out / "folk" / coll).mkdir(parents=True, exist_ok=True)
            files = sorted((base / coll).glob("*.abc"))
            tasks += [(str(f), coll, str(out / "folk")) for f in files]
    chorale_tasks: list[tuple] = []
    if chorales:
        (out / "chorale" / "bach").mkdir(parents=True, exist_ok=True)
        chorale_tasks = [(i, str(out / "chorale")) for i in range(1, 372)]
    if limit is not None:
        tasks, chorale_tasks = tasks[:limit], chorale_tasks[:limit]
    counts = {"folk": 0, "chorale": 0}
    errors: list[str] = []
    t0 = time.monotonic()
    jobs = max(1, int(jobs))
    runner = ProcessPoolExecutor(jobs) if jobs > 1 else None
    try:
        mapper = runner.map if runner else map
        for kind, fn, items in (("folk", _export_folk_file, tasks), ("chorale", _export_chorale, chorale_tasks)):
            for done, (n, errs) in enumerate(mapper(fn, items), 1):
                counts[kind] += n
                errors += errs
                if done % 25 == 0 or done == len(items):
                    log(f"  {kind}: {done}/{len(items)} sources, {counts[kind]} files, "
                        f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    finally:
        if runner:
            runner.shutdown()
    del corpus
    return {"counts": counts, "errors": errors, "excluded": dict(EXCLUDED)}


def cmd_export(args) -> int:
    result = export(args.output, folk=not args.no_folk, chorales=not args.no_chorales,
                    jobs=args.jobs, limit=args.limit)
    for err in result["errors"]:
        print(f"skipped: {err}", file=sys.stderr)
    c = result["counts"]
    print(f"wrote {c['folk']} folk tunes and {c['chorale']} chorales to {args.output} "
          f"({len(result['errors'])} skipped); excluded: "
          + ", ".join(f"{k} ({v})" for k, v in result["excluded"].items()))
    return 0
