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
#   bash run_all.sh --lightly                      # lightly's CIFAR-10 benchmark: 8 ResNet methods, 200 epochs
#   bash run_all.sh --table                        # only rebuild the table and figures from finished runs
#   bash run_all.sh --jobs 4                       # 4 runs at a time (several GPUs: each run its own, in turn)
#   bash run_all.sh --slurm --sbatch "--partition gpu --time 8:00:00 --gres gpu:1 --cpus-per-task 8"
#                                                  # one SLURM array task per run; then --table when they are done
#   bash run_all.sh --slurm --nproc 4 --sbatch "--gres gpu:4 ..."  # each task under torchrun on 4 GPUs
#   bash run_all.sh --slurm --dry-run              # print the sbatch script, submit nothing
#   bash run_all.sh bench [benchmark.py flags]     # throughput benchmark (see benchmark.py --help)
#   bash run_all.sh ... -- --precision fp32        # flags after -- go to every training command
#
# Data: cifar10/cifar100 are downloaded by torchvision into $DATA (default data/); tinyimagenet expects
# $DATA/tiny-imagenet-200, imagenet100 $DATA/imagenet100, imagefolder the folder of --data-dir (default
# $DATA/cifar10_jpeg; ImageFolder layouts with train/ and val/ or test/). A failed run is reported and the grid goes
# on; the exit status is 1 if any failed.
# --quick: CIFAR-10 (downloaded into $DATA if not there), or the image folder of --data-dir; only when CIFAR-10 can
# be neither found nor downloaded (offline) the synthetic dataset, with one line saying so. Each method runs with
# its quick recipe (quick_recipe below, printed in every command), AdaDim, Barlow Twins, DINO, SDMI, SimSiam, SwAV
# and the ViT family with two seeds, and the same networks at random init are evaluated for the table's random-init
# rows and gain column.
# --lightly: simclr byol dino moco_v2 nnclr simsiam swav barlow_twins at lightly's CIFAR-10 budget (ResNet-18, batch
# 512, 200 epochs, kNN every 10 epochs; MoCo v2 with 8,192 keys), each with its own recipe; the table
# runs/run_all_lightly.md puts the final and the best kNN beside lightly's numbers, with minutes and device.
# Each run has its own directory, runs/{dataset}__runall_{full|quick|lightly}_{method}__{seed}, and its output in
# runs/logs/{that name}.log. Run again, a grid skips the finished runs (results.json), resumes the interrupted ones
# (--resume DIR/last.pt), and moves a directory with neither aside (DIR.aside-{time}) before starting it afresh;
# every run saves last.pt every 5 minutes (--save-every-minutes). Ctrl-C or SIGTERM: each running run saves and
# stops, and the grid stops. The table is written to runs/run_all_{quick|full}.md, the figures beside it:
# run_all_{quick|full}_{dataset}_mi.png (the MI estimates over training, SDMI-paradigm methods in one row,
# JMI-paradigm in the other: Sabby et al. 2025, Fig. 2) and run_all_{quick|full}_{dataset}_dims.png (final kNN
# against H(R) and against I(R;Z)/H(R), one point per run: AdaDim).
# --jobs N: N runs at once on this machine; with several GPUs (CUDA_VISIBLE_DEVICES or nvidia-smi -L) each run gets
# its own through CUDA_VISIBLE_DEVICES, in turn (--nproc N: N each), else they share the GPU or the CPU; each run's
# output goes to its log only. The random-init evaluation and the table come after all runs.
# --slurm: the grid as one SLURM array job, one task per run (--quick: one more for the random inits), written to
# runs/slurm/ and submitted with sbatch; --sbatch "OPTIONS" (repeatable) go to sbatch; --nproc N runs each task under
# torchrun with N processes per node (several nodes: --sbatch "--nodes 2", one torchrun per node through srun).
# Each task gets USR1 5 minutes before its time limit (--signal=B:USR1@300): its run saves and stops, and the task
# requeues itself (scontrol requeue) to resume it; --requeue lets SLURM requeue a preempted task. See docs/cluster.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)  # runs/ and data/ are relative to the current directory, as for the scripts
PY=${PYTHON:-python}
DATA=${DATA:-data}

if [ "${1:-}" = bench ]; then shift; exec "$PY" "$HERE/benchmark.py" "$@"; fi

cores() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1; }  # (nproc heeds OMP_NUM_THREADS)
describe_device() {  # the GPUs this process may use (their names, from nvidia-smi), else the CPU
  local visible=${CUDA_VISIBLE_DEVICES-} names="" query=(--query-gpu=name --format=csv,noheader)
  if command -v nvidia-smi >/dev/null 2>&1; then
    [ -z "$visible" ] || names=$(nvidia-smi "${query[@]}" -i "$visible" 2>/dev/null || true)
    [ -n "$names" ] || names=$(nvidia-smi "${query[@]}" 2>/dev/null || true)
  fi
  if [ -n "$names" ]; then  # "NVIDIA H100 80GB HBM3", "2 x NVIDIA H100 80GB HBM3"
    printf '%s\n' "$names" | sort | uniq -c | awk '{ n = $1; sub(/^ *[0-9]+ /, "") }
      { printf "%s%s%s", (NR > 1 ? ", " : ""), (n > 1 ? n " x " : ""), $0 }' | tr -d '\n'
    echo "${visible:+ (CUDA_VISIBLE_DEVICES=$visible)}"
  elif [ -n "$visible" ]; then
    echo "CUDA_VISIBLE_DEVICES=$visible"
  else
    echo "CPU, $(cores) cores$(sed -n 's/^model name[^:]*: /: /p' /proc/cpuinfo 2>/dev/null | head -n 1)"
  fi
}

cell_state() {  # a grid run's directory: finished (results.json, newer than last.pt), resume (last.pt), aside (neither)
  local dir=$1  #   or new (no directory)
  if [ -f "$dir/results.json" ] && ! [ "$dir/last.pt" -nt "$dir/results.json" ]; then
    echo finished
  elif [ -f "$dir/last.pt" ]; then
    echo resume
  elif [ -e "$dir" ]; then
    echo aside
  else
    echo new
  fi
}

# cell DIR SHOW COMMAND...: one run of the grid in its own directory DIR (what a SLURM task runs: run_all.sh --cell).
# A finished run is skipped; an interrupted one resumes (COMMAND --resume DIR/last.pt); a directory with neither (a run
# killed before its first checkpoint) is moved aside, never deleted, and the run starts afresh (COMMAND --run-dir DIR).
# The run's output goes to runs/logs/NAME.log (SHOW=1: to stdout too). COMMAND replaces this shell (exec), so a signal
# sent to this process reaches the run itself.
cell() {
  local dir=$1 show=$2 name=${1##*/} logs how=(--run-dir "$1") aside where rc=0
  shift 2
  logs=$(dirname "$dir")/logs
  mkdir -p "$logs"
  if command -v flock >/dev/null 2>&1; then  # one process per run directory, even if a grid is submitted twice
    exec 9>>"$logs/$name.lock"
    flock -n -E 75 9 || rc=$?
    [ $rc != 75 ] || { echo "run_all: $dir is being run by another process ($logs/$name.lock): skipped"; exit 0; }
    [ $rc = 0 ] || echo "run_all: cannot lock $logs/$name.lock (flock: exit $rc); going on without the lock" >&2
  fi
  case $(cell_state "$dir") in
    finished) echo "run_all: $dir is finished (results.json): skipped"; exit 0 ;;
    resume) how=(--resume "$dir/last.pt")
            echo "run_all: $dir resumes from its last.pt" ;;
    aside) aside=$dir.aside-$(date +%Y%m%d-%H%M%S)
           if ! rmdir "$dir" 2>/dev/null; then
             mv "$dir" "$aside"
             echo "run_all: $dir has neither results.json nor last.pt: moved to $aside; the run starts afresh"
           fi ;;
  esac
  where=$(hostname)
  if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
    where+=", SLURM job ${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID (id $SLURM_JOB_ID)"
  elif [ -n "${SLURM_JOB_ID:-}" ]; then
    where+=", SLURM job $SLURM_JOB_ID"
  fi
  { echo "run_all: $(date '+%F %T') on $where; device: $(describe_device)"
    echo "run_all: $* ${how[*]}"; } >>"$logs/$name.log"
  if [ "$show" = 1 ]; then  # tee ignores SIGINT and SIGTERM: it outlives the run and keeps its last lines
    exec > >(trap '' INT TERM; exec tee -a "$logs/$name.log") 2>&1
  else
    exec >>"$logs/$name.log" 2>&1
  fi
  exec "$@" "${how[@]}"
}
if [ "${1:-}" = --cell ]; then shift; cell "$@"; fi

MI_SET="sdmi jmi simclr byol simsiam moco_v3 barlow_twins vicreg"
ADADIM_SET="adadim simclr vicreg nnclr moco_v2 swav deepcluster_v2 dino byol moco_v3 barlow_twins"
VIT_SET="dino_vit ibot mae"
ALL_SET="$MI_SET adadim nnclr moco_v2 swav deepcluster_v2 dino $VIT_SET"
LIGHTLY_SET="simclr byol dino moco_v2 nnclr simsiam swav barlow_twins"  # lightly's CIFAR-10 benchmark, ResNet methods
METHODS=$MI_SET; DATASETS="cifar10 cifar100 tinyimagenet imagenet100"; SEEDS="0 1 2"; FOLDER=""
DRY=0; QUICK=0; LIGHTLY=0; TABLE_ONLY=0; RANDOM_ONLY=0; EXTRA=(); SET_DATASETS=0; SET_SEEDS=0; SET_METHODS=0; FAILED=0
JOBS=1; NPROC=1; SLURM=0; SBATCH_OPTS=()
SAVE_MINUTES=5  # every grid run saves last.pt this often: a SIGKILL (node failure) loses at most these minutes
SIGNAL_LEAD=300  # --slurm: USR1 this many seconds before the time limit (the run saves, the task requeues itself)
die() { echo "error: $*" >&2; exit 2; }
count() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive number"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --quick) QUICK=1 ;;
    --lightly) LIGHTLY=1 ;;
    --table) TABLE_ONLY=1 ;;
    --random-init) RANDOM_ONLY=1 ;;  # --quick: only the random-init evaluations (a --slurm grid's last task)
    --methods) [ $# -ge 2 ] || die "--methods needs a value"; METHODS=$2; SET_METHODS=1; shift ;;
    --datasets) [ $# -ge 2 ] || die "--datasets needs a value"; DATASETS=$2; SET_DATASETS=1; shift ;;
    --seeds) [ $# -ge 2 ] || die "--seeds needs a value"; SEEDS=$2; SET_SEEDS=1; shift ;;
    --data-dir) [ $# -ge 2 ] || die "--data-dir needs an image folder"; FOLDER=$2; shift ;;
    --set) [ $# -ge 2 ] || die "--set needs mi, adadim, vit or all"
           case "$2" in mi) METHODS=$MI_SET ;; adadim) METHODS=$ADADIM_SET ;; vit) METHODS=$VIT_SET ;;
                        all) METHODS=$ALL_SET ;; *) die "--set is mi, adadim, vit or all" ;; esac
           SET_METHODS=1; shift ;;
    --jobs) [ $# -ge 2 ] || die "--jobs needs a number"; count --jobs "$2"; JOBS=$2; shift ;;
    --nproc) [ $# -ge 2 ] || die "--nproc needs a number"; count --nproc "$2"; NPROC=$2; shift ;;
    --slurm) SLURM=1 ;;
    --sbatch) [ $# -ge 2 ] || die "--sbatch needs sbatch's options, e.g. --sbatch \"--partition gpu --time 4:00:00\""
              read -r -a opts <<< "$2"; SBATCH_OPTS+=("${opts[@]}"); shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see bash run_all.sh --help)" ;;
  esac
  shift
done
for m in $METHODS; do [ -f "$HERE/methods/$m.py" ] || die "no method file methods/$m.py"; done
[ -z "$FOLDER" ] || [ -d "$FOLDER/train" ] || die "--data-dir $FOLDER: no train/ folder (an ImageFolder layout)"
[ $QUICK = 0 ] || [ $LIGHTLY = 0 ] || die "--quick and --lightly are two different grids: one at a time"
[ $LIGHTLY = 0 ] || [ $SET_METHODS = 0 ] || for m in $METHODS; do
  case " $LIGHTLY_SET " in *" $m "*) ;; *) die "--lightly: $m is not one of lightly's methods ($LIGHTLY_SET)" ;; esac
done
[ $SLURM = 1 ] || [ ${#SBATCH_OPTS[@]} = 0 ] || die "--sbatch goes with --slurm"
[ $SLURM = 0 ] || [ $JOBS = 1 ] || die "--jobs is for runs on this machine; SLURM runs the tasks as resources allow"
[ $RANDOM_ONLY = 0 ] || [ $QUICK = 1 ] || die "--random-init goes with --quick"

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
    # DINO (ResNet): its teacher (EMA 0.9995) barely moves in 300 steps: AdamW, last layer free, teacher momentum held
    # at 0.99, and the ViTs' lr 1e-3, tenth of an epoch of warmup, 512-wide head with 256 prototypes and teacher
    # temperature 0.02 (docs/searches.md: the seventh search, chosen on seeds 0-1, held on seeds 2-4)
    dino) echo "--optimizer adamw --lr 1e-3 --weight-decay 1e-6 --warmup-epochs 0.1 --freeze-last-layer-epochs 0" \
               "--tau-base 0.99 --tau-final 0.99 --proj-hidden-dim 512 --num-prototypes 256 --warmup-teacher-temp 0.02" ;;
    simclr) echo "--optimizer adamw --lr 2e-3 --weight-decay 1e-6 --proj-bn" ;;  # the ten-minute CPU recipe
    barlow_twins|byol|simsiam|sdmi|moco_v2|adadim) echo "--optimizer adamw --lr 2e-3 --weight-decay 1e-6" ;;  # searches.md
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
if [ $LIGHTLY = 1 ]; then
  # lightly's CIFAR-10 benchmark (docs.lightly.ai, benchmarks): ResNet-18 (the CIFAR stem is automatic at 32 px),
  # batch 512, 200 epochs, kNN (k 200, T 0.1: what every run reports) every 10 epochs; each method keeps its own recipe
  TAG=runall_lightly
  [ $SET_METHODS = 1 ] || METHODS=$LIGHTLY_SET
  [ $SET_DATASETS = 1 ] || DATASETS="cifar10"
  [ $SET_SEEDS = 1 ] || SEEDS="0"
  COMMON=(--backbone resnet18 --batch-size 512 --epochs 200 --eval-every 10)
fi
lightly_recipe() {  # --lightly only: lightly's settings a method file has a flag for
  case "$1" in
    moco_v2) echo "--queue-size 8192" ;;  # lightly's memory bank of 8,192 keys (ours: a queue per view, as solo-learn)
    *) echo "" ;;
  esac
}

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
# --quick: 2 seeds where a gain was once near or under 3, or a seed nobody tuned on fell under +1.5
TWO_SEEDS="adadim barlow_twins sdmi simsiam swav dino dino_vit ibot mae"
seeds_of() {  # the seeds of a method (random_init: those of every run)
  if [ $QUICK = 1 ] && [ $SET_SEEDS = 0 ]; then
    for t in $TWO_SEEDS; do case " $1 $([ "$1" = random_init ] && echo "$METHODS") " in *" $t "*) echo "0 1"; return ;; esac; done
  fi
  echo "$SEEDS"
}

random_init() {  # --quick: the same networks at random init (seeded as the runs), evaluated by the same protocols
  local backbones=() d b s ft cmd
  for m in $METHODS; do case " $VIT_SET " in *" $m "*) backbones+=(vit_mini) ;; *) backbones+=(tiny) ;; esac; done
  for d in $DATASETS; do
    for b in $(printf '%s\n' "${backbones[@]}" | sort -u); do for s in $(seeds_of random_init); do
      ft=0; case " $METHODS " in *" mae "*) [ $b = vit_mini ] && ft=$QUICK_FINETUNE ;; esac
      cmd=("$PY" - "$HERE" "$d" "$(data_dir "$d")" "$b" "$s" "$ft" "runs/${d}__${TAG}_random_init__${s}__$b")
      echo "random init: ${cmd[*]}"
      [ $DRY = 1 ] && continue
      "${cmd[@]}" <<'PYTHON' || { echo "run_all: FAILED (exit $?): random init ${cmd[*]}" >&2; FAILED=$((FAILED + 1)); }
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
import estimators
from plumbing import augment, backbones, data as datasets, distributed, evaluation
_, _, dataset, data_dir, backbone, seed, ft, out = sys.argv
seed = int(seed)
done = Path(out) / "results.json"
if done.exists() and (not int(ft) or "finetune_top1" in json.loads(done.read_text())):  # evaluated: as a run, skipped
    print(f"random init {backbone} on {dataset}, seed {seed}: evaluated before ({done})")
    sys.exit(0)
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
PYTHON
    done; done
  done
}

CELL_DIRS=(); CELL_ARGS=()
grid() {  # one cell per run: CELL_DIRS[i] its directory, CELL_ARGS[i] the method's script and flags (quoted, for eval)
  local d m s ep common recipe args
  for d in $DATASETS; do for m in $METHODS; do for s in $(seeds_of "$m"); do
    ep=(); [ $QUICK = 1 ] && { [ "$d" = synthetic ] && ep=(--epochs 10) || ep=(--epochs 1); }
    common=("${COMMON[@]}")  # --quick: the ViT methods take vit_mini with 8-px patches instead of the tiny ResNet
    case " $VIT_SET " in *" $m "*) [ $QUICK = 1 ] && common=("${COMMON[@]/tiny/vit_mini}" --patch-size 8) ;; esac
    recipe=()
    [ $QUICK = 1 ] && read -r -a recipe <<< "$(quick_recipe "$m" "$(steps_per_epoch "$d")")"
    [ $LIGHTLY = 1 ] && read -r -a recipe <<< "$(lightly_recipe "$m")"
    args=("$HERE/methods/$m.py" --dataset "$d" --data-dir "$(data_dir "$d")" --seed "$s" --exp-name "${TAG}_$m"
          "${ep[@]}" "${common[@]}" --save-every-minutes "$SAVE_MINUTES" "${recipe[@]}" "${EXTRA[@]}")
    CELL_DIRS+=("runs/${d}__${TAG}_${m}__$s")
    CELL_ARGS+=("$(printf '%q ' "${args[@]}")")
  done; done; done
}
LAUNCH=("$PY")  # --nproc N: torchrun, N processes (GPUs) per run
[ "$NPROC" = 1 ] || LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")

gpu_list() {  # the GPUs of this machine: CUDA_VISIBLE_DEVICES's entries, else nvidia-smi -L's indices
  if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
    tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | sed '/^ *$/d; /^-/d'
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | sed -n 's/^GPU \([0-9][0-9]*\):.*/\1/p'
  fi
}

STOP=""; RUNNING=()  # RUNNING[slot]: the process of the run in that slot (after its cell's checks, the run itself)
stop_runs() {  # SIGINT / SIGTERM to run_all.sh: every running run gets one SIGTERM (it saves last.pt and stops)
  STOP=$1
  echo "run_all: $1: the running runs save last.pt and stop; no other starts" >&2
  for p in "${RUNNING[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
run_local() {  # the cells, --jobs at a time; with several GPUs, slot k's runs get GPU k (--nproc N: N of them) in turn
  local n=${#CELL_DIRS[@]} next=0 slot rc i k gpus=() cell_of=() began=() cmd visible
  read -r -a gpus <<< "$(gpu_list | tr '\n' ' ')"
  if [ "$JOBS" -gt 1 ] && [ ${#gpus[@]} = 0 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then  # CPU: the cores shared out
    export OMP_NUM_THREADS=$(( $(cores) / (JOBS * NPROC) > 1 ? $(cores) / (JOBS * NPROC) : 1 ))
  fi
  set -m  # each run in its own process group: Ctrl-C reaches run_all.sh alone, which passes one SIGTERM to each run
  trap 'stop_runs SIGINT' INT
  trap 'stop_runs SIGTERM' TERM
  while :; do
    for slot in "${!RUNNING[@]}"; do
      kill -0 "${RUNNING[$slot]}" 2>/dev/null && continue
      rc=0; wait "${RUNNING[$slot]}" || rc=$?
      i=${cell_of[$slot]}
      unset "RUNNING[$slot]"
      eval "cmd=(${CELL_ARGS[$i]})"
      if [ -n "$STOP" ] && { [ $rc = 130 ] || [ $rc = 143 ]; }; then
        echo "run_all: stopped (exit $rc): ${CELL_DIRS[$i]} keeps its last.pt" >&2
      elif [ $rc != 0 ]; then
        echo "run_all: FAILED (exit $rc): ${LAUNCH[*]} ${cmd[*]} (its output: runs/logs/${CELL_DIRS[$i]##*/}.log)" >&2
        FAILED=$((FAILED + 1))
      elif [ "$JOBS" -gt 1 ]; then
        echo "run_all: [$((i + 1))/$n] ${CELL_DIRS[$i]} done ($((SECONDS - began[slot])) s)"
      fi
    done
    while [ -z "$STOP" ] && [ $next -lt $n ] && [ ${#RUNNING[@]} -lt "$JOBS" ]; do
      slot=0; while [ -n "${RUNNING[$slot]+x}" ]; do slot=$((slot + 1)); done
      visible=""
      if [ ${#gpus[@]} -gt 1 ]; then
        for ((k = 0; k < NPROC; k++)); do visible+=${visible:+,}${gpus[$(( (slot * NPROC + k) % ${#gpus[@]} ))]}; done
      fi
      eval "cmd=(${CELL_ARGS[$next]})"
      echo "${LAUNCH[*]} ${cmd[*]}"
      [ "$JOBS" = 1 ] || echo "run_all: [$((next + 1))/$n] ${CELL_DIRS[$next]} starts${visible:+ on GPU $visible}" \
                              "(its output: runs/logs/${CELL_DIRS[$next]##*/}.log)"
      ( [ -z "$visible" ] || export CUDA_VISIBLE_DEVICES=$visible
        cell "${CELL_DIRS[$next]}" $([ "$JOBS" = 1 ] && echo 1 || echo 0) "${LAUNCH[@]}" "${cmd[@]}" ) </dev/null &
      RUNNING[$slot]=$!
      cell_of[$slot]=$next
      began[$slot]=$SECONDS
      next=$((next + 1))
    done
    [ ${#RUNNING[@]} -gt 0 ] || break
    wait -n 2>/dev/null || sleep 0.5  # until a run ends (bash before 4.3 has no wait -n: it polls)
  done
  set +m
  trap - INT TERM
}

slurm_script() {  # the sbatch script of the grid: task i runs cell i (run_all.sh --cell), in a directory of its own
  local n=${#CELL_DIRS[@]} i
  local tasks=$((n + (QUICK == 1 ? 1 : 0)))  # --quick: a last task evaluates the random inits
  cat <<HEAD
#!/usr/bin/env bash
#SBATCH --job-name=$TAG
#SBATCH --array=0-$((tasks - 1))
#SBATCH --chdir=$PWD
#SBATCH --output=$PWD/runs/logs/slurm_%x_%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@$SIGNAL_LEAD
# Written by run_all.sh; submitted as: sbatch ${SBATCH_OPTS[*]}${SBATCH_OPTS[*]:+ }THIS_FILE (those options win).
# Task i is run i of the grid below, in its own directory. run_all.sh --cell skips a finished run (results.json),
# resumes an interrupted one (--resume DIR/last.pt) and moves aside a directory with neither; the run's output is in
# this task's log and in runs/logs/{run}.log. Before the time limit SLURM sends USR1 to this script (--signal B:):
# the run gets SIGTERM, saves last.pt after its step and exits 143, and the task requeues itself to resume it.
# Preemption, scancel and scontrol requeue send SIGTERM to every process of the task: the run saves and stops alike
# (SLURM requeues a preempted task itself: --requeue). Every run also saves every $SAVE_MINUTES minutes.
set -u
export PYTHON=$(printf %q "$PY") DATA=$(printf %q "$DATA")
launch=("\$PYTHON")
HEAD
  if [ "$NPROC" != 1 ]; then cat <<TORCHRUN
# --nproc $NPROC: torchrun, $NPROC processes (one GPU each) per node; on several nodes (--nodes) one torchrun per node
if [ "\${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then
  head=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n 1)
  launch=(srun --nodes "\$SLURM_JOB_NUM_NODES" --ntasks "\$SLURM_JOB_NUM_NODES" --ntasks-per-node 1
          \${SLURM_CPUS_PER_TASK:+--cpus-per-task "\$SLURM_CPUS_PER_TASK"} "\$PYTHON" -m torch.distributed.run
          --nnodes "\$SLURM_JOB_NUM_NODES" --nproc_per_node $NPROC --rdzv_id "\$SLURM_JOB_ID" --rdzv_backend c10d
          --rdzv_endpoint "\$head:\$((20000 + SLURM_JOB_ID % 20000))")
else
  launch=("\$PYTHON" -m torch.distributed.run --standalone --nproc_per_node $NPROC)
fi
TORCHRUN
  fi
  echo "dir=\"\""
  echo "case \$SLURM_ARRAY_TASK_ID in"
  for i in "${!CELL_DIRS[@]}"; do
    echo "  $i) dir=$(printf %q "${CELL_DIRS[$i]}"); task=(bash $(printf %q "$HERE/run_all.sh") --cell \"\$dir\" 1" \
         "\"\${launch[@]}\" ${CELL_ARGS[$i]% }) ;;"
  done
  if [ $QUICK = 1 ]; then
    local again=(--quick --random-init --methods "$METHODS" --datasets "$DATASETS")
    [ $SET_SEEDS = 0 ] || again+=(--seeds "$SEEDS")
    [ -z "$FOLDER" ] || again+=(--data-dir "$FOLDER")
    echo "  $n) task=(bash $(printf %q "$HERE/run_all.sh") $(printf '%q ' "${again[@]}")) ;;  # the random inits"
  fi
  cat <<'BODY'
esac
echo "run_all: task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname)"
"${task[@]}" &
child=$!
usr1=0
trap 'usr1=1; echo "run_all: USR1 (time limit near): SIGTERM to the run, which saves last.pt"; kill -TERM $child' USR1
trap 'echo "run_all: SIGTERM (preempted, cancelled or requeued): the run saves last.pt itself"' TERM
while kill -0 "$child" 2>/dev/null; do wait "$child"; done
status=0
wait "$child" || status=$?
echo "run_all: task $SLURM_ARRAY_TASK_ID ends with exit status $status"
if [ $usr1 = 1 ] && [ -n "$dir" ] && [ ! -f "$dir/results.json" ]; then
  echo "run_all: requeued: the task will resume $dir"
  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit $status
BODY
}

submit_slurm() {  # write the sbatch script to runs/slurm/, submit it, say how to follow the job
  command -v sbatch >/dev/null 2>&1 || die "--slurm: no sbatch here (run run_all.sh on a SLURM login node)"
  mkdir -p runs/slurm runs/logs
  local script id n=${#CELL_DIRS[@]}
  script=runs/slurm/${TAG}_$(date +%Y%m%d-%H%M%S).sbatch
  slurm_script > "$script"
  id=$(sbatch --parsable "${SBATCH_OPTS[@]}" "$script") || { echo "run_all: sbatch refused $script" >&2; exit 1; }
  id=${id%%;*}
  local table=(bash "$0" --table); [ $QUICK = 0 ] || table+=(--quick); [ $LIGHTLY = 0 ] || table+=(--lightly)
  cat <<DONE
run_all: submitted SLURM array job $id: $n runs$([ $QUICK = 1 ] && echo " and the random inits"), a task each
  script:  $script
  follow:  squeue -j $id        sacct -j $id --format JobID,State,Elapsed,ExitCode,NodeList
  logs:    runs/logs/slurm_${TAG}_${id}_{task}.out (each task) and runs/logs/{run}.log (each run)
  then:    ${table[*]}   # the table and figures from the finished runs
  again:   the same command submits the grid again: finished runs are skipped, interrupted ones resume
DONE
}

if [ $RANDOM_ONLY = 1 ]; then random_init; [ $FAILED = 0 ] || exit 1; exit 0; fi
if [ $TABLE_ONLY = 0 ]; then
  grid
  if [ $SLURM = 1 ] && [ $DRY = 1 ]; then slurm_script; exit 0; fi
  if [ $SLURM = 1 ]; then submit_slurm; exit 0; fi
  if [ $DRY = 1 ]; then  # what a real run would do now in each directory
    for i in "${!CELL_DIRS[@]}"; do
      eval "cmd=(${CELL_ARGS[$i]})"
      case $(cell_state "${CELL_DIRS[$i]}") in
        finished) echo "# ${CELL_DIRS[$i]} is finished (results.json): skipped" ;;
        resume) echo "${LAUNCH[*]} ${cmd[*]} --resume ${CELL_DIRS[$i]}/last.pt" ;;
        aside) echo "${LAUNCH[*]} ${cmd[*]} --run-dir ${CELL_DIRS[$i]}  # moved aside first: no last.pt, no results.json" ;;
        new) echo "${LAUNCH[*]} ${cmd[*]} --run-dir ${CELL_DIRS[$i]}" ;;
      esac
    done
  else
    run_local
  fi
  if [ -n "$STOP" ]; then
    echo "run_all: stopped by $STOP; the same command resumes the grid (finished runs are skipped)" >&2
    [ "$STOP" = SIGINT ] && exit 130
    exit 143
  fi
  [ $QUICK = 0 ] || random_init
fi
[ $DRY = 1 ] && exit 0

if [ $LIGHTLY = 1 ]; then  # lightly's table: no figures
"$PY" - "$TAG" <<'EOF'
import json, re, sys
from pathlib import Path
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
tag = sys.argv[1]
# lightly's CIFAR-10 benchmark (docs.lightly.ai, "Benchmarks"): kNN top-1 (k 200, T 0.1) after 200 epochs at batch
# 512, ResNet-18, one RTX A6000, and its minutes; lightly reports the best kNN over the epochs
LIGHTLY = {"simclr": (0.848, 87), "byol": (0.868, 108), "dino": (0.813, 109), "moco_v2": (0.847, 112),
           "nnclr": (0.815, 88), "simsiam": (0.764, 88), "swav": (0.842, 89), "barlow_twins": (0.819, 153)}
NAMES = {"simclr": "SimCLR", "byol": "BYOL", "dino": "DINO (ResNet; teacher)", "moco_v2": "MoCo v2 (queue 8,192)",
         "nnclr": "NNCLR", "simsiam": "SimSiam", "swav": "SwAV", "barlow_twins": "Barlow Twins"}
latest = {}
for f in sorted(Path("runs").glob(f"*__{tag}_*__*/results.json"), key=lambda p: p.stat().st_mtime):
    r = json.loads(f.read_text()) | {"dir": f.parent}
    latest[(r["dataset"], r["method"], r["seed"])] = r  # the newest run of each


def events(directory):
    """(the eval/knn_top1 scalars [(step, value)], the hyperparameters {field: value} of the run's last start)."""
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    knn = [(e.step, e.value) for e in acc.Scalars("eval/knn_top1")] if "eval/knn_top1" in acc.Tags()["scalars"] else []
    hp = {}
    if "hyperparameters/text_summary" in acc.Tags()["tensors"]:
        text = acc.Tensors("hyperparameters/text_summary")[-1].tensor_proto.string_val[0].decode()
        hp = dict(re.findall(r"^\|(\w+)\|(.*)\|$", text, re.M))
    return knn, hp


def device(r):
    """The device: results.json's (runs since it records it: their minutes cover every part of a resumed run), else
    the run's log (runs/logs/{run}.log): run_all's device line, unless the run says it ran on the CPU; and whether
    the minutes are those of a resumed run's last part only."""
    if "device" in r:
        processes = r.get("processes", 1)
        return r["device"] + (f", {processes} processes" if processes > 1 else ""), False
    log = Path("runs") / "logs" / f"{r['dir'].name}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    named = re.findall(r"^run_all: .*; device: (.*?)(?: \(CUDA_VISIBLE_DEVICES=[^)]*\))?$", text, re.M)
    used = re.findall(r"^\[\w+\] .* on (cpu|cuda\S*) \(", text, re.M)
    name = "CPU" if used and used[-1] == "cpu" else (named[-1] if named else "–")
    processes = r.get("processes", 1)
    if processes > 1 and not name.startswith(f"{processes} x "):
        name += f", {processes} processes"
    return name, "resumed from" in text


lines = [f"Runs: runs/*__{tag}_*. Lightly: its CIFAR-10 benchmark (docs.lightly.ai, Benchmarks), kNN top-1 (k 200, "
         "T 0.1) after 200 epochs at batch 512, ResNet-18, one RTX A6000; lightly reports the best kNN over the "
         "epochs. Ours: the same budget (ResNet-18 with the CIFAR stem, batch 512, 200 epochs; kNN: cosine, k=200, "
         "T=0.1, on backbone features, every 10 epochs and at the end; MoCo v2: a queue of 8,192 keys per view, so "
         "each loss term sees 8,192 negatives) with each method's own solo-learn recipe (optimizer, learning rate at "
         "batch 256 scaled by batch/256, weight decay, warmup: the 'our recipe' column; blur and projector: the "
         "method's --help), where lightly's script gives every method SGD with lr 0.06 x batch/128, momentum 0.9, "
         "weight decay 5e-4, a cosine schedule and no blur. Best: the highest eval/knn_top1 in the run's tensorboard "
         "events, and its epoch. Minutes: results.json's (training and evaluation, every part of a resumed run; "
         "runs older than that record: the last part only, marked). Device: results.json's, else the run's log, "
         "runs/logs/{run}.log.", "",
         "| dataset | method | seed | epochs | kNN top-1 (final) | best kNN top-1 (epoch) | lightly kNN top-1 | best - "
         "lightly | minutes | lightly minutes | device | our recipe |", "|-|-|-|-|-|-|-|-|-|-|-|-|"]
order = list(LIGHTLY)
for r in sorted(latest.values(), key=lambda r: (r["dataset"], order.index(r["method"]) if r["method"] in order else 99,
                                                r["method"], r["seed"])):
    m = r["method"]
    knn, hp = events(r["dir"])
    best = max(knn, key=lambda e: e[1]) if knn else (r["steps"], r["knn_top1"])  # the first of equal values
    epoch = round(best[0] / max(r["steps"] / max(r["epochs"], 1), 1))  # steps per epoch: steps / epochs begun
    theirs = LIGHTLY.get(m)
    name, resumed = device(r)
    recipe = "–"
    if {"optimizer", "lr", "weight_decay", "warmup_epochs"} <= set(hp):
        recipe = (f"{hp['optimizer']}, lr {hp['lr']}, weight decay {hp['weight_decay']}, warmup {hp['warmup_epochs']} "
                  "epochs")
    compared = f"{100 * theirs[0]:.1f} | {best[1] - 100 * theirs[0]:+.2f}" if theirs else "– | –"
    lines.append(f"| {r['dataset']} | {NAMES.get(m, m)} | {r['seed']} | {r['epochs']} | {r['knn_top1']:.2f} | "
                 f"{best[1]:.2f} ({epoch}) | {compared} | {r['minutes']:.0f}{' (last part)' if resumed else ''} | "
                 f"{theirs[1] if theirs else '–'} | {name} | {recipe} |")
out = Path("runs") / "run_all_lightly.md"
out.parent.mkdir(exist_ok=True)
out.write_text("\n".join(lines) + "\n")
print("\n".join(lines) + f"\n\ntable written to {out}" if latest else f"no finished runs matching runs/*__{tag}_*")
EOF
else
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
fi
[ $FAILED = 0 ] || { echo "run_all: $FAILED run(s) failed (see above)" >&2; exit 1; }
