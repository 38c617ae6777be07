#!/usr/bin/env bash
# Issue 16 A/B (abandoned before any result): the paper's joint-discriminator capacity (64-512
# channels) under the 0.4.0 run's generator. Both arms start from the main run's checkpoint
# (runs/gan_cpu128, stopped for the A/B): A continues a copy of it (runs/jdwide_plain, plain cpu128);
# B is a new run warm-started from it (runs/jdwide_paper: generator and image discriminator carried
# with their Adam states, the wider joint discriminator fresh). One process x 1 thread each, side by
# side, to KIMG thousand images (default 101).
#   launch_ab.sh plain
#   launch_ab.sh paper
HERE=$(dirname "$0"); KIMG=${KIMG:-101}
case $1 in
  plain) exec "$HERE/../launch_arm.sh" jdwide_plain cpu128 "$KIMG" ;;
  paper) exec "$HERE/../launch_arm.sh" jdwide_paper /work/main/docs/experiments/joint_d_wide/cpu128_joint_d_paper.yaml \
           "$KIMG" --init-from $HOME/.cache/medsemgan/runs/gan_cpu128 ;;
  *) echo "usage: launch_ab.sh plain|paper" >&2; exit 2 ;;
esac
