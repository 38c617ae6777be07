#!/usr/bin/env bash
# Issue 16 A/B: the modality shift on the joint discriminator's pairs only (arm C) against plain
# cpu128 (arm A). Both continue the main run from its checkpoint at 77,296 images: A in
# runs/jdwide_plain (started for the abandoned capacity A/B, plain cpu128), C in a copy,
# runs/jshift_c. One process x 1 thread each, side by side, to KIMG thousand images (default 96).
#   launch_ab.sh plain        (A)
#   launch_ab.sh shift        (C)
HERE=$(dirname "$0"); KIMG=${KIMG:-96}
case $1 in
  plain) exec "$HERE/../launch_arm.sh" jdwide_plain cpu128 "$KIMG" ;;
  shift) exec "$HERE/../launch_arm.sh" jshift_c /work/main/docs/experiments/joint_shift_ab/cpu128_joint_shift.yaml "$KIMG" ;;
  *) echo "usage: launch_ab.sh plain|shift" >&2; exit 2 ;;
esac
