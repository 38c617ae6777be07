#!/usr/bin/env bash
# Issue 16: the 0.4.0 stages after the GAN run, into a staged copy of the bundle, so that the
# checkout's bundle changes only once the report has been read (then copy models/ over and edit the
# model card, changelog and ood_threshold by hand). Each stage is skipped when its output exists and
# the encoder stages resume, so the script may be killed and started again (each session ends):
#
#   MEDSEMGAN_DATA=../shared/data nohup docs/experiments/ship_0.4.0.sh >> ~/.cache/medsemgan/ship_0.4.0.log 2>&1 &
#
# Stages (docs/training.md, "Reproducing the shipped model"; lengths as for 0.3.1):
#   1. the generator GAN (default: RUN's last EMA generator; by the rule in docs/training.md, "The
#      0.4.0 run", the kept snapshot with the best clean-CT evidence of gan_milestones.py, e.g.
#      GAN=$RUN/snapshots/generator_ema_000090000.pt) exported (fp16, cast checked) into
#      STAGE/bundles/medsemgan_liver; the rest of that bundle (configs, budget-8 weights, sample)
#      is the checkout's
#   2. the CT encoder against that generator file, CT_KIMG thousand images, exported as encoder.pt
#   3. the MR encoder (modality shift on 70 % of real slices), MR_KIMG, exported as encoder_mr.pt
#   4. `medsemgan report` with weights_root = STAGE (the committed U-Nets linked in beside it)
# DRY=1 runs stages 1-3 with a few images each and skips the report (checks the plumbing only).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
M=${MEDSEMGAN:-$REPO/.venv/bin/medsemgan}
CACHE=$HOME/.cache/medsemgan
RUN=${RUN:-$CACHE/runs/gan_cpu128}
GAN=${GAN:-$RUN}
STAGE=${STAGE:-$CACHE/ship_0.4.0}
BUNDLE=$STAGE/bundles/medsemgan_liver
CT_KIMG=${CT_KIMG:-12}
MR_KIMG=${MR_KIMG:-14}
if [ -n "${DRY:-}" ]; then CT_KIMG=0.032; MR_KIMG=0.032; fi
export OMP_WAIT_POLICY=passive MEDSEMGAN_DATA=${MEDSEMGAN_DATA:-$REPO/../shared/data}

say() { echo "== $(date -u '+%F %T') $*"; }

if [ ! -f "$STAGE/.generator_exported" ]; then
  say "1. generator from $GAN -> $BUNDLE"
  rm -rf "$STAGE" && mkdir -p "$STAGE/bundles"
  cp -r "$REPO/bundles/medsemgan_liver" "$BUNDLE"
  ln -s "$REPO/baselines" "$STAGE/baselines"
  "$M" export --gan "$GAN" --bundle "$BUNDLE"
  touch "$STAGE/.generator_exported"
fi

encoder_stage() {  # name, kimg, file in the bundle, extra arguments for train encoder / export
  local out=$STAGE/runs/encoder_$1 resume=""
  if [ -f "$STAGE/.$3_exported" ]; then return; fi
  say "encoder $1: $2 kimg -> $3"
  [ -f "$out/checkpoint.pt" ] && resume=--resume
  "$M" train encoder --config cpu128 --generator "$BUNDLE/models/generator.pt" --out "$out" \
      --kimg "$2" $resume ${4:-}
  "$M" export --encoder "$out" --bundle "$BUNDLE" ${5:-}
  touch "$STAGE/.$3_exported"
}
encoder_stage ct "$CT_KIMG" encoder.pt
encoder_stage mr "$MR_KIMG" encoder_mr.pt "--modality-augment 0.7" "--modality MR"

if [ -n "${DRY:-}" ]; then say "dry run: report skipped"; exit 0; fi
if [ ! -f "$STAGE/report/report.md" ]; then
  say "4. report -> $STAGE/report"
  sed "s|^weights_root: null.*|weights_root: $STAGE|" "$REPO/medsemgan/configs/report.yaml" > "$STAGE/report.yaml"
  "$M" report --config "$STAGE/report.yaml" --out "$STAGE/report" --threads 2 --no-progress
fi
say "done: $STAGE/report/report.md"
