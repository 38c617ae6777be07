#!/usr/bin/env bash
# One A/B arm of the 0.4.0 run: `train gan` from the frozen worktree, one process x 1 thread, niced,
# resumed when its folder has a checkpoint. Shared by the A/B launchers in joint_*/.
#   launch_arm.sh RUN_NAME CONFIG KIMG [more train gan options]
NAME=$1; CFG=$2; KIMG=$3; shift 3
CODE=$HOME/.cache/medsemgan/code/run_0.4.0
export MEDSEMGAN_DATA=${MEDSEMGAN_DATA:-/work/shared/data} OMP_WAIT_POLICY=passive PYTHONPATH=$CODE
cd $CODE
exec nice -n 5 /work/main/.venv/bin/python -m medsemgan.cli train gan --config "$CFG" \
    --out $HOME/.cache/medsemgan/runs/$NAME --resume --kimg "$KIMG" --processes 1 --threads 1 "$@"
