#!/usr/bin/env bash
# Issue 16 A/B: the weaker R1 on the joint discriminator. Both arms continue the 0.4.0 run from its
# checkpoint at 56,824 images (copied into runs/r1ab_plain and runs/r1ab_joint1), one process x 1
# thread each, side by side, the same seed, to KIMG thousand images (default 67: +10k).
#   launch_ab.sh plain cpu128
#   launch_ab.sh joint1 /work/main/docs/experiments/joint_r1_ab/cpu128_joint_r1.yaml
ARM=$1; CFG=$2; KIMG=${KIMG:-67}
CODE=$HOME/.cache/medsemgan/code/run_0.4.0
export MEDSEMGAN_DATA=${MEDSEMGAN_DATA:-/work/shared/data} OMP_WAIT_POLICY=passive PYTHONPATH=$CODE
cd $CODE
exec nice -n 5 /work/main/.venv/bin/python -m medsemgan.cli train gan --config $CFG \
    --out $HOME/.cache/medsemgan/runs/r1ab_$ARM --resume --kimg $KIMG --processes 1 --threads 1
