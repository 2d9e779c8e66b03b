"""ImageNet ResNet import: torchvision files read without torch, features equal torch's, mismatches refused.

The fixtures (tests/fixtures/make_torch_fixtures.py) were written by torch.save from
torchvision-layout state dicts of ResNet-18 and ResNet-50 at width 1, with reference
features computed by torch.nn.functional from the same tensors; torch is not needed here.
"""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from difnet_jax.backbone_weights import files, loading, reference
from difnet_jax.backbone_weights.loading import convert
from difnet_jax.config_checks import ConfigError, check_config
from difnet_jax.models import ResNet
from difnet_jax.train import Trainer
from experiments.configs.voc import get_config
from tests.helpers import tiny_config

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TAPS = ("stem", "layer1", "layer2", "layer3", "layer4")


def _fixture(depth):
    return os.path.join(FIXTURES, f"resnet{depth}_w1.pth")


def _relative_error(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def test_torch_zip_is_read_without_torch():
    torch_was_loaded = "torch" in sys.modules
    tensors = files.read_tensors(os.path.join(FIXTURES, "nested_checkpoint.pth"))
    expected = np.load(os.path.join(FIXTURES, "nested_checkpoint_expected.npz"))
    assert sorted(tensors) == sorted(expected.files)  # nested under 'state_dict', 'module.' stripped
    for name in expected.files:
        assert tensors[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(tensors[name], expected[name])  # incl. a transposed (strided) view
    assert tensors["bn.num_batches_tracked"].shape == () and int(tensors["bn.num_batches_tracked"]) == 7
    assert torch_was_loaded or "torch" not in sys.modules


def test_pickled_objects_and_broken_files_are_refused_by_name(tmp_path):
    module_file = os.path.join(FIXTURES, "pickled_module.pth")
    with pytest.raises(files.WeightFileError, match="pickled_module.pth: holds a pickled torch.nn.modules"):
        files.read_tensors(module_file)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(_fixture(18), "rb").read()[:20000])
    with pytest.raises(files.WeightFileError, match="truncated.pth"):
        files.read_tensors(str(truncated))
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(b"\x80\x02\x8a\x0alegacy pickle")
    with pytest.raises(files.WeightFileError, match="legacy.pth: not a zip-format PyTorch file"):
        files.read_tensors(str(legacy))
    with pytest.raises(files.WeightFileError, match="unknown weight file type '.bin'"):
        (tmp_path / "w.bin").write_bytes(b"")
        files.read_tensors(str(tmp_path / "w.bin"))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        files.read_tensors(str(tmp_path / "missing.npz"))


@pytest.mark.parametrize("depth", [18, 50])
def test_imported_features_equal_torch_reference(depth):
    """Basic-block and bottleneck ResNets: every tap equals torch.nn.functional's forward (float tolerance)."""
    tensors = files.read_tensors(_fixture(depth))
    assert loading.infer_depth(tensors) == depth
    variables = loading.import_resnet(tensors, depth, width=1)
    assert "fc" not in variables["params"]
    x = loading.fixed_input()
    want = np.load(os.path.join(FIXTURES, f"resnet{depth}_w1_reference.npz"))
    got = ResNet(depth, 1).apply(variables, x, train=False)
    by_numpy = reference.resnet_features(tensors, x, depth)
    for tap in TAPS:
        assert got[tap].shape == want[tap].shape, tap
        assert _relative_error(got[tap], want[tap]) < 1e-5, tap
        assert _relative_error(by_numpy[tap], want[tap]) < 1e-6, tap  # the numpy reference is torch's too
    # Running statistics really are used: the same weights with BatchNorm in train mode give other features.
    trained_mode, _ = ResNet(depth, 1).apply(variables, x, train=True, mutable=["batch_stats"])
    assert _relative_error(trained_mode["layer4"], want["layer4"]) > 1e-2


def test_safetensors_and_npz_import_alike(tmp_path):
    tensors = files.read_tensors(_fixture(18))
    save_file(tensors, str(tmp_path / "r18.safetensors"))
    files.write_npz(str(tmp_path / "r18.npz"), tensors)
    from_pth = loading.load_resnet(_fixture(18), 18, width=1)
    for path in (tmp_path / "r18.safetensors", tmp_path / "r18.npz"):
        other = loading.load_resnet(str(path), 18, width=1)
        for a, b in zip(jax.tree.leaves(from_pth), jax.tree.leaves(other)):
            np.testing.assert_array_equal(a, b)


def test_mismatches_are_refused_with_key_and_shapes():
    tensors = files.read_tensors(_fixture(50))
    with pytest.raises(loading.WeightImportError, match=r"layer1\.0\.conv1\.weight has shape \(1, 1, 1, 1\) but "
                       r"ResNet-18 of width 1 needs \(1, 1, 3, 3\)\. The file's keys look like ResNet-50"):
        loading.import_resnet(tensors, 18, width=1, source="r50.pth")
    with pytest.raises(loading.WeightImportError, match=r"conv1\.weight has shape \(1, 3, 7, 7\) but ResNet-50 "
                       r"of width 64 needs \(64, 3, 7, 7\)"):
        loading.import_resnet(tensors, 50, width=64)
    broken = dict(tensors)
    del broken["layer4.2.bn3.running_var"]
    broken["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(loading.WeightImportError, match=r"1 missing key\(s\) \['layer4.2.bn3.running_var'\], "
                       r"1 unexpected key\(s\) \['layer5.0.conv1.weight'\]"):
        loading.import_resnet(broken, 50, width=1)


def test_verification_catches_weights_that_do_not_match_their_reference(tmp_path):
    output = str(tmp_path / "r50.npz")
    result = convert(_fixture(50), output)
    assert (result["depth"], result["width"]) == (50, 1) and result["relative_error"] < 1e-5
    tensors = files.read_tensors(output)
    assert loading.REFERENCE_OUTPUT in tensors
    tensors["layer3.1.conv2.weight"] = np.ascontiguousarray(tensors["layer3.1.conv2.weight"].swapaxes(2, 3))
    variables = loading.import_resnet(tensors, 50, width=1)  # same shapes: only the reference can tell
    with pytest.raises(loading.WeightImportError, match="differ from the reference forward"):
        loading.verify_import(variables, tensors, 50, width=1, source=output)


def test_converter_command_keeps_existing_output(tmp_path):
    output = tmp_path / "weights" / "resnet18.npz"
    command = [sys.executable, "-m", "experiments.convert_weights", f"--input={_fixture(18)}", f"--output={output}"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "ResNet-18 (width 1)" in first.stdout and "match the reference forward pass" in first.stdout
    written = output.read_bytes()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    bad = subprocess.run([*command[:3], f"--input={FIXTURES}/pickled_module.pth", f"--output={output}", "--force"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "pickled_module.pth: holds a pickled" in bad.stderr
    assert output.read_bytes() == written  # a failed conversion leaves the earlier file as it was
    assert [p.name for p in output.parent.iterdir()] == ["resnet18.npz"]  # no temporary files left


def _pretrained_config(data_dir, weights, arg="difnet18,synthetic,imagenet"):
    config = tiny_config(data_dir, arg)
    config.model.width = 1
    config.model.backbone_init = weights
    return config


def test_difnet_branch_starts_from_the_weights_and_frozen_bn_stays(tiny_data_dir, tmp_path):
    """The seed branch only (backbone_init_branches='seed'); 'both' adds the other name to the same list."""
    imported = ("seed_backbone",)
    weights = str(tmp_path / "resnet18.npz")
    convert(_fixture(18), weights)
    config = _pretrained_config(tiny_data_dir, weights)
    config.model.difnet.backbone_init_branches = "seed"
    config.model.frozen_backbone_bn = True
    check_config(config)
    trainer = Trainer(config, num_classes=21)
    state = trainer.initial_state(jax.random.PRNGKey(0))
    resnet = loading.load_resnet(weights, 18, width=1)
    for name in ("seed_backbone", "similarity_backbone"):
        same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params[name]),
                                                     jax.tree.leaves(resnet["params"]))]
        assert all(same) if name in imported else not any(same), name
    batch = {"image": np.random.default_rng(0).normal(size=(4, 33, 33, 3)).astype(np.float32),
             "label": np.random.default_rng(1).integers(0, 21, (4, 33, 33)).astype(np.int32)}
    new_state, metrics = trainer.train_step(state, trainer.global_batch(batch))
    assert np.isfinite(float(metrics["loss"]))
    for name in imported:  # frozen: statistics, BN scale and bias unchanged; kernels trained
        for a, b in zip(jax.tree.leaves(new_state.batch_stats[name]), jax.tree.leaves(resnet["batch_stats"])):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(new_state.params[name]["bn1"]["scale"], resnet["params"]["bn1"]["scale"])
        assert not np.array_equal(new_state.params[name]["conv1"]["kernel"], resnet["params"]["conv1"]["kernel"])


def test_simdeeplab_backbone_starts_from_the_weights(tiny_data_dir, tmp_path):
    weights = str(tmp_path / "resnet18.pth")
    shutil.copy(_fixture(18), weights)  # the .pth directly, verified against the numpy reference
    config = _pretrained_config(tiny_data_dir, weights, "simdeeplab18,synthetic,imagenet")
    state = Trainer(config, num_classes=21).initial_state(jax.random.PRNGKey(0))
    resnet = loading.load_resnet(weights, 18, width=1)
    for a, b in zip(jax.tree.leaves((state.params["backbone"], state.batch_stats["backbone"])),
                    jax.tree.leaves((resnet["params"], resnet["batch_stats"]))):
        np.testing.assert_array_equal(a, b)


def test_imagenet_config_names_the_missing_weights(tmp_path):
    config = get_config("difnet50,imagenet")
    assert config.model.backbone_init == "weights/resnet50.npz"
    assert (config.train.new_lr_scale, config.train.pretrained_lr_scale, config.train.weight_decay_on) == (
        10.0, 1.0, "kernels")
    config.model.backbone_init = str(tmp_path / "resnet50.npz")
    with pytest.raises(ConfigError, match=r"resnet50.npz'?: no such file.*convert_weights"):
        check_config(config)
    scratch = get_config("difnet50")
    scratch.model.frozen_backbone_bn = True
    with pytest.raises(ConfigError, match="config.model.frozen_backbone_bn"):
        check_config(scratch)
