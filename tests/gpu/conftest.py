"""What the GPU tests share: cuBLAS's deterministic workspace, set before anything in the test process
starts cuBLAS (which reads it as it starts): `hardware.deterministic=true` needs it, and a run in this
process cannot set it once another has used the GPU."""

from __future__ import annotations

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
