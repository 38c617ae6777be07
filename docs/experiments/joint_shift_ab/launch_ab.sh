#!/usr/bin/env bash
# Issue 16 A/B: the modality shift on the joint discriminator's pairs only (arm C) against plain
# cpu128 (arm A). Both continue the main run from its checkpoint at 77,296 images: A in
# runs/jdwide_plain (started for the abandoned capacity A/B, plain cpu128), C in a copy,
# runs/jshift_c. One process x 1 thread each, side by side, to KIMG thousand images (default 96).
#   launch_ab.sh plain        (A)
#   launch_ab.sh shift        (C)
ARM=$1; KIMG=${KIMG:-96}
CODE=$HOME/.cache/medsemgan/code/run_0.4.0
RUNS=$HOME/.cache/medsemgan/runs
export MEDSEMGAN_DATA=${MEDSEMGAN_DATA:-/work/shared/data} OMP_WAIT_POLICY=passive PYTHONPATH=$CODE
cd $CODE
case $ARM in
  plain) exec nice -n 5 /work/main/.venv/bin/python -m medsemgan.cli train gan --config cpu128 \
           --out $RUNS/jdwide_plain --resume --kimg $KIMG --processes 1 --threads 1 ;;
  shift) exec nice -n 5 /work/main/.venv/bin/python -m medsemgan.cli train gan \
           --config /work/main/docs/experiments/joint_shift_ab/cpu128_joint_shift.yaml \
           --out $RUNS/jshift_c --resume --kimg $KIMG --processes 1 --threads 1 ;;
  *) echo "usage: launch_ab.sh plain|shift" >&2; exit 2 ;;
esac
