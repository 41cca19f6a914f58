"""Quality: do our models tell methods apart on SynthAVS, and how sure is the difference?

    .venv/bin/python bench/quality.py                       # the whole benchmark (2-2.5 h on 2 cores, see below)
    .venv/bin/python bench/quality.py --sets s4 --models combo combo_no_audio   # a part
    .venv/bin/python bench/quality.py --quick               # a smoke run: tiny sets, one epoch

What runs. For each test set (``--sets``): SynthAVS is generated and preprocessed once by the
preprocess flow (``python -m flows.preprocess``), then every model of the set is trained and
evaluated by the training flow itself (``python -m flows.train_combo``, one subprocess per model:
the code a user runs, Ray Train included), with the CPU recipe ``train=synth_cpu``
(``conf/train/synth_cpu.yaml``: frame size, optimiser, schedule, epochs; the benchmark sets no
training knob of its own). Each model gets the same data, epochs and seed. A finished run is
found again on a rerun (same ``train.run_name``) and only evaluated.

Sets: ``s4`` and ``ms3`` on SynthAVS ``hard`` (silent distractors of other categories in every
clip, twins in a quarter of them), ``sync_s4`` on ``sync`` (a twin of the source's category in
every clip: only synchrony over time tells them apart); ``easy_s4`` (only with ``--sets``, a
diagnostic) on ``easy``, where colour and texture follow the category, so that the classical
frame embeddings mine positive pairs of the anchor's category and MoCA's premise holds. All at the recipe's frame size (96 px),
seed 0, 32 val and 128 test clips; train clips: 3000 for ``s4`` (one annotated frame each, as
AVSBench S4 train), 500 for ``ms3`` (five annotated frames each: 2500 frames) and 1000 for
``sync_s4`` (``--train-clips``, ``--set-train-clips``). Models: COMBO-tiny, its ablations
(no audio, no Maskige, no adaptive consistency loss), TPAVI-tiny, AVSAC-tiny (supervised, by
``flows.train_combo``); MoCA-tiny and its two unsupervised baselines, the most salient Maskige
proposal (no audio, learns nothing) and the thresholded audio-visual similarity map (no adapter,
no pixel matching aggregation), by ``flows.train_moca`` from the data set's mined pairs, no mask
read in training; ``sync_s4`` trains COMBO and TPAVI only.

What it prints, per set:
- the Maskige the models see: the mean best-match IoU of each classical mask source against
  SynthAVS's exact objects (``bench/mask_quality.py``) on test clips, and which one the
  benchmark uses (``--mask-source``, chroma by default: the best of the three, see below);
- per model: test mIoU and F-score (AVSBench protocol, from the flow's report), training and
  whole-run wall clock;
- the oracles of the test set (``tasks.synthavs.oracles``): perfect, nothing, every object, every
  object of the sounding categories;
- the paired bootstrap 95% interval (over test videos) of COMBO minus no-audio, of COMBO
  minus TPAVI, and of MoCA minus each baseline (``tasks.evaluate.compare``);
- how much of the gap between the better unsupervised baseline and supervised COMBO MoCA
  closes (``moca_gap_closed``: 0 no better than the baseline, 1 as good as COMBO).

Init (``--init``): ``pretrained`` (the default) starts every tiny model from the project's released
encoders (``weights/synthavs-tiny``: the TinyCNN in both Siam-Encoder branches, the VGGish kept
frozen), as the papers start from pretrained ones, and mines MoCA's pairs from that TinyCNN's frame
embeddings (``preprocess.embed.source=tiny_backbone``); ``scratch`` from random weights and classical
embeddings. Each init has
its own folder of runs and reports (``outputs/bench_quality/<init>``).

Last line: ``{"init": "pretrained" | "scratch", "s4": {"combo": {"miou", "fscore", "train_s", "wall_s"}, "combo_no_audio": ...,
"moca": ..., "moca_baseline_saliency": ..., "moca_baseline_similarity": ..., "oracles": {...},
"combo_minus_no_audio": {"diff", "low", "high", ...}, "moca_minus_saliency": {...}, "moca_minus_similarity": {...},
"moca_gap_closed": ..., "mask_sources": {...}},
"ms3": {...}, "sync_s4": {...}}``.

Time on 2 cores (measured, partly beside other jobs): S4 and sync S4, 8 models, 86 min of training
and evaluation plus about 20 min of generation and preprocessing; MS3's six models on 500 clips
add about 30 min (not measured yet).

Mask source. The classical sources measured on SynthAVS hard S4 test clips (16 clips,
``.venv/bin/python bench/mask_quality.py --size 96 128 --clips 16``): mean best-match IoU
felzenszwalb 0.55 / 0.52 (96 / 128 px; it cuts striped and checked objects into pieces),
slic 0.52 / 0.51, chroma 0.61 / 0.64 with 4-5 segments a frame (about one per object). Chroma
is used: it is the one whose segments are whole objects, as SAM's would be. The benchmark
prints the table again for its own test clips.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import INITS, PRETRAINED_RECIPE, WEIGHTS, init_data_overrides, init_overrides, last_meta, run_logged  # noqa: E402  (bench/, the script's folder)

from infra.config import compose, to_dict  # noqa: E402
from infra.schema.enrich import MaskigeConfig  # noqa: E402
from mask_quality import format_table, measure_mask_sources  # noqa: E402  (bench/, beside this script)
from tasks.evaluate.compare import paired_bootstrap, read_per_video  # noqa: E402
from tasks.synthavs.generate import generate_clip  # noqa: E402
from tasks.synthavs.oracles import ORACLES, OracleScores  # noqa: E402

SUPERVISED = ("combo", "combo_no_audio", "tpavi", "avsac", "combo_no_maskige", "combo_no_consistency")
UNSUPERVISED = ("moca", "moca_baseline_saliency", "moca_baseline_similarity")
ALL_MODELS = SUPERVISED + UNSUPERVISED
SETS = {  # name -> (data preset, setting, models trained, in this order)
    "s4": ("synth_hard", "s4", ALL_MODELS),
    "ms3": ("synth_hard", "ms3", ALL_MODELS),
    "sync_s4": ("synth_sync", "s4", ("combo", "tpavi")),
    # diagnostic, not in the default run: colour and texture follow the category, so that classical
    # frame embeddings mine pairs of one category and MoCA's premise holds
    "easy_s4": ("synth_easy", "s4", ("combo",) + UNSUPERVISED),
}
DEFAULT_SETS = ("s4", "ms3", "sync_s4")
MODELS = {
    "combo": ["model=combo_tiny"],
    "combo_no_audio": ["model=combo_tiny", "model.use_audio=false"],
    "combo_no_maskige": ["model=combo_tiny", "model.use_maskige=false"],
    "combo_no_consistency": ["model=combo_tiny", "model.lambda_ada=0"],
    "tpavi": ["model=tpavi_tiny"],
    "avsac": ["model=avsac_tiny"],
    # unsupervised (flows.train_moca: mined pairs, no mask in training); the saliency baseline
    # learns nothing: its run is its frozen weights (tasks.train.moca.save_training_free)
    "moca": ["model=moca_tiny"],
    "moca_baseline_saliency": ["model=moca_tiny", "model.name=moca_baseline_saliency"],
    "moca_baseline_similarity": ["model=moca_tiny", "model.name=moca_baseline_similarity"],
}
FLOW = {m: "flows.train_moca" if m in UNSUPERVISED else "flows.train_combo" for m in MODELS}
MASK_SOURCES = ("felzenszwalb", "slic", "chroma")


def data_overrides(args: argparse.Namespace, set_name: str, size: int) -> list[str]:
    preset, setting, _ = SETS[set_name]
    out = Path(args.out).resolve()
    return [
        f"data={preset}", f"data.setting={setting}", f"data.uri={Path(args.data_uri or out / 'synthavs').resolve()}",
        f"data.synth.num_train_clips={args.set_train_clips.get(set_name, args.train_clips)}", f"data.synth.num_val_clips={args.val_clips}",
        f"data.synth.num_test_clips={args.test_clips}", f"data.synth.frame_height={size}",
        f"data.synth.frame_width={size}", f"data.synth.seed={args.seed}",
        f"preprocess.output={Path(args.datasets or out / 'datasets').resolve()}", f"preprocess.maskige.classical_method={args.mask_source}",
        *init_data_overrides(args.init, size),
    ]


def mask_source_table(synth_cfg, setting: str, clips: int) -> dict:
    methods = {m: MaskigeConfig(classical_method=m) for m in MASK_SOURCES}
    results = measure_mask_sources(synth_cfg, methods, num_clips=clips, setting=setting, split="test")
    print(format_table(results), flush=True)
    return {m: {"mean_best_iou": r["mean_best_iou"], "segments_per_frame": r["segments_per_frame"]}
            for m, r in results.items()}


def oracles_of(synth_cfg, setting: str, clip_ids: set[str]) -> tuple[dict, OracleScores]:
    """The oracles over the test clips the models were scored on (clip ids of their reports)."""
    scores = OracleScores()
    for i in range(synth_cfg.num_test_clips):
        scene = generate_clip(synth_cfg, setting, "test", i)
        if clip_ids and scene.clip.clip_id not in clip_ids:
            continue
        scores.add(scene.clip.clip_id, scene.id_maps, scene.clip.meta["objects"], scene.clip.masks,
                   scene.clip.gt_frames)
    return scores.totals(), scores


def train_one(args, set_name: str, model: str, data: list[str], run_root: Path, epochs: int) -> dict | None:
    report = run_root / "reports" / set_name / model
    run_name = f"quality-{set_name}-{model}"
    model_overrides = [*MODELS[model], *init_overrides(args.init, model in SUPERVISED)]
    cmd = [sys.executable, "-m", FLOW[model], *data, *model_overrides, f"train={args.recipe}",
           f"train.run_name={run_name}", f"train.storage_path={run_root}/runs", f"evaluate.output={report}",
           *args.train_override]
    ckpt_meta = last_meta(run_root / "runs" / run_name)
    trained_epochs = 0 if model == "moca_baseline_saliency" else epochs  # it learns nothing: epoch 0
    finished = (report / "metrics.json").exists() and ckpt_meta.get("epoch") == trained_epochs
    if not finished and args.only_found:
        print(f"  {model}: no finished run {run_name} (--only-found): not trained", flush=True)
        return None
    if finished:
        wall = float(json.loads((report / "bench_wall.json").read_text())["wall_s"]) if (report / "bench_wall.json").exists() else 0.0
        print(f"  {model}: finished run {run_name} and its report found, not trained again", flush=True)
        changed = recipe_changes(ckpt_meta.get("config", {}).get("train", {}),
                                 to_dict(compose([*data, *model_overrides, f"train={args.recipe}",
                                                  *args.train_override]).train),
                                 ignore=("moca_threshold_split",) if model in SUPERVISED else ())
        if changed and trained_epochs:  # a training-free run does not depend on the recipe
            print(f"  {model}: WARNING: that run was trained with another recipe ({'; '.join(changed)}); delete "
                  f"{run_root / 'runs' / run_name} and {report} to train it with this one", flush=True)
    else:
        print(f"training {model} ...", flush=True)
        wall = run_logged(cmd, run_root / "logs" / f"{set_name}-{model}.log", f"training {model} on {set_name}")
        (report / "bench_wall.json").write_text(json.dumps({"wall_s": wall}))
        ckpt_meta = last_meta(run_root / "runs" / run_name)
    metrics = json.loads((report / "metrics.json").read_text())
    per_video = (report / "per_video.csv").read_text()
    train_s = sum(float(h.get("epoch_s", 0.0)) for h in ckpt_meta.get("history", []))
    return {"miou": float(metrics["miou"]), "fscore": float(metrics["fscore"]), "train_s": round(train_s, 1),
            "wall_s": round(wall, 1), "epochs": len(ckpt_meta.get("history", [])),
            "per_video_miou": read_per_video(per_video, "miou"), "per_video_fscore": read_per_video(per_video, "fscore")}


# train.* settings that name or place a run rather than shape its training
_RUN_PLACE = ("run_name", "storage_path", "dataset", "evaluate", "resume", "resume_from", "hooks", "num_to_keep",
              "max_failures", "collective_timeout_s", "placement_strategy")


def recipe_changes(found: dict, wanted: dict, prefix: str = "train", ignore: tuple[str, ...] = ()) -> list[str]:
    """'key: found -> wanted' for every training setting in which a found run's config differs
    from the recipe asked for (where and how the run was placed left out, and ``ignore``: settings
    the model does not read)."""
    out = []
    for key in sorted(set(found) | set(wanted)):
        if prefix == "train" and (key in _RUN_PLACE or key in ignore):
            continue
        a, b = found.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_changes(a, b, f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}.{key}: {a} -> {b}")
    return out


def run_set(args, set_name: str) -> dict:
    preset, setting, models = SETS[set_name]
    models = [m for m in models if not args.models or m in args.models]
    run_root = Path(args.out).resolve()
    recipe = compose([f"train={args.recipe}", *args.train_override])
    size = recipe.train.loader.image_size
    data = data_overrides(args, set_name, size)
    cfg = compose(data)
    synth_cfg = cfg.data.synth
    print(f"\n=== {set_name}: SynthAVS {synth_cfg.preset} {setting}, {size} px, {synth_cfg.num_train_clips} train / "
          f"{synth_cfg.num_val_clips} val / {synth_cfg.num_test_clips} test clips; recipe train={args.recipe} "
          f"({recipe.train.epochs} epochs, batch {recipe.train.loader.batch_size}, lr {recipe.train.lr}"
          f"{'; supervised models from pretrained starts: ' + ' '.join(PRETRAINED_RECIPE) if args.init == 'pretrained' else ''}) ===",
          flush=True)
    prep_s = run_logged([sys.executable, "-m", "flows.preprocess", *data], run_root / "logs" / f"{set_name}-preprocess.log",
                        f"preprocessing {set_name}")
    print(f"data set ready in {prep_s:.0f} s (generation + preprocess, or found)", flush=True)

    print(f"Maskige sources on {args.mask_clips} test clips (mean best-match IoU against the true objects); "
          f"the models see: {args.mask_source}", flush=True)
    out: dict = {"mask_sources": mask_source_table(synth_cfg, setting, args.mask_clips),
                 "mask_source_used": args.mask_source}

    results = {}
    for model in models:
        r = train_one(args, set_name, model, data, run_root, recipe.train.epochs)
        if r is None:
            continue
        results[model] = r
        print(f"  {model:22s} mIoU {r['miou']:.4f}  F {r['fscore']:.4f}  ({r['epochs']} epochs, train {r['train_s']:.0f} s, "
              f"run {r['wall_s']:.0f} s)", flush=True)

    clip_ids = set(next(iter(results.values()))["per_video_miou"]) if results else set()
    oracles, _ = oracles_of(synth_cfg, setting, clip_ids)
    print(f"\n{set_name}: test mIoU / F-score ({len(clip_ids) or synth_cfg.num_test_clips} videos)")
    print(f"  {'model':30s} {'mIoU':>7s} {'F':>7s} {'train s':>8s}")
    for model, r in results.items():
        print(f"  {model:30s} {r['miou']:7.4f} {r['fscore']:7.4f} {r['train_s']:8.0f}")
    for name in ORACLES:
        print(f"  {'oracle: ' + name:30s} {oracles[name]['miou']:7.4f} {oracles[name]['fscore']:7.4f}")
    for model, r in results.items():
        out[model] = {k: r[k] for k in ("miou", "fscore", "train_s", "wall_s", "epochs")}
    out["oracles"] = oracles
    for a, b, key in (("combo", "combo_no_audio", "combo_minus_no_audio"), ("combo", "tpavi", "combo_minus_tpavi"),
                      ("moca", "moca_baseline_saliency", "moca_minus_saliency"),
                      ("moca", "moca_baseline_similarity", "moca_minus_similarity")):
        if a in results and b in results:
            diff = paired_bootstrap(results[a]["per_video_miou"], results[b]["per_video_miou"], seed=args.seed)
            out[key] = {k: round(v, 4) if isinstance(v, float) else v for k, v in diff.items()}
            print(f"  {a} - {b}: mIoU {diff['diff']:+.4f}, 95% interval [{diff['low']:+.4f}, {diff['high']:+.4f}] "
                  f"(paired bootstrap over {diff['num_clips']} videos)"
                  + ("  <- above zero" if diff["low"] > 0 else "  <- includes zero" if diff["high"] > 0 else ""))
    gap = gap_closed(results)
    if gap is not None:
        out["moca_gap_closed"] = round(gap, 4)
        print(f"  MoCA closes {gap:.0%} of the gap between the better unsupervised baseline and supervised COMBO (mIoU)"
              if gap >= 0 else f"  MoCA is below the better unsupervised baseline: it closes none of the gap to supervised "
              f"COMBO (moca_gap_closed {gap:.2f})")
    return out


def gap_closed(results: dict) -> float | None:
    """(MoCA - the better baseline) / (COMBO - the better baseline), in mIoU: 0 = no better than
    a baseline, 1 = as good as supervised COMBO; None without the four runs or without a gap."""
    names = ("moca", "moca_baseline_saliency", "moca_baseline_similarity", "combo")
    if not all(n in results for n in names):
        return None
    base = max(results["moca_baseline_saliency"]["miou"], results["moca_baseline_similarity"]["miou"])
    span = results["combo"]["miou"] - base
    return (results["moca"]["miou"] - base) / span if span > 0 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), choices=list(SETS))
    p.add_argument("--models", nargs="*", default=None, choices=list(MODELS), help="a subset of each set's models")
    p.add_argument("--train-clips", type=int, default=3000)
    p.add_argument("--set-train-clips", nargs="*", default=["ms3=500", "sync_s4=1000", "easy_s4=1000"], metavar="SET=N",
                   help="train clips of a set, instead of --train-clips (MS3 clips carry 5 annotated frames each, S4 one)")
    p.add_argument("--val-clips", type=int, default=32)
    p.add_argument("--test-clips", type=int, default=128)
    p.add_argument("--mask-clips", type=int, default=16, help="test clips for the Maskige source table")
    p.add_argument("--mask-source", default="chroma", choices=MASK_SOURCES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-uri", default=None, help="where SynthAVS is generated (default OUT/synthavs); found again when complete")
    p.add_argument("--datasets", default=None, help="preprocess.output (default OUT/datasets)")
    p.add_argument("--init", default="pretrained", choices=INITS,
                   help="pretrained: every tiny model starts from the released encoders (weights/synthavs-tiny); "
                        "scratch: from random weights")
    p.add_argument("--out", default=None, help="runs, reports and data (default outputs/bench_quality/<init>)")
    p.add_argument("--recipe", default="synth_cpu", help="conf/train/<recipe>.yaml for every run (a GPU recipe on a GPU machine)")
    p.add_argument("--train-override", nargs="*", default=[],
                   help="extra overrides for every training run (e.g. train.epochs=2); the recipe stays conf/train/synth_cpu.yaml")
    p.add_argument("--only-found", action="store_true",
                   help="train nothing: report the runs finished earlier (under --out) and the oracles")
    p.add_argument("--quick", action="store_true", help="a smoke run: 48 / 8 / 16 clips, one epoch")
    args = p.parse_args()
    try:
        args.set_train_clips = {k: int(v) for k, v in (item.split("=", 1) for item in args.set_train_clips)}
    except ValueError:
        p.error(f"--set-train-clips takes SET=N items, got {args.set_train_clips}")
    unknown = sorted(set(args.set_train_clips) - set(SETS))
    if unknown:
        p.error(f"--set-train-clips: unknown set(s) {unknown}; sets: {list(SETS)}")
    args.out = args.out or str(REPO / "outputs" / "bench_quality" / args.init)
    if args.quick:
        args.train_clips, args.val_clips, args.test_clips, args.mask_clips = 48, 8, 16, 2
        args.train_override = ["train.epochs=1", *args.train_override]
        args.out = str(Path(args.out).with_name(Path(args.out).name + "_quick"))
    started = time.perf_counter()
    print(f"init: {args.init} ({'the encoders of ' + str(WEIGHTS) if args.init == 'pretrained' else 'random weights'})",
          flush=True)
    summary = {"init": args.init, **{name: run_set(args, name) for name in args.sets}}
    print(f"\nbenchmark wall clock {time.perf_counter() - started:.0f} s")
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
