#!/usr/bin/env bash
# Fill the two git-ignored folders the GPU check carries to the lent machine (tests/gpu/README.md):
#   tests/gpu/wheels/   what the machine's python3 lacks (it has no network): hydra-core, omegaconf and
#                       antlr4-python3-runtime, for CPython 3.12 (antlr4 4.9 is published only as source:
#                       built here into a pure-Python wheel)
#   tests/gpu/nanogpt/  nanoGPT's train.py, model.py and configurator.py, read from a git directory of
#                       karpathy/nanoGPT (in a session: the `fetch` tool's `github:karpathy/nanoGPT`)
# bash tests/gpu/carry.sh NANOGPT_GIT_DIR        e.g. /work/.mirror/karpathy+nanoGPT/repo
set -eu
cd "$(dirname "$0")"
nanogpt_git=${1:?usage: bash tests/gpu/carry.sh NANOGPT_GIT_DIR}
rm -rf wheels nanogpt && mkdir -p wheels nanogpt
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform any -d wheels 'hydra-core==1.3.*' 'omegaconf==2.3.*'
python3 -m pip wheel -q --no-deps -w wheels 'antlr4-python3-runtime==4.9.*'
for file in train.py model.py configurator.py; do
  git --git-dir="$nanogpt_git" show "HEAD:$file" >"nanogpt/$file"
done
echo "nanoGPT $(git --git-dir="$nanogpt_git" rev-parse --short HEAD); wheels:" && ls wheels && du -sh wheels nanogpt
