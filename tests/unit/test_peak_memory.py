"""The peak memory a process reports is its own, not that of the process that started it."""

import subprocess
import sys

import pytest

from tasks.peak_memory import peak_rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_child_does_not_report_its_parents_peak():
    # The parent holds ~300 MB (touched) while it starts the child: ru_maxrss in the child
    # says >= 300 MB (Linux keeps the high-water mark across the vfork + exec), VmHWM does not.
    held = bytearray(300 * 1024 * 1024)
    for i in range(0, len(held), 4096):
        held[i] = 1
    code = (
        "import resource; from tasks.peak_memory import peak_rss_mb; "
        "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    own, inherited = map(float, out.stdout.split())
    assert inherited >= 290  # what the old figure would have said: the parent's memory
    assert own < 100
    assert peak_rss_mb() >= 300  # and the parent's own figure counts what it holds
    del held
