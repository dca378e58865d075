#!/usr/bin/env bash
# Reproduce the tables: methods x datasets x seeds, then a markdown table of final kNN and linear top-1
# (mean ± std over seeds) beside the published numbers, with H(R), I(R;Z) and their ratio, and two figures.
#
#   bash run_all.sh --dry-run                      # print the commands of the full grid, run nothing
#   bash run_all.sh                                # the MI paper's grid: 8 methods x 4 datasets x 3 seeds (GPU-days)
#   bash run_all.sh --methods "sdmi jmi" --datasets cifar10 --seeds "0 1 2"
#   bash run_all.sh --set adadim                   # AdaDim and its comparison set instead of the MI paper's set
#   bash run_all.sh --set vit --datasets cifar10   # the ViT family: DINO (ViT), iBOT, MAE
#   bash run_all.sh --set all                      # every method
#   bash run_all.sh --quick                        # each method a few CPU minutes on CIFAR-10, tiny backbone
#   bash run_all.sh --quick --data-dir PATH        # the same on an image folder (PATH/train/<class>/, PATH/test/)
#   bash run_all.sh --table                        # only rebuild the table and figures from finished runs
#   bash run_all.sh bench [benchmark.py flags]     # throughput benchmark (see benchmark.py --help)
#   bash run_all.sh ... -- --precision fp32        # flags after -- go to every training command
#
# Data: cifar10/cifar100 are downloaded by torchvision into $DATA (default data/); tinyimagenet expects
# $DATA/tiny-imagenet-200, imagenet100 $DATA/imagenet100, imagefolder the folder of --data-dir (default
# $DATA/cifar10_jpeg; ImageFolder layouts with train/ and val/ or test/). A failed run is reported and the grid goes
# on; the exit status is 1 if any failed.
# --quick: CIFAR-10 (downloaded into $DATA if not there), or the image folder of --data-dir; only when CIFAR-10 can
# be neither found nor downloaded (offline) the synthetic dataset, with one line saying so. Each method runs with
# its quick recipe (quick_recipe below, printed in every command), Barlow Twins, SDMI, SimSiam, SwAV and the
# ViT family with two seeds, and the same networks at random init are evaluated for the table's random-init rows
# and gain column.
# Runs land in runs/{dataset}__runall_{quick|full}_{method}__{seed}__{time}; the table is written to
# runs/run_all_{quick|full}.md, the figures beside it: run_all_{quick|full}_{dataset}_mi.png (the MI estimates over
# training, SDMI-paradigm methods in one row, JMI-paradigm in the other: Sabby et al. 2025, Fig. 2) and
# run_all_{quick|full}_{dataset}_dims.png (final kNN against H(R) and against I(R;Z)/H(R), one point per run: AdaDim).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)  # runs/ and data/ are relative to the current directory, as for the scripts
PY=${PYTHON:-python}
DATA=${DATA:-data}

if [ "${1:-}" = bench ]; then shift; exec "$PY" "$HERE/benchmark.py" "$@"; fi

MI_SET="sdmi jmi simclr byol simsiam moco_v3 barlow_twins vicreg"
ADADIM_SET="adadim simclr vicreg nnclr moco_v2 swav deepcluster_v2 dino byol moco_v3 barlow_twins"
VIT_SET="dino_vit ibot mae"
ALL_SET="$MI_SET adadim nnclr moco_v2 swav deepcluster_v2 dino $VIT_SET"
METHODS=$MI_SET; DATASETS="cifar10 cifar100 tinyimagenet imagenet100"; SEEDS="0 1 2"; FOLDER=""
DRY=0; QUICK=0; TABLE_ONLY=0; EXTRA=(); SET_DATASETS=0; SET_SEEDS=0; FAILED=0
die() { echo "error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --quick) QUICK=1 ;;
    --table) TABLE_ONLY=1 ;;
    --methods) [ $# -ge 2 ] || die "--methods needs a value"; METHODS=$2; shift ;;
    --datasets) [ $# -ge 2 ] || die "--datasets needs a value"; DATASETS=$2; SET_DATASETS=1; shift ;;
    --seeds) [ $# -ge 2 ] || die "--seeds needs a value"; SEEDS=$2; SET_SEEDS=1; shift ;;
    --data-dir) [ $# -ge 2 ] || die "--data-dir needs an image folder"; FOLDER=$2; shift ;;
    --set) [ $# -ge 2 ] || die "--set needs mi, adadim, vit or all"
           case "$2" in mi) METHODS=$MI_SET ;; adadim) METHODS=$ADADIM_SET ;; vit) METHODS=$VIT_SET ;;
                        all) METHODS=$ALL_SET ;; *) die "--set is mi, adadim, vit or all" ;; esac; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see bash run_all.sh --help)" ;;
  esac
  shift
done
for m in $METHODS; do [ -f "$HERE/methods/$m.py" ] || die "no method file methods/$m.py"; done
[ -z "$FOLDER" ] || [ -d "$FOLDER/train" ] || die "--data-dir $FOLDER: no train/ folder (an ImageFolder layout)"

cifar10_here() {  # torchvision's CIFAR-10 files in $DATA (the runs verify them)
  for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
    [ -f "$DATA/cifar-10-batches-py/$f" ] || return 1
  done
}
cifar10_download() {  # into $DATA, as the runs would; the exit status says whether it worked
  echo "run_all: downloading CIFAR-10 into $DATA/ ..." >&2
  "$PY" -c "import sys, torchvision; torchvision.datasets.CIFAR10(sys.argv[1], download=True)" "$DATA" >/dev/null 2>&1
}

QUICK_FINETUNE=2  # --quick: MAE's fine-tuning epochs (the paper evaluates MAE by fine-tuning), also for random init
quick_recipe() {  # --quick only: the flags that make a few CPU minutes teach; the rest is the method's own recipe.
  case "$1" in    # Where each comes from is in docs/searches.md; a search at this budget decides.
    # DeepCluster v2's first epoch only fills its memory (no update): that epoch, then the same 300 training steps ($2:
    # steps per epoch of the dataset)
    deepcluster_v2) echo "--epochs $(((300 + $2 - 1) / $2 + 1)) --max-steps $(($2 + 300))" ;;
    # DINO (ResNet): its teacher (EMA 0.9995) barely moves in 300 steps; AdamW as above, last layer free (docs/searches.md)
    dino) echo "--optimizer adamw --lr 2e-3 --weight-decay 1e-6 --freeze-last-layer-epochs 0 --tau-base 0.99" ;;
    simclr) echo "--optimizer adamw --lr 2e-3 --weight-decay 1e-6 --proj-bn" ;;  # the ten-minute CPU recipe
    barlow_twins|byol|simsiam|sdmi|moco_v2) echo "--optimizer adamw --lr 2e-3 --weight-decay 1e-6" ;;  # docs/searches.md
    swav) echo "--optimizer adamw --lr 1e-3 --weight-decay 1e-6 --freeze-prototypes-epochs 0" ;;  # prototypes free
    # The ViTs (vit_mini, docs/searches.md): 2 local crops, smaller heads, last layer free, teacher momentum held at
    # 0.99; DINO (ViT) and iBOT the same 38,400 images in 1200 steps of 32, a tenth of an epoch of warmup, lr 1e-3
    # (1.25e-4 after scaling), 256 prototypes, teacher temperature 0.02; iBOT masks from half an epoch on (step 782 of
    # 1,562; the official --pred_start_epoch: DINO's loss alone before); MAE half the patches masked, lr 3e-3, a tenth
    # of an epoch of warmup, a 2-epoch fine-tune (its head on the mean patch token, mae.py's default)
    dino_vit) echo "--num-local-crops 2 --proj-hidden-dim 512 --num-prototypes 256 --freeze-last-layer-epochs 0" \
                   "--tau-base 0.99 --tau-final 0.99 --warmup-teacher-temp 0.02 --batch-size 32 --max-steps 1200" \
                   "--lr 1e-3 --warmup-epochs 0.1" ;;
    ibot) echo "--num-local-crops 2 --proj-hidden-dim 512 --out-dim 256 --freeze-last-layer-epochs 0 --tau-base 0.99" \
               "--tau-final 0.99 --pred-start-epochs 0.5 --warmup-teacher-temp 0.02 --batch-size 32 --max-steps 1200" \
               "--lr 1e-3 --warmup-epochs 0.1" ;;
    mae) echo "--lr 3e-3 --mask-ratio 0.5 --decoder-dim 128 --decoder-depth 2 --decoder-heads 4" \
              "--warmup-epochs 0.1 --finetune-epochs $QUICK_FINETUNE" ;;
    *) echo "" ;;
  esac
}

TAG=runall_full
COMMON=()
if [ $QUICK = 1 ]; then
  TAG=runall_quick
  [ $SET_SEEDS = 1 ] || SEEDS="0"
  if [ $SET_DATASETS = 0 ] && [ $TABLE_ONLY = 0 ]; then
    if [ -n "$FOLDER" ]; then
      DATASETS="imagefolder"
    elif cifar10_here; then
      DATASETS="cifar10"
    elif [ $DRY = 1 ]; then
      DATASETS="cifar10"; echo "run_all: CIFAR-10 is not in $DATA/ yet: a real run downloads it first (offline: synthetic)" >&2
    elif cifar10_download; then
      DATASETS="cifar10"
    else
      DATASETS="synthetic"
      echo "run_all: CIFAR-10 is not in $DATA/ and cannot be downloaded (offline?): --quick uses --dataset synthetic" >&2
    fi
  fi
  # a few CPU minutes per method: tiny backbone, 300 steps of 128 images, no warmup, metrics every 50 steps
  # (--epochs: the schedules span 390 steps on CIFAR-10, 320 on synthetic)
  COMMON=(--backbone tiny --batch-size 128 --max-steps 300 --warmup-epochs 0 --eval-every 0 --mi-every 50 --save-every 0)
fi

data_dir() {
  case "$1" in
    imagefolder) echo "${FOLDER:-$DATA/cifar10_jpeg}" ;;
    tinyimagenet) echo "$DATA/tiny-imagenet-200" ;;
    imagenet100) echo "$DATA/imagenet100" ;;
    *) echo "$DATA" ;;
  esac
}
steps_per_epoch() {  # --quick: batches of 128 per epoch of a dataset (drop_last)
  case "$1" in
    synthetic) echo $((4096 / 128)) ;;
    imagefolder) local n; n=$(find "$(data_dir imagefolder)/train" -type f | wc -l)
                 echo $(( n >= 256 ? n / 128 : 1 )) ;;
    *) echo $((50000 / 128)) ;;  # CIFAR-10, CIFAR-100
  esac
}
TWO_SEEDS="barlow_twins sdmi simsiam swav dino_vit ibot mae"  # --quick: 2 seeds where a gain was once near or under 3
seeds_of() {  # the seeds of a method (random_init: those of every run)
  if [ $QUICK = 1 ] && [ $SET_SEEDS = 0 ]; then
    for t in $TWO_SEEDS; do case " $1 $([ "$1" = random_init ] && echo "$METHODS") " in *" $t "*) echo "0 1"; return ;; esac; done
  fi
  echo "$SEEDS"
}

if [ $TABLE_ONLY = 0 ]; then
  for d in $DATASETS; do for m in $METHODS; do for s in $(seeds_of "$m"); do
    ep=(); [ $QUICK = 1 ] && { [ "$d" = synthetic ] && ep=(--epochs 10) || ep=(--epochs 1); }
    common=("${COMMON[@]}")  # --quick: the ViT methods take vit_mini with 8-px patches instead of the tiny ResNet
    case " $VIT_SET " in *" $m "*) [ $QUICK = 1 ] && common=("${COMMON[@]/tiny/vit_mini}" --patch-size 8) ;; esac
    [ $QUICK = 1 ] && read -r -a recipe <<< "$(quick_recipe "$m" "$(steps_per_epoch "$d")")" || recipe=()
    cmd=("$PY" "$HERE/methods/$m.py" --dataset "$d" --data-dir "$(data_dir "$d")" --seed "$s" --exp-name "${TAG}_$m"
         "${ep[@]}" "${common[@]}" "${recipe[@]}" "${EXTRA[@]}")
    echo "${cmd[*]}"
    if [ $DRY = 0 ]; then
      "${cmd[@]}" || { echo "run_all: FAILED (exit $?): ${cmd[*]}" >&2; FAILED=$((FAILED + 1)); }
    fi
  done; done; done
  # --quick: the same networks at random init (seeded as the runs), evaluated by the same protocols
  backbones=(); for m in $METHODS; do case " $VIT_SET " in *" $m "*) backbones+=(vit_mini) ;; *) backbones+=(tiny) ;; esac; done
  for d in $([ $QUICK = 1 ] && echo "$DATASETS"); do
    for b in $(printf '%s\n' "${backbones[@]}" | sort -u); do for s in $(seeds_of random_init); do
      ft=0; case " $METHODS " in *" mae "*) [ $b = vit_mini ] && ft=$QUICK_FINETUNE ;; esac
      cmd=("$PY" - "$HERE" "$d" "$(data_dir "$d")" "$b" "$s" "$ft" "runs/${d}__${TAG}_random_init__${s}__$b")
      echo "random init: ${cmd[*]}"
      [ $DRY = 1 ] && continue
      "${cmd[@]}" <<'EOF' || { echo "run_all: FAILED (exit $?): random init ${cmd[*]}" >&2; FAILED=$((FAILED + 1)); }
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
import estimators
from plumbing import augment, backbones, data as datasets, distributed, evaluation
_, _, dataset, data_dir, backbone, seed, ft, out = sys.argv
seed = int(seed)
vit = backbone.startswith("vit")
dev = distributed.pick_device("auto")
torch.manual_seed(seed)  # as common.Run: the seed, the data, then the backbone's weights
data = datasets.load_data(dataset, data_dir, seed, dev)
net, dim = backbones.build_backbone(backbone, data.image_size, 8 if vit else 0)
net = net.to(dev).eval()
mean, std = (torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in (data.mean, data.std))
def norm(x):
    return (x.float() / 255 - mean) / std


def autocast():
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


with autocast():
    (trf, trl), (tef, tel) = (evaluation.extract_features(net, data, s, norm) for s in ("train", "test"))
    view = augment.Augment([augment.ViewSpec(data.image_size)], data.mean, data.std)  # as the runs' held-out view 1
    r = net(view(next(data.eval_batches("test", 256))[0], torch.Generator(dev).manual_seed(12345))[0]).float()
res = dict(method="random_init", dataset=dataset, backbone=backbone, seed=seed, steps=0,
           knn_top1=estimators.knn_top1(trf, trl, tef, tel, data.num_classes),
           linear_top1=estimators.linear_probe(net, trf, trl, tef, tel, data.num_classes, seed=seed),
           H_R=estimators.effective_rank(r))
if int(ft):  # MAE's fine-tuning, its head on the mean patch token (mae.py's default --finetune-pool mean)
    scaler = torch.amp.GradScaler(dev.type, enabled=False)
    res["finetune_top1"] = evaluation.finetune(net, dim, data, norm, autocast, scaler, int(ft), 128, seed, "mean")
elif (Path(out) / "results.json").exists():  # a grid without MAE keeps the fine-tune of one with it (the same network)
    res.update({k: v for k, v in json.loads((Path(out) / "results.json").read_text()).items() if k == "finetune_top1"})
Path(out).mkdir(parents=True, exist_ok=True)
(Path(out) / "results.json").write_text(json.dumps(res, indent=1))
print(f"random init {backbone} on {dataset}, seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items()
                                                                    if isinstance(v, float)))
EOF
    done; done
  done
fi
[ $DRY = 1 ] && exit 0

"$PY" - "$TAG" <<'EOF'
import json, statistics, sys
from pathlib import Path
tag = sys.argv[1]
# Sabby et al. 2025 (arXiv:2510.01345), Table 1: linear top-1, mean of 3 runs; ResNet-50, 800 epochs
# (CIFAR-10, CIFAR-100, TinyImageNet, ImageNet-100). The imagefolder column is CIFAR-10's (the JPEG copy).
PAPER = {"sdmi": (88.61, 57.37, 33.30, 70.73), "sdmi (g)": (88.59, 57.85, 32.94, 70.83), "simsiam": (89.72, 60.45, 19.19, 78.23),
         "byol": (91.28, 63.11, 32.77, 81.09), "moco_v3": (91.10, 58.90, 32.18, 76.86), "jmi": (88.01, 57.22, 32.23, 73.41),
         "simclr": (87.24, 55.32, 33.79, 75.31), "barlow_twins": (85.56, 51.91, 30.26, 78.96), "vicreg": (85.49, 54.00, 32.03, 78.86)}
COLUMN = {"cifar10": 0, "imagefolder": 0, "cifar100": 1, "tinyimagenet": 2, "imagenet100": 3}
# the README's MI table: SDMI paradigm = two branches, one held by a stop-gradient (EMA or alternation); JMI = one encoder
SDMI = ["sdmi", "byol", "simsiam", "moco_v2", "moco_v3", "dino", "dino_vit", "ibot"]
JMI = ["jmi", "simclr", "nnclr", "adadim", "barlow_twins", "vicreg", "swav", "deepcluster_v2"]
latest = {}
for f in sorted(Path("runs").glob(f"*__{tag}_*__*/results.json"), key=lambda p: p.stat().st_mtime):
    r = json.loads(f.read_text()) | {"dir": str(f.parent)}
    latest[(r["dataset"], r["method"], r.get("backbone"), r["seed"])] = r  # the newest run of each
groups = {}
for (d, m, b, _), r in latest.items():
    name = f"random init ({b})" if m == "random_init" else m
    groups.setdefault((d, name), []).append(r)
    for other in ("g", "student"):  # the second network of SDMI (g) and of DINO / iBOT (the student; main = teacher)
        if f"knn_top1_{other}" in r:
            groups.setdefault((d, f"{m} ({other})"), []).append({k[:-len(other) - 1]: v for k, v in r.items()
                                                                  if k.endswith("_" + other)}
                                                                 | {"steps": r["steps"], "backbone": b})
mean = lambda rs, k: statistics.mean(r[k] for r in rs) if all(k in r for r in rs) else None  # noqa: E731
def ms(rs, k, digits=2):
    v = [r[k] for r in rs if k in r]
    if not v:
        return "–"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"
def gain(d, m, rs):  # over the same network at random init (kNN; MAE: fine-tuning, as its paper evaluates it)
    base = groups.get((d, f"random init ({rs[0].get('backbone')})"))
    key = "finetune_top1" if m == "mae" else "knn_top1"
    if m.startswith("random init") or not base or mean(rs, key) is None or mean(base, key) is None:
        return "–"
    return f"{mean(rs, key) - mean(base, key):+.2f}" + (" (fine-tune)" if key == "finetune_top1" else "")
lines = [f"Runs: runs/*__{tag}_*; kNN: cosine k=200 T=0.1 on backbone features; linear: offline probe on frozen features "
         "(see docs/methods.md, Evaluation protocols); gain: kNN top-1 minus that of the same network at random init (MAE: fine-tune top-1 "
         "minus the random init's after the same fine-tuning); imagefolder: an image folder (--data-dir). H(R) = effective "
         "rank of the backbone features (a count of dimensions, the AdaDim paper's notation, not an entropy in nats), "
         "I(R;Z) = matrix Renyi-2 MI (nats) on the held-out batch, so I(R;Z)/H(R) is nats per effective dimension. "
         "Paper: Sabby et al. 2025 Table 1, linear top-1, ResNet-50, 800 epochs (the paper's numbers, not ours).",
         "", "| dataset | method | seeds | steps | kNN top-1 | gain over random init | linear top-1 | paper linear | "
         "H(R) (effective rank) | I(R;Z) | I(R;Z)/H(R) |", "|-|-|-|-|-|-|-|-|-|-|-|"]
for (d, m), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1].startswith("random init"), kv[0][1])):
    for r in rs:
        if "I_RZ" in r:
            r["ratio"] = r["I_RZ"] / max(r["H_R"], 1e-9)
    paper = PAPER.get(m)
    p = f"{paper[COLUMN[d]]:.2f}" if paper and d in COLUMN else "–"
    lines.append(f"| {d} | {m} | {len(rs)} | {rs[0]['steps']} | {ms(rs, 'knn_top1')} | {gain(d, m, rs)} | "
                 f"{ms(rs, 'linear_top1')} | {p} | {ms(rs, 'H_R')} | {ms(rs, 'I_RZ', 3)} | {ms(rs, 'ratio', 4)} |")
out = Path("runs") / f"run_all_{tag.split('_')[1]}.md"
out.parent.mkdir(exist_ok=True)
out.write_text("\n".join(lines) + "\n")
print("\n".join(lines) + f"\n\ntable written to {out}" if groups else f"no finished runs matching runs/*__{tag}_*")

# Figures, per dataset. (a) The MI paper's Figure 2: mi/* over training, SDMI-paradigm methods in one row, JMI in the
# other; mi/* is between the two branches each objective compares (the same network on both views for JMI methods).
# (b) AdaDim's analysis: final kNN against H(R) and against I(R;Z)/H(R), one point per run.
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
EST = [("mi/cos_dv", "cos-DV (nats, lower bound)"), ("mi/infonce", "InfoNCE (nats, <= log 256 = 5.55)"),
       ("mi/jsd", "JSD estimator (not nats: <= 0)")]
for d in sorted({d for d, _, _, _ in latest}):
    runs = [r for (rd, m, _, _), r in latest.items() if rd == d and m != "random_init"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True, squeeze=False)
    for row, (paradigm, members) in enumerate((("SDMI paradigm", SDMI), ("JMI paradigm", JMI))):
        for m in [m for m in members if any(r["method"] == m for r in runs)]:
            acc = [EventAccumulator(r["dir"], size_guidance={"scalars": 0}) for r in runs if r["method"] == m]
            for a in acc:
                a.Reload()
            for ax, (k, label) in zip(axes[row], EST):
                curves = [{e.step: e.value for e in a.Scalars(k)} for a in acc if k in a.Tags()["scalars"]]
                steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
                batch = next(r.get("batch_size", 128) for r in runs if r["method"] == m)  # before it was kept: 128
                ax.plot([s * batch / 1000 for s in steps], [statistics.mean(c[s] for c in curves) for s in steps],
                        marker=".", label=m)
        for ax, (_, label) in zip(axes[row], EST):
            ax.set_title(f"{paradigm}: {label}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7) if ax.lines else None
    for ax in axes[1]:
        ax.set_xlabel("training images seen (thousands)")
    fig.suptitle(f"{d}: MI estimates over training (mean over seeds) on a fixed held-out batch of 256 test images, cosine "
                 "critic T 0.1.\nSDMI paradigm: online branch (with predictor; student) against target branch (EMA, "
                 "stop-gradient or g; teacher); JMI paradigm: one network on both views. x: optimizer steps x batch size.",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(Path("runs") / f"run_all_{tag.split('_')[1]}_{d}_mi.png", dpi=80)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    base = [r for (rd, m, _, _), r in latest.items() if rd == d and m == "random_init"]
    for i, (m, marker) in enumerate(sorted({(r["method"], "s" if r["method"] in SDMI else "o") for r in runs})):
        rs = [r for r in runs if r["method"] == m and "H_R" in r]
        kw = dict(marker=marker, color=plt.get_cmap("tab20")(i % 20), label=m)
        axes[0, 0].scatter([r["H_R"] for r in rs], [r["knn_top1"] for r in rs], **kw)
        axes[0, 1].scatter([r["I_RZ"] / max(r["H_R"], 1e-9) for r in rs if "I_RZ" in r],
                           [r["knn_top1"] for r in rs if "I_RZ" in r], **kw)
    if base:
        axes[0, 0].scatter([r["H_R"] for r in base], [r["knn_top1"] for r in base], marker="x", color="k",
                           label="random init")
    for ax, xl in zip(axes[0], ("H(R): effective rank of the backbone features (count)",
                                "I(R;Z)/H(R): nats per effective dimension")):
        ax.set_xlabel(xl, fontsize=9)
        ax.set_ylabel("final kNN top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{d}: final kNN against dimensionality, one point per run (squares: SDMI paradigm)", fontsize=9)
    fig.tight_layout()
    fig.savefig(Path("runs") / f"run_all_{tag.split('_')[1]}_{d}_dims.png", dpi=80)
    plt.close(fig)
    print(f"figures written to runs/run_all_{tag.split('_')[1]}_{d}_mi.png and _dims.png")
EOF
[ $FAILED = 0 ] || { echo "run_all: $FAILED run(s) failed (see above)" >&2; exit 1; }
