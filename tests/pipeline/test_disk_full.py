"""A disk that fills up while writing (simulated with RLIMIT_FSIZE: every write past the
limit fails with EFBIG, as a full disk fails with ENOSPC): one line, exit 6, nothing left at
OUT, whichever writer hits it, quantkit's own or llama.cpp's."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from quantkit.errors import DiskSpaceError

LIMIT = 40 * 10**6  # bytes per file: the demo's BF16 GGUF (~270 MB) cannot be written


def _limited() -> None:
    """In the child: files may not grow past LIMIT; a write past it fails with EFBIG
    instead of killing the process with SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("QUANTKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300,
        preexec_fn=_limited,
    )  # fmt: skip


def test_disk_full_while_quantkit_writes_is_one_line_and_leaves_nothing(
    demo_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = _run(["-m", "quantkit", "convert", str(demo_model), "--format", "gguf",
                 "--quant", "Q8_0", "--out", str(out), "--no-eval"])  # fmt: skip
    assert proc.returncode == DiskSpaceError.exit_code, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("error: Writing") and "File too large" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no OUT, no OUT.partial


_QUANTIZE = """
import sys
from pathlib import Path
from quantkit.backends.gguf.quantize import quantize_gguf
from quantkit.errors import DiskSpaceError
try:
    quantize_gguf(Path(sys.argv[1]), Path(sys.argv[2]), "Q4_K_M")
except DiskSpaceError as exc:
    print("DiskSpaceError:", exc)
    sys.exit(6)
"""


def test_disk_full_inside_llama_cpp_is_a_disk_error(demo_model: Path, tmp_path: Path) -> None:
    """llama.cpp's quantizer says why a write failed only in its log: the error names it."""
    from quantkit.backends.gguf.export import export_gguf
    from quantkit.source.model import load_source

    source = load_source(demo_model)
    f16 = export_gguf(source, tmp_path / "m-F16.gguf", out_type="F16").path  # ~270 MB
    # reading the F16 file is fine; writing the ~105 MB Q4_K_M file past LIMIT is not
    proc = _run(["-c", _QUANTIZE, str(f16), str(tmp_path / "m-Q4_K_M.gguf")])
    assert proc.returncode == 6, proc.stdout + proc.stderr[-2000:]
    assert "DiskSpaceError: llama.cpp could not write m-Q4_K_M.gguf" in proc.stdout
    assert "Traceback" not in proc.stderr
