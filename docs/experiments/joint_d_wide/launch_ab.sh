#!/usr/bin/env bash
# Issue 16 A/B: the paper's joint-discriminator capacity (64-512 channels) under the 0.4.0 run's
# generator. Both arms start from the main run's checkpoint (runs/gan_cpu128, stopped for the A/B):
# A continues a copy of it (runs/jdwide_plain, plain cpu128, --resume); B is a new run warm-started
# from it (runs/jdwide_paper: generator and image discriminator carried with their Adam states, the
# wider joint discriminator fresh). One process x 1 thread each, side by side, to KIMG thousand
# images (default 101).
#   launch_ab.sh plain
#   launch_ab.sh paper
ARM=$1; KIMG=${KIMG:-101}
CODE=$HOME/.cache/medsemgan/code/run_0.4.0
RUNS=$HOME/.cache/medsemgan/runs
export MEDSEMGAN_DATA=${MEDSEMGAN_DATA:-/work/shared/data} OMP_WAIT_POLICY=passive PYTHONPATH=$CODE
cd $CODE
case $ARM in
  plain) exec nice -n 5 /work/main/.venv/bin/python -m medsemgan.cli train gan --config cpu128 \
           --out $RUNS/jdwide_plain --resume --kimg $KIMG --processes 1 --threads 1 ;;
  paper) exec nice -n 5 /work/main/.venv/bin/python -m medsemgan.cli train gan \
           --config /work/main/docs/experiments/joint_d_wide/cpu128_joint_d_paper.yaml \
           --init-from $RUNS/gan_cpu128 --out $RUNS/jdwide_paper --resume --kimg $KIMG --processes 1 --threads 1 ;;
  *) echo "usage: launch_ab.sh plain|paper" >&2; exit 2 ;;
esac
