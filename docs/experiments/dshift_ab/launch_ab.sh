#!/usr/bin/env bash
# Issue 16 A/B: both arms from the 0.4.0 run's checkpoint at 14,224 images, one process x 1 thread each, side by side.
ARM=$1; CFG=$2  # arms: plain cpu128 | dshift <checkout>/docs/experiments/dshift_ab/cpu128_dshift.yaml
CODE=$HOME/.cache/medsemgan/code/run_0.4.0
export MEDSEMGAN_DATA=/work/shared/data OMP_WAIT_POLICY=passive PYTHONPATH=$CODE
cd $CODE
exec nice -n 5 /work/main/.venv/bin/python -m medsemgan.cli train gan --config $CFG --out $HOME/.cache/medsemgan/runs/ab_$ARM --resume --kimg 22 --processes 1 --threads 1
