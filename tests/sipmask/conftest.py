"""The SipMask golden data (shared/reference/parity/sipmask_fast_544) and its rebuilt official checkpoint."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from testutils import PARITY

GOLDEN = PARITY / "sipmask_fast_544"


@pytest.fixture(scope="session")
def golden():
    if not (GOLDEN / "outputs.npz").is_file():
        pytest.skip(f"SipMask golden data not found at {GOLDEN} (set CONDINST_SHARED)")
    return dict(np.load(GOLDEN / "outputs.npz"))


@pytest.fixture(scope="session")
def golden_weights(golden, tmp_path_factory):
    """The deterministic weights as an official mmdet v1 checkpoint {'meta', 'state_dict'}, rebuilt by the
    golden data's own regen_weights.py (it checks every tensor's sum against keys.json)."""
    out = tmp_path_factory.mktemp("sipmask") / "sipmask_r50_caffe_fpn_ssd_6x.pth"
    subprocess.run([sys.executable, str(GOLDEN / "regen_weights.py"), str(GOLDEN), str(out)], check=True,
                   capture_output=True)
    return out
