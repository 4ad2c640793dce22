"""The training pipeline's data: readers for the real datasets (Speech Commands v2, COCO VWW folders) and the synthetic
KWS set's voice split and plans, numpy only; one test runs the synthesisers where they are installed."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyhost.features.mfcc import write_wav

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from models.pipeline import kws_data  # noqa: E402


def _tone(hz, seconds=1.0):
    t = np.arange(int(16000 * seconds)) / 16000
    return 0.3 * np.sin(2 * np.pi * hz * t)


def test_speech_commands_layout_is_split_by_its_lists(tmp_path):
    for word in ("yes", "no", "cat", "dog"):
        (tmp_path / word).mkdir()
        for i in range(4):
            write_wav(tmp_path / word / f"s{i}_nohash_0.wav", _tone(200 + 50 * i, 0.8))
    (tmp_path / "_background_noise_").mkdir()
    write_wav(tmp_path / "_background_noise_" / "white.wav", np.random.default_rng(0).normal(0, 0.1, 48000))
    (tmp_path / "testing_list.txt").write_text("yes/s0_nohash_0.wav\nno/s0_nohash_0.wav\ncat/s0_nohash_0.wav\n")
    (tmp_path / "validation_list.txt").write_text("yes/s1_nohash_0.wav\n")
    data = kws_data.speech_commands(tmp_path, seed=1)
    x, y, sources = data["test"]
    assert sorted(kws_data.LABELS[i] for i in y) == ["no", "unknown", "yes"] and x.shape[1] == 16000
    assert set(sources) == {"speech-commands"}
    train_names = sorted(kws_data.LABELS[i] for i in data["train"][1])
    # 2 yes + 3 no; unknown words capped to ~10 % of the set (at least one); silence ~10 % (none of 6 here)
    assert train_names == ["no", "no", "no", "unknown", "yes", "yes"]
    assert np.all(np.abs(x[:, 12800:]) == 0)                    # 0.8 s clips zero-padded to 1 s


def test_not_speech_commands_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="Speech Commands"):
        kws_data.speech_commands(tmp_path, seed=1)


def test_vww_folders_are_resized_and_split(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    from models.pipeline import vww_data
    for label, colour in (("person", (200, 150, 120)), ("non_person", (20, 200, 30))):
        (tmp_path / label).mkdir()
        for i in range(10):
            Image.new("RGB", (64 + i, 48), colour).save(tmp_path / label / f"{i}.jpg")
    data = vww_data.vww_folders(tmp_path, seed=1)
    assert sum(len(y) for _, y in data.values()) == 20
    x, y = data["train"]
    assert x.shape[1:] == (96, 96, 3) and x.dtype == np.uint8 and len(y) == 16
    greenish = x[:, 48, 48, 1] > 150
    assert np.array_equal(greenish, y == 0)                      # labels follow the folders


def test_synthetic_speech_split_keeps_voices_and_people_apart():
    variants = [f"v{i}" for i in range(20)]
    split = kws_data.split_speakers(variants, seed=3)
    espeak = {s: [v for v in split[s] if kws_data.engine_of(v) == "espeak-ng"] for s in split}
    assert sorted(espeak["train"] + espeak["val"] + espeak["test"]) == sorted(f"espeak-ng:{v}" for v in variants)
    assert not set(espeak["train"]) & set(espeak["test"]) and len(espeak["test"]) == 4
    # flite's and festival's voices go by the person recorded: the test people's voices are in no other split
    assert set(kws_data.PERSON) == ({f"flite:{v}" for v in kws_data.FLITE_VOICES}
                                    | {f"festival:{v}" for v in kws_data.FESTIVAL_VOICES})
    for name in ("train", "val"):
        assert not {kws_data.PERSON.get(v) for v in split[name]} & set(kws_data.TEST_PEOPLE)
    assert {kws_data.PERSON.get(v) for v in split["test"]} - {None} == set(kws_data.TEST_PEOPLE)
    for engine in kws_data.ENGINES:                   # every synthesiser has voices to train on and to test on
        assert any(kws_data.engine_of(v) == engine for v in split["train"])
        assert any(kws_data.engine_of(v) == engine for v in split["test"])
    assert split == kws_data.split_speakers(variants, seed=3)


def test_synthesis_plan_draws_each_split_from_its_own_voices():
    split = kws_data.split_speakers([f"v{i}" for i in range(20)], seed=3)
    counts = {"train": (20, 40), "val": (2, 4), "test": (10, 20)}
    jobs = kws_data._plan(1, counts, split)
    assert jobs == kws_data._plan(1, counts, split)
    assert all(p["voice"] in split[s] for s, _, _, p in jobs)
    engines = [kws_data.engine_of(p["voice"]) for _, _, _, p in jobs]
    assert set(engines) == set(kws_data.ENGINES)
    assert 0.4 < engines.count("espeak-ng") / len(engines) < 0.6


def _npm_tarball(path, folder, files):
    import io
    import tarfile
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(folder + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_emoji_designs_from_npm_tarballs_are_found_by_code_points(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    import io
    import shutil
    from PIL import Image
    from models.pipeline import vww_data
    monkeypatch.setattr(vww_data, "NPM_DIR", tmp_path)
    png = io.BytesIO()
    Image.new("RGBA", (64, 64), (250, 10, 10, 255)).save(png, format="PNG")
    # Twemoji names files by code point in lower case, here with the variation selector that the catalogue lacks
    _npm_tarball(vww_data.npm_tarball("twemoji"), vww_data.NPM_SOURCES["twemoji"][2],
                 {"1f9d1-200d-1f692.png": png.getvalue(), "1f3c3-fe0f.png": png.getvalue()})
    catalogue = [("\U0001F9D1\u200D\U0001F692", "firefighter", 1, "person-role"),
                 ("\U0001F3C3", "person running", 1, "person-activity"),
                 ("\U0001F34E", "red apple", 0, "food-fruit")]               # not in the tarball: no glyph
    glyphs = vww_data.render_glyphs(catalogue, "twemoji")
    assert [(b, lab) for _, b, lab, _ in glyphs] == [("firefighter", 1), ("person running", 1)]
    g = glyphs[0][0]
    assert g.shape == (vww_data.GLYPH_PX, vww_data.GLYPH_PX, 4) and tuple(g[40, 40]) == (250, 10, 10, 255)
    if shutil.which("rsvg-convert"):                 # OpenMoji: upper-case SVG names, drawn by rsvg-convert
        svg = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">'
               b'<rect x="16" y="6" width="40" height="60" fill="#00ff00"/></svg>')
        _npm_tarball(vww_data.npm_tarball("openmoji"), vww_data.NPM_SOURCES["openmoji"][2],
                     {"1F34E.svg": svg})
        (g, base, label, _), = vww_data.render_glyphs(catalogue, "openmoji")
        assert (base, label) == ("red apple", 0)
        assert tuple(g[40, 40]) == (0, 255, 0, 255) and g[40, 2, 3] == 0    # cropped to the rectangle, centred


def test_a_missing_npm_tarball_says_how_to_fetch_it(tmp_path, monkeypatch):
    from models.pipeline import vww_data
    monkeypatch.setattr(vww_data, "NPM_DIR", tmp_path)
    with pytest.raises(SystemExit, match="npm pack openmoji@"):
        vww_data.render_glyphs([("\U0001F34E", "red apple", 0, "food-fruit")], "openmoji")


def test_a_base_emoji_falls_in_one_split_in_every_design_source():
    from models.pipeline import vww_data
    tones = ("", " light", " dark")
    noto = [(None, f"p{i}", 1, "person") for i in range(40) for _ in tones] + \
           [(None, f"t{i}", 0, "food-fruit") for i in range(40)]
    other = [(None, b, lab, sub) for _, b, lab, sub in noto if b != "p3"] + [(None, "extra", 1, "person")]

    def named(glyphs):                                   # the "image" of a glyph is its base name here
        return [(b, b, lab, sub) for _, b, lab, sub in glyphs]

    def bases_per_split(parts):
        return {s: sorted({g for lab in (0, 1) for g, _ in parts[s][lab]}) for s in parts}

    noto_where = bases_per_split(vww_data.split_by_base(named(noto), seed=5))
    other_where = bases_per_split(vww_data.split_by_base(named(other), seed=5, bases_of=named(noto)))
    assert len(noto_where["test"]) == 6 + 6 and noto_where["test"]          # 15 % of 40 people and 40 things
    for s in ("val", "test"):
        assert other_where[s] == [b for b in noto_where[s] if b != "p3"]
    assert "extra" in other_where["train"]               # a base emoji only another source draws: training


def test_extra_people_utterances_are_training_voices_of_the_training_people_only():
    split = kws_data.split_speakers([f"v{i}" for i in range(20)], seed=3)
    jobs = kws_data._people_plan(1, (10, 20), split)
    assert jobs == kws_data._people_plan(1, (10, 20), split)
    assert len(jobs) == 10 * len(kws_data.KEYWORDS) + 20
    assert {s for s, _, _, _ in jobs} == {"train"}
    voices = {p["voice"] for _, _, _, p in jobs}
    assert voices <= set(split["train"]) and {kws_data.engine_of(v) for v in voices} == {"flite", "festival"}
    assert not {kws_data.PERSON[v] for v in voices} & set(kws_data.TEST_PEOPLE)
    # every rendering has its own pitch; festival's also the spread the diphone voices' intonation takes
    assert all(p["f0_hz"] and ("f0_std_hz" in p) == (kws_data.engine_of(p["voice"]) == "festival")
               for _, _, _, p in jobs)


@pytest.mark.skipif(not all(shutil.which(c) for c in ("espeak-ng", "flite", "festival", "sox")),
                    reason=f"needs the synthesisers: apt-get install {' '.join(kws_data.PACKAGES)}")
def test_extra_people_utterances_leave_the_other_clips_as_they_were():
    counts = {"train": (1, 2), "val": (1, 1), "test": (1, 1)}
    silence = {"train": 2, "val": 1, "test": 1}
    plain, speakers = kws_data.synthetic(5, counts, silence, people_extra=(0, 0))
    more, _ = kws_data.synthetic(5, counts, silence, people_extra=(1, 2))
    for split in ("val", "test"):
        assert all(np.array_equal(a, b) for a, b in zip(plain[split], more[split]))
    n = len(plain["train"][1])
    assert all(np.array_equal(a, b[:n]) for a, b in zip(plain["train"], more["train"]))
    extra = more["train"][2][n:]
    assert len(extra) == 2 * (len(kws_data.KEYWORDS) + 2) and set(extra) <= {"flite", "festival"}
