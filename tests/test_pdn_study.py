"""PDN's mechanism figures: per-layer predictions and valid receptive fields, on an untrained tiny PDN."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from difnet_jax.models import build_model
from difnet_jax.studies import pdn_mechanism
from tests.helpers import tiny_config


def test_pdn_study_draws_layers_and_receptive_fields(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir, "pdn18_8nb_1m,synthetic")
    config.model.width, config.model.aspp_rates, config.model.pdn.d = 4, (1,), 4
    model = build_model(config.model, 21)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 97, 97, 3)), train=False)
    run = types.SimpleNamespace(config=config, model=model, variables=variables, workdir=str(tmp_path))
    result = pdn_mechanism.run_pdn_study(run, num_images=2)
    assert list(result["layer_predictions"]) == ["layer1", "layer2", "layer3", "layer4", "final"]
    assert all(p.shape == (2, 97, 97) for p in result["layer_predictions"].values())
    statistics = json.load(open(result["paths"][3]))["diffusion_layer4_0"]
    assert statistics == result["module_statistics"]["diffusion_layer4_0"]
    assert open(result["paths"][4]).read().count("| diffusion_layer4_0 |") == 1
    # At the paper's initialisation (N(0, 0.01) taps, zero biases, so every gate ~0.5) layer 1 passes on about 1/4 of
    # its candidate's pre-activation, ~0.03x its input for 9 taps: the image's spatial signal shrinks ~100x; later
    # layers carry it in their memory, which the forget gate (~0.5) halves a layer.
    stds = [statistics["input_spatial_std"]] + [layer["spatial_std"] for layer in statistics["layers"]]
    assert len(stds) == 5 and stds[0] > 0
    assert 0 < stds[1] < 0.05 * stds[0], stds
    assert all(0 < later < 0.75 * earlier for earlier, later in zip(stds[1:], stds[2:])), stds
    for path in result["paths"][:2]:
        assert Image.open(path).size[0] > 100
    saved = json.load(open(result["paths"][2]))
    radii = saved["radius_px"]
    assert set(radii) == {"trained PDN-18 8NB", "ResNet + ASPP, no module (random)", "8NB module (random)",
                          "24NB module (random)"}
    assert all(isinstance(r, int) and r >= 0 for r in radii.values())
    assert np.isfinite(list(radii.values())).all()
