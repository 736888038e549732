"""Checkpoints laid out as each method's official code saves them (tests/zoo.py) load exactly:
H, P0/P1 and Z equal the official forward, for every branch, with the method's default branch."""

from __future__ import annotations

import warnings

import pytest
import torch

import zoo
from clusterprobe import load_checkpoint
from clusterprobe.errors import AssumptionWarning, UnsafeCheckpointError
from clusterprobe.extract import LayerCapture

BUILDERS = sorted(name for name in dir(zoo) if name.startswith("build_"))
#: DINO's ViT-S/16 release is an encoder-only state dict with timm's key names: nothing in it says
#: DINO, and its number of attention heads is not in the tensors (assumed 384 / 64 = 6, recorded).
EXPECTED_FORMAT = {"dino-vit": "state-dict"}
UNDETERMINED = {"dino-vit"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return {name: getattr(zoo, name)(folder / name) for name in BUILDERS}


def layers(model, x):
    specs = [model.resolve_layer(name) for name in model.layer_names()]
    with torch.no_grad(), LayerCapture(model, specs) as capture:
        return capture.run(x)


def test_every_format_of_the_issue_has_a_fixture():
    formats = {name.removeprefix("build_").split("_")[0] for name in BUILDERS}
    assert {"resa", "mocov3", "swav", "dino", "vicreg", "barlowtwins", "lightly"} <= formats, formats


@pytest.mark.parametrize("builder", BUILDERS)
def test_official_layouts_load_exactly(built, builder):
    case = built[builder]
    trust = case.format == "vicreg"  # its optimizer pickles a function of the training script
    with warnings.catch_warnings():
        # every official full checkpoint determines its architecture
        warnings.simplefilter("ignore" if case.format in UNDETERMINED else "error", AssumptionWarning)
        warnings.filterwarnings("ignore", message=".*replaced by placeholders.*")
        loaded = load_checkpoint(case.path, trust=trust)
        assert loaded.format == EXPECTED_FORMAT.get(case.format, case.format)
        assert loaded.branch == case.default_branch or case.format in UNDETERMINED
        assert bool(loaded.assumptions) == (case.format in UNDETERMINED), loaded.assumptions
        assert set(loaded.branches) == set(case.branches) or case.format in UNDETERMINED
        torch.manual_seed(0)
        x = torch.randn(4, 3, case.image_size, case.image_size)
        for branch, reference in case.branches.items():
            model = load_checkpoint(case.path, trust=trust,
                                    branch=None if case.format in UNDETERMINED else branch).model
            got = layers(model, x)
            with torch.no_grad():
                torch.testing.assert_close(got["H"], reference.h(x), rtol=1e-5, atol=1e-5)
                if hasattr(reference, "z") and model.projector is not None:
                    torch.testing.assert_close(got["Z"], reference.z(x), rtol=1e-5, atol=1e-5)
                    hidden = reference.hidden(x) if hasattr(reference, "hidden") else []
                    assert len(hidden) == model.hidden_layer_count(), (branch, len(hidden))
                    for i, expected in enumerate(hidden):
                        torch.testing.assert_close(got[f"P{i}"], expected, rtol=1e-5, atol=1e-5)


def test_vicreg_needs_trust_and_then_loads_without_a_traceback(built):
    case = next(c for c in built.values() if c.format == "vicreg")
    with pytest.raises(UnsafeCheckpointError, match="trust=True"):
        load_checkpoint(case.path)
    with pytest.warns(UserWarning, match="replaced by placeholders: .*exclude_bias_and_norm"):
        assert load_checkpoint(case.path, trust=True).format == "vicreg"
