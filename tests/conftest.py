import pytest
import torch

from helpers import tiny_pipelines as tp


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    """A tiny random FLUX.1 pipeline saved as a local diffusers directory (one per test module)."""
    path = tmp_path_factory.mktemp("flux")
    tp.flux_pipeline().save_pretrained(path)
    return path
