"""`quantkit convert --push-to`: the push is checked before the conversion starts, and the
checked artifact arrives on the (local, fake) Hub with its card."""

from __future__ import annotations

from pathlib import Path

import pytest

import quantkit
from quantkit.errors import HubAuthError
from quantkit.evaluation.options import EvalOptions

NO_EVAL = EvalOptions(enabled=False)  # these tests check other things than quality

REPO = "alice/demo-convert-push"


def test_convert_pushes_the_artifact(hub, demo_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = quantkit.convert(
        demo_model,
        out=out,
        format="gguf",
        quant="Q8_0",
        verify=False,
        push_to=REPO,
        evaluation=NO_EVAL,
    )
    assert result.published and result.published["verified"]
    arrived = hub.files(REPO)
    gguf = next(out.glob("*.gguf"))
    assert {gguf.name, "manifest.json", "README.md", "Modelfile"} <= set(arrived)
    assert arrived[gguf.name].sha256 == result.files[0]["sha256"]


def test_convert_refuses_a_push_without_token_before_converting(
    hub, demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    out = tmp_path / "out"
    with pytest.raises(HubAuthError):
        quantkit.convert(
            demo_model, out=out, format="gguf", quant="Q8_0", push_to=REPO, evaluation=NO_EVAL
        )
    assert not out.exists() and not out.with_name("out.partial").exists()
    assert REPO not in hub.repos


def test_converted_folder_has_a_model_card(demo_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    quantkit.convert(
        demo_model, out=out, format="gguf", quant="Q8_0", verify=False, evaluation=NO_EVAL
    )
    card = (out / "README.md").read_text()
    gguf = next(out.glob("*.gguf")).name
    assert card.startswith("---\n") and gguf in card
    assert "license: unknown" in card  # the demo source has no README with a licence
    assert "after the upload" not in card  # nothing was uploaded
    assert (out / "Modelfile").read_text().startswith("# Written by quantkit")
