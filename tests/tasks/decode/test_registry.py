"""The data-source registry: every source declared once, and a new one is one module plus one line."""
from __future__ import annotations

import sys
import textwrap

import pytest

from infra.config import ConfigError, compose
from infra.storage import Storage
from tasks.clip import Clip, Reject
from tasks.decode import registry
from tasks.decode.sources import decode_clip, decode_or_reject
from tasks.preprocess import list_source


def test_every_registered_source_resolves_and_each_kind_has_one_reader():
    found = registry.sources()
    assert [s.name for s in found] == list(registry.REGISTRY)
    kinds = [k for s in found for k in s.kinds]
    assert len(kinds) == len(set(kinds)) and set(kinds) == {"avsbench_s4", "avsbench_ms3", "avsbench_avss", "video"}
    assert all(registry.source_of_kind(k).decode is not None for k in kinds)
    assert registry.source("synth").prepare is not None and registry.source("synth").prepare_name == "synthavs"


def test_an_unknown_source_is_a_config_error_naming_the_known_ones():
    cfg = compose(["data.source=bogus"])
    with pytest.raises(ConfigError, match=r"data.source must be one of \['avsbench', 'synth', 'videos'\], got 'bogus'"):
        list_source(cfg, Storage())


TOY = '''
    import numpy as np

    from tasks.clip import Clip, ClipRef, Source


    def list_toys(root, data, storage):
        names = sorted(p.rsplit("/", 1)[-1][:-4] for p in storage.listdir(root) if p.endswith(".toy"))
        return [ClipRef(clip_id=n, kind="toy", uri=f"{root}/{n}.toy", split="test") for n in names], []


    def decode_toy(ref, storage, num_frames, frame_size):
        t = num_frames or 3
        level = int(storage.read_text(ref.uri))
        return Clip(clip_id=ref.clip_id, frames=np.full((t, frame_size, frame_size, 3), level, np.uint8),
                    audio=np.zeros(t * 16000, np.float32), logmel=np.zeros((t, 96, 64), np.float32),
                    split=ref.split, source_uri=ref.uri)


    SOURCE = Source("toy", list=list_toys, decode=decode_toy, kinds=("toy",))
'''


def test_a_new_source_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    (tmp_path / "toy_source.py").write_text(textwrap.dedent(TOY))
    data = tmp_path / "toys"
    data.mkdir()
    (data / "a.toy").write_text("10")
    (data / "b.toy").write_text("200")
    (data / "broken.toy").write_text("not a number")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.REGISTRY, "toy", "toy_source")  # the one line
    try:
        storage = Storage()
        refs, rejects = list_source(compose(["data.source=toy", f"data.uri={data}"]), storage)
        assert [r.clip_id for r in refs] == ["a", "b", "broken"] and rejects == []
        clip = decode_clip(refs[1], storage, None, 32)
        assert isinstance(clip, Clip) and clip.num_frames == 3 and int(clip.frames.max()) == 200
        bad = decode_or_reject(refs[2], storage, 2, 32)
        assert isinstance(bad, Reject) and bad.clip_id == "broken" and "ValueError" in bad.reason
    finally:
        sys.modules.pop("toy_source", None)
