#!/usr/bin/env bash
# Reproduce the tables: methods x datasets x seeds, then a markdown table of final kNN and linear top-1
# (mean ± std over seeds) beside the published numbers, with H(R), I(R;Z) and their ratio.
#
#   bash run_all.sh --dry-run                      # print the commands of the full grid, run nothing
#   bash run_all.sh                                # the MI paper's grid: 8 methods x 4 datasets x 3 seeds (GPU-days)
#   bash run_all.sh --methods "sdmi jmi" --datasets cifar10 --seeds "0 1 2"
#   bash run_all.sh --set adadim                   # AdaDim and its comparison set instead of the MI paper's set
#   bash run_all.sh --set vit --datasets cifar10   # the ViT family: DINO (ViT), iBOT, MAE
#   bash run_all.sh --quick                        # every method a few minutes on CPU: tiny backbone, CIFAR-10 copy
#   bash run_all.sh --table                        # only rebuild the table from finished runs
#   bash run_all.sh bench [benchmark.py flags]     # throughput benchmark (see benchmark.py --help)
#   bash run_all.sh ... -- --precision fp32        # flags after -- go to every training command
#
# Data: cifar10/cifar100 are downloaded by torchvision into $DATA (default data/); tinyimagenet expects
# $DATA/tiny-imagenet-200, imagenet100 $DATA/imagenet100, imagefolder $DATA/cifar10_jpeg (ImageFolder layouts with
# train/ and val/ or test/). A failed run is reported and the grid goes on; the exit status is 1 if any failed.
# --quick uses $DATA/cifar10_jpeg (unzipped from $CIFAR10_ZIP, by default ../shared/data/cifar10/cifar10_jpeg.zip
# beside the checkout, when it exists), else the synthetic dataset.
# Runs land in runs/{dataset}__runall_{quick|full}_{method}__{seed}__{time}; the table is
# written to runs/run_all_{quick|full}.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)  # runs/ and data/ are relative to the current directory, as for the scripts
PY=${PYTHON:-python}
DATA=${DATA:-data}

if [ "${1:-}" = bench ]; then shift; exec "$PY" "$HERE/benchmark.py" "$@"; fi

MI_SET="sdmi jmi simclr byol simsiam moco_v3 barlow_twins vicreg"
ADADIM_SET="adadim simclr vicreg nnclr moco_v2 swav deepcluster_v2 dino byol moco_v3 barlow_twins"
VIT_SET="dino_vit ibot mae"
METHODS=$MI_SET; DATASETS="cifar10 cifar100 tinyimagenet imagenet100"; SEEDS="0 1 2"
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
    --set) [ $# -ge 2 ] || die "--set needs mi, adadim or vit"
           case "$2" in mi) METHODS=$MI_SET ;; adadim) METHODS=$ADADIM_SET ;; vit) METHODS=$VIT_SET ;;
                        *) die "--set is mi, adadim or vit" ;; esac; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see bash run_all.sh --help)" ;;
  esac
  shift
done
for m in $METHODS; do [ -f "$HERE/methods/$m.py" ] || die "no method file methods/$m.py"; done

TAG=runall_full
COMMON=()
if [ $QUICK = 1 ]; then
  TAG=runall_quick
  [ $SET_SEEDS = 1 ] || SEEDS="0"
  if [ $SET_DATASETS = 0 ] && [ $TABLE_ONLY = 0 ]; then
    ZIP=${CIFAR10_ZIP:-$HERE/../shared/data/cifar10/cifar10_jpeg.zip}
    if [ -d "$DATA/cifar10_jpeg/train" ] || [ -f "$ZIP" ]; then
      DATASETS="imagefolder"
      if [ ! -d "$DATA/cifar10_jpeg/train" ]; then
        echo "unzip -q $ZIP -d $DATA/cifar10_jpeg"
        [ $DRY = 1 ] || { mkdir -p "$DATA/cifar10_jpeg" && unzip -q "$ZIP" -d "$DATA/cifar10_jpeg"; }
      fi
    else
      DATASETS="synthetic"
    fi
  fi
  # a few CPU minutes per method: tiny backbone, 300 steps of 128 images, no warmup, metrics every 50 steps
  # (--epochs: the schedules span 390 steps on CIFAR-10, 320 on synthetic)
  COMMON=(--backbone tiny --batch-size 128 --max-steps 300 --warmup-epochs 0 --eval-every 0 --mi-every 50 --save-every 0)
fi

data_dir() {
  case "$1" in
    imagefolder) echo "$DATA/cifar10_jpeg" ;;
    tinyimagenet) echo "$DATA/tiny-imagenet-200" ;;
    imagenet100) echo "$DATA/imagenet100" ;;
    *) echo "$DATA" ;;
  esac
}

if [ $TABLE_ONLY = 0 ]; then
  for d in $DATASETS; do for m in $METHODS; do for s in $SEEDS; do
    ep=(); [ $QUICK = 1 ] && { [ "$d" = synthetic ] && ep=(--epochs 10) || ep=(--epochs 1); }
    common=("${COMMON[@]}")  # --quick: the ViT methods take vit_tiny with 8-px patches instead of the tiny ResNet
    case " $VIT_SET " in *" $m "*) [ $QUICK = 1 ] && common=("${COMMON[@]/tiny/vit_tiny}" --patch-size 8) ;; esac
    cmd=("$PY" "$HERE/methods/$m.py" --dataset "$d" --data-dir "$(data_dir "$d")" --seed "$s" --exp-name "${TAG}_$m"
         "${ep[@]}" "${common[@]}" "${EXTRA[@]}")
    echo "${cmd[*]}"
    if [ $DRY = 0 ]; then
      "${cmd[@]}" || { echo "run_all: FAILED (exit $?): ${cmd[*]}" >&2; FAILED=$((FAILED + 1)); }
    fi
  done; done; done
fi
[ $DRY = 1 ] && exit 0

"$PY" - "$TAG" <<'EOF'
import json, statistics, sys
from pathlib import Path
tag = sys.argv[1]
# Sabby et al. 2025 (arXiv:2510.01345), Table 1: linear top-1, mean of 3 runs; ResNet-50, 800 epochs
# (CIFAR-10, CIFAR-100, TinyImageNet, ImageNet-100). The quick table uses cifar10 for the imagefolder CIFAR-10 copy.
PAPER = {"sdmi": (88.61, 57.37, 33.30, 70.73), "sdmi (g)": (88.59, 57.85, 32.94, 70.83), "simsiam": (89.72, 60.45, 19.19, 78.23),
         "byol": (91.28, 63.11, 32.77, 81.09), "moco_v3": (91.10, 58.90, 32.18, 76.86), "jmi": (88.01, 57.22, 32.23, 73.41),
         "simclr": (87.24, 55.32, 33.79, 75.31), "barlow_twins": (85.56, 51.91, 30.26, 78.96), "vicreg": (85.49, 54.00, 32.03, 78.86)}
COLUMN = {"cifar10": 0, "imagefolder": 0, "cifar100": 1, "tinyimagenet": 2, "imagenet100": 3}
latest = {}
for f in sorted(Path("runs").glob(f"*__{tag}_*__*/results.json"), key=lambda p: p.stat().st_mtime):
    r = json.loads(f.read_text())
    latest[(r["dataset"], r["method"], r["seed"])] = r  # the newest run of each (dataset, method, seed)
groups = {}
for (d, m, _), r in latest.items():
    groups.setdefault((d, m), []).append(r)
    for other in ("g", "student"):  # the second network of SDMI (g) and of DINO / iBOT (the student; main = teacher)
        if f"knn_top1_{other}" in r:
            groups.setdefault((d, f"{m} ({other})"), []).append({k[:-len(other) - 1]: v for k, v in r.items()
                                                                  if k.endswith("_" + other)} | {"steps": r["steps"]})
def ms(rs, k, digits=2):
    v = [r[k] for r in rs if k in r]
    if not v:
        return "–"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"
lines = [f"Runs: runs/*__{tag}_*; kNN: cosine k=200 T=0.1 on backbone features; linear: offline probe on frozen features "
         "(see README, Evaluation); imagefolder = the CIFAR-10 JPEG copy of --quick. H(R) = effective rank of backbone features, "
         "I(R;Z) = matrix Renyi-2 MI (nats) on the held-out batch. Paper: Sabby et al. 2025 Table 1, linear top-1, ResNet-50, 800 epochs (the paper's numbers, not ours).",
         "", "| dataset | method | seeds | steps | kNN top-1 | linear top-1 | paper linear | H(R) | I(R;Z) | I(R;Z)/H(R) |",
         "|-|-|-|-|-|-|-|-|-|-|"]
for (d, m), rs in sorted(groups.items()):
    for r in rs:
        r["ratio"] = r["I_RZ"] / max(r["H_R"], 1e-9)
    paper = PAPER.get(m)
    p = f"{paper[COLUMN[d]]:.2f}" if paper and d in COLUMN else "–"
    lines.append(f"| {d} | {m} | {len(rs)} | {rs[0]['steps']} | {ms(rs, 'knn_top1')} | {ms(rs, 'linear_top1')} | {p} | "
                 f"{ms(rs, 'H_R')} | {ms(rs, 'I_RZ', 3)} | {ms(rs, 'ratio', 4)} |")
out = Path("runs") / f"run_all_{tag.split('_')[1]}.md"
out.parent.mkdir(exist_ok=True)
out.write_text("\n".join(lines) + "\n")
print("\n".join(lines) + f"\n\ntable written to {out}" if groups else f"no finished runs matching runs/*__{tag}_*")
EOF
[ $FAILED = 0 ] || { echo "run_all: $FAILED run(s) failed (see above)" >&2; exit 1; }
