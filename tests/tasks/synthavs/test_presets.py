"""SynthAVS presets: the twin / distractor knobs of easy, hard and sync do what they say.

Scenes are sampled with `sample_scene` (no pixels, no samples: cheap); a few clips are also
rendered at a small size to check that the metadata carries the same roles.
"""
from __future__ import annotations

import pytest

from infra.schema.synth import SYNTH_PRESETS, SynthConfig, synth_preset
from tasks.synthavs import generate_clip, sample_scene

N = 200  # scenes per check


def _scenes(cfg: SynthConfig, setting: str = "s4", n: int = N):
    return [sample_scene(cfg, setting, "train", i) for i in range(n)]


def _roles(spec, role: str):
    return [o for o in spec.objects if o.role == role]


def test_the_knob_and_the_presets_values():
    assert SynthConfig().twin_clip_prob == 0.25  # dataclass defaults = hard
    hard, easy, sync = synth_preset("hard"), synth_preset("easy"), synth_preset("sync")
    assert (hard.twin_clip_prob, hard.num_twins_min, hard.num_twins_max) == (0.25, 1, 2)
    assert (hard.num_distractors_min, hard.num_distractors_max) == (1, 3)
    assert (easy.twin_clip_prob, easy.num_twins_min, easy.num_twins_max) == (0.0, 0, 0)
    assert (easy.num_distractors_min, easy.num_distractors_max) == (1, 2)
    assert (sync.preset, sync.twin_clip_prob, sync.num_twins_min, sync.num_twins_max) == ("sync", 1.0, 1, 2)
    assert (sync.num_distractors_min, sync.num_distractors_max) == (0, 2)
    # sync differs from hard only in what its table says (twins in every clip, fewer distractors)
    assert {k for k, v in sync.to_dict().items() if v != hard.to_dict()[k]} == set(SYNTH_PRESETS["sync"])
    assert sorted(SYNTH_PRESETS) == ["easy", "hard", "sync"]


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_bad_twin_clip_prob_names_the_key(value):
    with pytest.raises(ValueError, match=r"synth\.twin_clip_prob must be in \[0, 1\]"):
        SynthConfig(twin_clip_prob=value)
    with pytest.raises(ValueError, match=r"synth\.twin_clip_prob"):
        synth_preset("hard", twin_clip_prob=value)


def test_unknown_preset_lists_sync():
    with pytest.raises(ValueError, match="sync"):
        synth_preset("medium")


@pytest.mark.parametrize("setting", ["s4", "ms3"])
def test_hard_twins_in_a_share_of_clips_distractors_in_every_clip(setting):
    specs = _scenes(synth_preset("hard"), setting)
    with_twins = 0
    for spec in specs:
        sources = {o.category.id for o in _roles(spec, "source")}
        twins, distractors = _roles(spec, "twin"), _roles(spec, "distractor")
        with_twins += bool(twins)
        assert len(twins) <= 2 and all(tw.category.id in sources for tw in twins)
        assert 1 <= len(distractors) <= 3
        assert all(d.category.id not in sources for d in distractors)
        assert not any(o.sounds_at_all for o in twins + distractors)
    # Binomial(200, 0.25): sd ~ 0.031, so +-0.12 is ~4 sd (the scenes are fixed: no flake either way).
    assert abs(with_twins / N - 0.25) <= 0.12
    # a clip with twins holds 1 or 2 of them, and both counts occur
    assert {len(_roles(s, "twin")) for s in specs} == {0, 1, 2}


def test_sync_has_twins_in_every_clip():
    specs = _scenes(synth_preset("sync"))
    for spec in specs:
        sources = {o.category.id for o in _roles(spec, "source")}
        twins, distractors = _roles(spec, "twin"), _roles(spec, "distractor")
        assert 1 <= len(twins) <= 2 and all(tw.category.id in sources for tw in twins)
        assert len(distractors) <= 2 and all(d.category.id not in sources for d in distractors)
    assert {len(_roles(s, "distractor")) for s in specs} == {0, 1, 2}


@pytest.mark.parametrize("preset", ["hard", "easy"])
def test_twin_clip_prob_zero_gives_no_twins(preset):
    cfg = synth_preset(preset, twin_clip_prob=0.0, num_twins_min=1, num_twins_max=2)
    assert not any(_roles(spec, "twin") for spec in _scenes(cfg))


def test_easy_has_no_twins_and_other_category_distractors():
    for spec in _scenes(synth_preset("easy"), n=50):
        sources = {o.category.id for o in _roles(spec, "source")}
        distractors = _roles(spec, "distractor")
        assert not _roles(spec, "twin") and 1 <= len(distractors) <= 2
        assert all(d.category.id not in sources for d in distractors)


def test_twin_clip_prob_one_with_zero_twins_gives_none():
    cfg = synth_preset("sync", num_twins_min=0, num_twins_max=0)
    assert not any(_roles(spec, "twin") for spec in _scenes(cfg, n=20))


@pytest.mark.parametrize("preset", ["hard", "sync"])
def test_rendered_clips_carry_the_roles(preset):
    cfg = synth_preset(preset, frame_height=64, frame_width=64, num_seconds=2)
    # Two clips whose first-attempt scene has twins and two whose has none (sync: the first four).
    has_twins = [bool(_roles(sample_scene(cfg, "s4", "val", i), "twin")) for i in range(40)]
    picks = [i for i, h in enumerate(has_twins) if h][:2] + [i for i, h in enumerate(has_twins) if not h][:2]
    assert len(picks) == (4 if preset == "hard" else 2)
    if preset == "sync":
        picks = [0, 1, 2, 3]
    seen = set()
    for index in picks:
        scene = generate_clip(cfg, "s4", "val", index)
        objects, spec = scene.clip.meta["objects"], scene.spec
        assert scene.clip.meta["preset"] == preset
        assert [(m["role"], m["category_id"]) for m in objects] == [(o.role, o.category.id) for o in spec.objects]
        roles = [m["role"] for m in objects]
        sources = {m["category_id"] for m in objects if m["role"] == "source"}
        if preset == "hard":
            assert 1 <= roles.count("distractor") <= 3
        else:
            assert 1 <= roles.count("twin") <= 2 and roles.count("distractor") <= 2
        if spec.attempt == 0:
            assert ("twin" in roles) == has_twins[index]
        assert all(m["category_id"] in sources for m in objects if m["role"] == "twin")
        assert all(m["category_id"] not in sources for m in objects if m["role"] == "distractor")
        assert not any(any(m["sounding"]) for m in objects if m["role"] != "source")
        seen.update(roles)
    assert "twin" in seen and "distractor" in seen
