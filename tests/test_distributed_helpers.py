"""clusterprobe.distributed against single-process torch."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conversion_keeps_the_batchnorms_own_tensors(dtype):
    """GlobalBatchNorm takes over the BatchNorm's Parameters and buffers, as torch's
    SyncBatchNorm.convert_sync_batchnorm does. Before, new float32 tensors were made and the values
    copied: a float64 model became float32 (its eval forward then failed on mixed dtypes), frozen
    parameters (the momentum branch's) required gradients again, and an optimiser built before
    the conversion held parameters the model no longer used."""
    from clusterprobe.distributed import GlobalBatchNorm, convert_sync_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.BatchNorm1d(4, affine=False)).to(dtype)
    model.train()(torch.randn(16, 3, dtype=dtype) * 2 + 1)  # running statistics off their initial values
    model[1].weight.requires_grad_(False)
    before = {name: tensor for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    reference = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.randn(8, 3, dtype=dtype)
    with torch.no_grad():
        expected = model.eval()(x)
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], GlobalBatchNorm) and isinstance(converted[2], GlobalBatchNorm)
    assert not converted[1].training
    after = dict([*converted.named_parameters(), *converted.named_buffers()])
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert converted[1].weight.dtype == dtype and not converted[1].weight.requires_grad
    assert converted[1].bias.requires_grad and converted[2].weight is None
    assert converted.state_dict().keys() == reference.keys()
    for key, value in converted.state_dict().items():
        assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), key
    with torch.no_grad():
        torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)  # eval: BatchNorm's own forward
