"""SynthAVS: our own generator of sounding scenes with exact ground truth.

K categories of objects, each with a shape and a sound, move over textured backgrounds;
silent distractors share the screen, so audio is needed to tell which object sounds. The
`hard` preset adds, in a share of clips, silent twins of the sounding object's category
(told apart only by audio-visual synchrony), off-screen sounds, background noise, small and
large objects and occlusion; `sync` puts twins in every clip (a synchrony diagnostic).
Clips are written in the AVSBench folder layout (S4, MS3, AVSS) and as mp4 files.

    from infra.schema.synth import synth_preset
    from tasks.synthavs import generate_clip, generate_synthavs
    scene = generate_clip(synth_preset("hard"), "s4", "train", 0)    # scene.clip is a Clip
    summary = generate_synthavs(cfg, "s3://bucket/synthavs", storage)
"""
from tasks.synthavs.categories import CATEGORIES, Category, categories
from tasks.synthavs.generate import (
    FORMATS,
    SynthScene,
    clip_tasks,
    ensure_synthavs,
    generate_clip,
    generate_synthavs,
    synth_root,
    write_clip,
    write_metadata,
)
from tasks.synthavs.scene import FRAME_OFFSET_S, SPLITS, SceneSpec, clip_id, sample_scene

__all__ = [
    "CATEGORIES",
    "Category",
    "FORMATS",
    "FRAME_OFFSET_S",
    "SPLITS",
    "SceneSpec",
    "SynthScene",
    "categories",
    "clip_id",
    "clip_tasks",
    "ensure_synthavs",
    "generate_clip",
    "generate_synthavs",
    "sample_scene",
    "synth_root",
    "write_clip",
    "write_metadata",
]
