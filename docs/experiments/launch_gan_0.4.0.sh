#!/usr/bin/env bash
# The 0.4.0 GAN run, from a frozen checkout of the code (a git worktree), so that edits in the
# working copy cannot reach a run in progress. Resumes when its checkpoint exists; logs append.
# Set up once (or after a fresh machine): make venv; git worktree add --detach $CODE <commit>;
# copy this script to ~/.cache/medsemgan/runs/launch_gan_cpu128.sh; then
#   nohup ~/.cache/medsemgan/runs/launch_gan_cpu128.sh >> ~/.cache/medsemgan/runs/gan_cpu128.log 2>&1 &
CODE=$HOME/.cache/medsemgan/code/run_0.4.0
VENV=${VENV:-/work/main/.venv}
export MEDSEMGAN_DATA=${MEDSEMGAN_DATA:-/work/shared/data} OMP_WAIT_POLICY=passive PYTHONPATH=$CODE
RUN=$HOME/.cache/medsemgan/runs/gan_cpu128
RESUME=""; [ -f $RUN/checkpoint.pt ] && RESUME=--resume
cd $CODE
exec nice -n 5 $VENV/bin/python -m medsemgan.cli train gan --config cpu128 --out $RUN $RESUME
