"""Fetch llama.cpp's convert_hf_to_gguf.py from the llama-cpp-python sdist quantkit pins and
print the folder it is in (fixtures/reference_converter.py does the work).

    python scripts/fetch_reference_converter.py [--cache DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's fixtures/

from fixtures.reference_converter import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
