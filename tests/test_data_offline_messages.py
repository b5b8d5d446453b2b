"""Preparing a dataset that jaxnorm generates offline (mnist1d, digits) prints one line of ours and nothing of tfds's
download machinery: no "Downloading and preparing" notice, no absl warnings, no progress bars (issue 26, item 7)."""

import logging
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PREPARE = """
import sys
from jaxnorm.lab.data import prepare
builder = prepare(sys.argv[1], sys.argv[2])
print("SIZES", sorted((k, v.num_examples) for k, v in builder.info.splits.items()))
prepare(sys.argv[1], sys.argv[2])  # prepared: silent
"""


@pytest.mark.parametrize(
    "name,sizes",
    [("mnist1d", [("test", 1000), ("train", 4000)]), ("digits", [("test", 360), ("train", 1437)])],
)
def test_generated_dataset_prepares_without_download_notices_or_absl_warnings(name, sizes, tmp_path):
    data_dir = tmp_path / "data"
    r = subprocess.run(
        [sys.executable, "-c", PREPARE, name, str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # both streams, in order
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "JAXNORM_DATA_DIR": str(tmp_path / "unused")},
    )
    out = r.stdout
    assert r.returncode == 0, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert "Downloading" not in out and "downloaded and prepared" not in out, out
    assert not any(re.match(r"(W\d{4} |WARNING)", line) or "absl" in line for line in lines), out
    assert "Generating" not in out and "Shuffling" not in out, out  # tfds's progress bars
    # one line of ours, then the sizes: the data is still right
    assert lines == [f"preparing {name} (generated offline) in {data_dir} ...", f"SIZES {sizes}"], out
    assert os.path.isdir(data_dir / f"jaxnorm_{name}" / "1.0.0")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_quiet_generation_restores_absl_level_and_progress_bars_and_keeps_errors():
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    from jaxnorm.lab.data import preparation

    absl_logger = logging.getLogger("absl")
    level, bars, handler = absl_logger.level, tqdm_utils._active, _Records()
    absl_logger.addHandler(handler)
    absl_logger.setLevel(logging.INFO)
    tfds.display_progress_bar(True)
    try:
        with preparation._quiet_generation():
            absl_logger.warning("a tfds notice")
            absl_logger.error("a real error")
            assert tqdm_utils._active is False
        absl_logger.warning("a warning after")
        assert handler.messages == ["a real error", "a warning after"]
        assert absl_logger.level == logging.INFO and tqdm_utils._active is True  # both restored
        with pytest.raises(RuntimeError, match="boom"):  # a failure inside still raises, and restores too
            with preparation._quiet_generation():
                raise RuntimeError("boom")
        assert absl_logger.level == logging.INFO and tqdm_utils._active is True
    finally:
        absl_logger.removeHandler(handler)
        absl_logger.setLevel(level)
        tfds.display_progress_bar(bars)
