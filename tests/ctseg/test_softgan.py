"""srgan, softgan, casgan (Wang et al.'s SoftGAN / CasGAN) and the soft-mask prior on unet.

The model contract (test_models.ModelContract) on synthetic batches and the phantom
store; learning runs (marked slow) on real CT: four 64 x 64 regions of the
pyradiomics lung scan in ../shared/data as LiTS cases (one holds the nodule), with a
soft nodule mask made by Gaussian blurring the expert's binary mask (a stand-in for
ctlabel's matting, which would add its numba compile to the suite).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ctseg.build import build_config, build_model, load_model
from ctseg.errors import CheckpointError, ConfigError
from ctseg.models.base import Amp, StepContext
from ctseg.predict import predict_volume
from ctseg.train import train
from test_models import SIZE, ModelContract, synthetic_batch

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TINY_SR = {"g_features": 8, "g_blocks": 1, "d_features": 8, "d_pool": 2, "d_dense": 32}
TINY_SOFT = {"features": [8, 16, 32], "d_features": 8}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tiny networks run on one thread: on a shared 2-core machine under load, two
    threads per process made them 5-8x slower (OpenMP threads waiting on each other:
    the learning runs took 225 s and 174 s on two threads, 27 s and 24 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_layer(store: Path, out: Path, **extra) -> dict:
    layer = {"store": str(store), "target": "tumour", "out": str(out), "size": SIZE, "batch_size": 2,
             "epochs": 1, "max_steps": 1, "train_split": "all", "val_split": "none", "image_every": 0}
    return {**layer, **extra}


@pytest.fixture(scope="module")
def sr_checkpoint(phantom_store, tmp_path_factory) -> Path:
    """A (one-step) x2 srgan run on the phantom store: CasGAN's super-resolution stage (x2 keeps the tests small)."""
    out = tmp_path_factory.mktemp("srgan")
    train(build_config(model="srgan", layers=[run_layer(phantom_store, out, model_options={**TINY_SR, "scale": 2})]),
          progress=False)
    return out / "last.pt"


@pytest.fixture(scope="module")
def softgan_checkpoint(phantom_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("softgan")
    train(build_config(model="softgan", layers=[run_layer(phantom_store, out, model_options=TINY_SOFT)]),
          progress=False)
    return out / "last.pt"


# ---- srgan ---------------------------------------------------------------------------------------
class TestSRGAN(ModelContract):
    model = "srgan"
    options = TINY_SR
    optimizers = {"g": {"lr": 1e-3}, "d": {"lr": 1e-3}}
    discriminator, generator, d_loss = "d", "g", "loss_d"

    def test_predict_gives_probabilities_of_the_input_size(self):
        """srgan predicts images: the reconstruction of each input from its x4 degraded version."""
        model, _ = self.make()
        image = synthetic_batch()["image"]
        recon = model.eval().predict(image)
        assert recon.shape == image.shape and recon.min() >= 0 and recon.max() <= 1

    def test_casgan_sr_stage_preset_follows_softgan_sec4(self):
        """softgan.txt Sec. 4: 5 residual blocks, weights 1 / 1e-3 / 8e-3 / 2e-8, Adam 0.01, 40 epochs, 128 -> 512."""
        config = build_config(model="srgan", layers=[{"store": "s.zarr", "target": "lesion"}], preset="paper-casgan")
        assert config.model_options["g_blocks"] == 5 and config.model_options["scale"] == 4
        assert config.loss_weights == {"content": 1.0, "adversarial": 1e-3, "perceptual": 8e-3, "tv": 2e-8}
        assert config.optimizers["g"].lr == config.optimizers["d"].lr == 1e-2
        assert (config.total_epochs, config.size, config.crop, config.phases) == (40, 512, "resize", ())
        with pytest.raises(ConfigError, match="vgg_weights"):  # the perceptual term needs local VGG19 weights
            build_model(config, 1)

    def test_predict_store_refuses_to_write_images_as_labels(self, sr_checkpoint, phantom_store):
        from ctprep.store import SliceStore
        from ctseg.predict import predict_store

        def labels() -> dict:
            store = SliceStore.open(phantom_store)
            return {case: store.label_names(case) for case in store.case_ids()}

        before = labels()
        with pytest.raises(ConfigError, match="model srgan predicts images, not masks"):
            predict_store(sr_checkpoint, phantom_store, progress=False)
        assert labels() == before

    def test_low_resolution_input_and_x4_output(self):
        model, _ = self.make()
        hr = synthetic_batch()["image"]
        lr = model.degrade(hr)
        assert lr.shape == (4, 2, SIZE // 4, SIZE // 4)
        assert torch.equal(lr, torch.round(lr * 255) / 255)  # on 8-bit levels, like a stored image
        # an area-degraded constant stays that constant
        assert torch.allclose(model.degrade(torch.full((1, 2, SIZE, SIZE), 0.4)), torch.full((1, 2, 8, 8), 0.4),
                              atol=1 / 255)
        assert model.super_resolve(lr).shape == hr.shape

    def test_residual_generator_starts_at_bicubic(self):
        from ctseg.models.srgan import bicubic_up

        model, _ = self.make(model_options={**self.options, "residual": True})
        lr = model.degrade(synthetic_batch()["image"])
        gap = (model.eval().super_resolve(lr) - bicubic_up(lr, 4)).abs().max()
        assert gap < 0.02

    def test_adversarial_term_off_skips_the_discriminator(self):
        model, ctx = self.make(loss_weights={"adversarial": 0.0})
        before = [p.detach().clone() for p in model.nets["d"].parameters()]
        logs = model.train().train_step(synthetic_batch(), ctx)
        assert "loss_d" not in logs and "g_adv" not in logs
        assert all(torch.equal(a, b) for a, b in zip(before, model.nets["d"].parameters()))

    def test_total_variation_term_raises_the_loss(self):
        base, ctx = self.make(loss_weights={"adversarial": 0.0})
        plain = float(base.train().train_step(synthetic_batch(), ctx)["loss_g"])
        model, ctx = self.make(loss_weights={"adversarial": 0.0, "tv": 1.0})
        assert float(model.train().train_step(synthetic_batch(), ctx)["loss_g"]) > plain

    def test_perceptual_loss_without_weights_is_a_clear_error(self, tmp_path):
        with pytest.raises(ConfigError, match="vgg_weights"):
            self.make(loss_weights={"perceptual": 1.0})
        with pytest.raises(ConfigError, match="VGG19 weights file"):
            self.make(loss_weights={"perceptual": 1.0},
                      model_options={**self.options, "vgg_weights": str(tmp_path / "absent.pth")})
        (tmp_path / "other.pth").write_bytes(b"")
        torch.save({"classifier.0.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
        with pytest.raises(ConfigError, match="not VGG19 weights"):
            self.make(loss_weights={"perceptual": 1.0},
                      model_options={**self.options, "vgg_weights": str(tmp_path / "other.pth")})

    def test_perceptual_loss_loads_torchvision_layout_weights(self, tmp_path):
        from ctseg.models.srgan import VGG19_CFG, VGGFeatures

        # A VGG19 state dict in torchvision's layout (random values: no weights can be downloaded here).
        state, index, prev = {}, 0, 3
        for item in VGG19_CFG:
            if item == "M":
                index += 1
                continue
            state[f"features.{index}.weight"] = torch.randn(item, prev, 3, 3) * 0.05
            state[f"features.{index}.bias"] = torch.zeros(item)
            index, prev = index + 2, item
        state["classifier.0.weight"] = torch.zeros(4, 4)
        torch.save(state, tmp_path / "vgg19.pth")
        vgg = VGGFeatures(tmp_path / "vgg19.pth", "relu2_2")
        assert torch.equal(vgg.features[2].weight, state["features.2.weight"])
        model, ctx = self.make(loss_weights={"adversarial": 0.0, "perceptual": 1.0},
                               model_options={**self.options, "vgg_weights": str(tmp_path / "vgg19.pth"),
                                              "vgg_layer": "relu2_2"})
        assert not any(p.requires_grad for p in model.vgg.parameters())
        logs = model.train().train_step(synthetic_batch(), ctx)
        assert float(logs["loss_g"]) > float(logs["g_mse"])

    def test_size_must_be_a_multiple_of_the_scale(self):
        with pytest.raises(ConfigError, match="multiple of model_options.scale"):
            self.make(size=30)

    def test_validation_reports_psnr_and_ssim_and_tracks_the_gain(self, phantom_store, tmp_path):
        layer = run_layer(phantom_store, tmp_path / "run", model_options=self.options, max_steps=None,
                          steps_per_epoch=1, epochs=2, val_split="all", crop="center")
        result = train(self.config(**layer), progress=False)
        last = result.history[-1]
        for key in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "psnr_gain", "score"):
            assert math.isfinite(last[key]), key
        assert last["score"] == pytest.approx(last["psnr"] - last["psnr_bicubic"])
        assert 0 < last["ssim_bicubic"] <= 1 and last["crops"] == 48  # 3 cases x 16 slices
        assert result.best_metric == max(h["score"] for h in result.history)
        assert (tmp_path / "run" / "best.pt").is_file()


# ---- softgan -------------------------------------------------------------------------------------
class TestSoftGAN(ModelContract):
    model = "softgan"
    options = TINY_SOFT
    optimizers = {"g": {"lr": 1e-3}, "d": {"lr": 1e-3}}
    discriminator, generator, d_loss = "d", "g", "loss_d"

    def test_input_is_the_image_twice_without_super_resolution(self):
        model, _ = self.make()
        image = synthetic_batch()["image"]
        x, mask = model.nets["g"](image)
        assert torch.equal(x, torch.cat([image, image], 1))
        assert mask.shape == (4, 1, SIZE, SIZE)
        assert model.nets["d"](torch.cat([x, mask], 1)).shape == (4, 1, SIZE, SIZE)  # a logit per pixel

    def test_segmentor_has_no_pooling_and_leaky_relu(self):
        model, _ = self.make()
        modules = list(model.nets["g"].modules())
        assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in modules)
        assert not any(isinstance(m, torch.nn.ReLU) for m in modules)
        assert any(isinstance(m, torch.nn.LeakyReLU) for m in modules)

    def test_soft_targets_weigh_mse_and_100_l1(self):
        model, ctx = self.make(loss_weights={"adversarial": 0.0})
        batch = synthetic_batch()
        batch["target"] = batch["target"] * 0.7  # a soft mask
        logs = model.train().train_step(batch, ctx)
        assert float(logs["loss_g"]) == pytest.approx(float(logs["g_mse"]) + 100 * float(logs["g_l1"]), rel=1e-5)

    def test_paper_preset_is_adam_2e3_with_linear_decay_after_35_epochs(self):
        from ctseg.train import schedulers

        config = build_config(model="softgan", layers=[{"store": "s.zarr", "target": "soft_tumour"}],
                              preset="paper")
        assert config.optimizers["g"].lr == config.optimizers["d"].lr == 2e-3
        assert [p.decay for p in config.phases] == ["constant", "linear"] and config.phases[0].epochs == 35
        default = build_config(model="softgan", layers=[{"store": "s.zarr", "target": "soft_tumour"}])
        assert default.optimizers["g"].lr == 2e-4
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
        sched = schedulers({"g": opt}, config)["g"]
        rates = []
        for _ in range(config.total_epochs):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert rates[34] == pytest.approx(2e-3) and rates[35] == pytest.approx(2e-3)
        assert rates[52] == pytest.approx(2e-3 * (1 - 17 / 35)) and rates[-1] < 1e-4

    def test_soft_metrics(self):
        from ctseg.score import soft_metrics

        truth = np.array([[0.0, 0.2, 0.6, 1.0]], dtype=np.float32)
        pred = np.array([[0.1, 0.2, 0.4, 0.9]], dtype=np.float32)
        m = soft_metrics(pred, truth)
        assert m["mse"] == pytest.approx((0.01 + 0 + 0.04 + 0.01) / 4, abs=1e-6)
        assert m["sad"] == pytest.approx(0.1 + 0.2 + 0.1, abs=1e-6)
        assert m["auc"] == 1.0  # every truth >= 0.5 pixel scores above every other
        assert m["dice"] == pytest.approx(2 / 3)  # prediction >= 0.5: only the last pixel

    def test_evaluate_soft_scores_whole_cases(self, phantom_store, softgan_checkpoint):
        from ctseg.score import evaluate_soft

        model, config, _ = load_model(softgan_checkpoint, device="cpu")
        result = evaluate_soft(model, config, ["volume-0"])
        row = result["cases"]["volume-0"]
        assert set(row) == {"mse", "sad", "auc", "dice"} and 0 <= row["mse"] <= 1 and row["sad"] > 0
        assert result["mean"]["mse"] == row["mse"]


# ---- casgan --------------------------------------------------------------------------------------
class TestCasGAN(ModelContract):
    model = "casgan"
    optimizers = {"g": {"lr": 1e-3}, "d": {"lr": 1e-3}}
    discriminator, generator, d_loss = "d", "g", "loss_d"

    @pytest.fixture(autouse=True)
    def _sr_stage(self, sr_checkpoint):
        self.options = {**TINY_SOFT, "sr_checkpoint": str(sr_checkpoint)}

    def test_paper_preset_resolves(self):
        config = build_config(model=self.model, layers=[{"store": "s.zarr", "target": "soft_tumour"}],
                              preset="paper")
        assert config.optimizers["g"].lr == 2e-3

    def test_segments_the_super_resolved_crop(self, sr_checkpoint):
        model, _ = self.make()
        sr_model, _, _ = load_model(sr_checkpoint, device="cpu")
        image = synthetic_batch()["image"]
        x, mask = model.eval().nets["g"](image)
        assert x.shape == (4, 4, 2 * SIZE, 2 * SIZE) and mask.shape == (4, 1, 2 * SIZE, 2 * SIZE)
        assert torch.allclose(x[:, :2], sr_model.super_resolve(image), atol=1e-6)  # the SR half
        up = torch.nn.functional.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
        assert torch.allclose(x[:, 2:], up)  # the bilinear half
        pooled = torch.nn.functional.avg_pool2d(mask, 2)
        assert torch.allclose(model.predict(image), pooled.clamp(0, 1))  # back on the stored grid
        assert model.size_multiple == 4  # the segmentor's 8 at x2

    def test_sr_stage_is_frozen_by_default(self):
        model, ctx = self.make()
        sr = model.nets["g"].sr
        before = [p.detach().clone() for p in sr.parameters()] + [b.clone() for b in sr.buffers()]
        model.train().train_step(synthetic_batch(), ctx)
        assert not sr.training and not any(p.requires_grad for p in sr.parameters())
        after = list(sr.parameters()) + list(sr.buffers())
        assert all(torch.equal(a, b) for a, b in zip(before, after))  # weights and BN statistics

    def test_sr_stage_is_fine_tuned_when_unfrozen(self):
        model, ctx = self.make(model_options={**self.options, "freeze_sr": False})
        sr = model.nets["g"].sr
        before = [p.detach().clone() for p in sr.parameters()]
        model.train().train_step(synthetic_batch(), ctx)
        assert any(not torch.equal(a, b) for a, b in zip(before, sr.parameters()))

    def test_native_loss_resolution(self):
        model, ctx = self.make(model_options={**self.options, "loss_resolution": "native"})
        batch = synthetic_batch()
        logs = model.train().train_step(batch, ctx)
        assert math.isfinite(float(logs["g_mse"]))

    def test_needs_an_srgan_checkpoint(self, softgan_checkpoint, tmp_path):
        with pytest.raises(ConfigError, match="sr_checkpoint is required"):
            self.make(model_options={"sr_checkpoint": None})
        with pytest.raises(CheckpointError, match="needs a checkpoint of srgan, found one of 'softgan'"):
            self.make(model_options={**TINY_SOFT, "sr_checkpoint": str(softgan_checkpoint)})
        with pytest.raises(FileNotFoundError, match="checkpoint not found"):
            self.make(model_options={**TINY_SOFT, "sr_checkpoint": str(tmp_path / "none.pt")})

    def test_sr_stage_must_take_the_same_inputs(self):
        config = self.config()
        with pytest.raises(ConfigError, match="input channels"):
            build_model(config, 1)  # the srgan run took 2 window channels


# ---- the soft mask as a prior ----------------------------------------------------------------------
def test_unet_takes_a_softgan_mask_as_an_extra_channel(softgan_checkpoint):
    from ctseg.models.prior import WithPrior

    config = build_config(model="unet", layers=[{"store": "unused.zarr", "target": "tumour", "size": SIZE,
                                                 "model_options": {"features": [8, 16, 32],
                                                                   "prior_checkpoint": str(softgan_checkpoint)}}])
    torch.manual_seed(0)
    model = build_model(config, 2)
    net = model.nets["net"]
    assert isinstance(net, WithPrior) and net.net.down[0][0][0].in_channels == 3
    prior, _, _ = load_model(softgan_checkpoint, device="cpu")
    image = synthetic_batch()["image"]
    assert torch.allclose(net.prior(image), prior.predict(image))
    optimizers = model.optimizers(config)
    ctx = StepContext(optimizers=optimizers, amp=Amp(torch.device("cpu"), "off", list(optimizers)),
                      weights=config.weights_at(0), trainable=frozenset(optimizers))
    frozen = {k: v.clone() for k, v in net.prior_nets.state_dict().items()}
    trained = [p.detach().clone() for p in net.net.parameters()]
    model.train().train_step(synthetic_batch(), ctx)
    assert not net.prior_nets.training
    assert all(torch.equal(v, net.prior_nets.state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(a, b) for a, b in zip(trained, net.net.parameters()))
    assert all(k in net.state_dict() for k in (f"prior_nets.{k}" for k in frozen))  # saved with the run
    assert model.eval().predict(image).shape == (4, 1, SIZE, SIZE)


def test_prior_must_be_a_soft_mask_model_taking_the_same_inputs(sr_checkpoint, softgan_checkpoint):
    def unet(path, channels=2):
        config = build_config(model="unet", layers=[{"store": "u.zarr", "target": "tumour", "size": SIZE,
                                                     "model_options": {"features": [8, 16],
                                                                       "prior_checkpoint": str(path)}}])
        return build_model(config, channels)

    with pytest.raises(CheckpointError, match="prior_checkpoint needs a checkpoint of softgan or casgan"):
        unet(sr_checkpoint)
    with pytest.raises(ConfigError, match="the prior takes 2 input channels"):
        unet(softgan_checkpoint, channels=1)
    config = build_config(model="unet", layers=[{"store": "u.zarr", "target": "tumour", "size": 36,
                                                 "model_options": {"features": [8, 16],
                                                                   "prior_checkpoint": str(softgan_checkpoint)}}])
    with pytest.raises(ConfigError, match="multiples of 8"):
        build_model(config, 2)


# ---- learning on real CT (slow) ---------------------------------------------------------------------
REGIONS = ((359, 217), (300, 150), (250, 330), (330, 300))  # (row, column) centres; the first holds the nodule


@pytest.fixture(scope="module")
def lung_regions(tmp_path_factory) -> Path:
    """Four 64 x 64 x 14 regions of the real lung CT as LiTS cases, lung window, and a soft nodule mask."""
    import nibabel as nib
    import SimpleITK as sitk
    from scipy.ndimage import gaussian_filter

    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.store import SliceStore
    from ctprep.windowing import parse_window

    source = SHARED_DATA / "pyradiomics_lung"
    if not (source / "lung1_image.nrrd").is_file():
        pytest.skip(f"real test data not available: {source} is absent (../shared/data exists only on the "
                    "project's machines)")
    root = tmp_path_factory.mktemp("lung_regions")
    image = sitk.ReadImage(str(source / "lung1_image.nrrd"))
    hu = sitk.GetArrayFromImage(image)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "lung1_label.nrrd"))) > 0
    spacing = np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    z0, z1, size = 26, 40, 64
    (root / "raw").mkdir()
    for number, (cy, cx) in enumerate(REGIONS):
        y0, x0 = cy - size // 2, cx - size // 2
        crop = (slice(z0, z1), slice(y0, y0 + size), slice(x0, x0 + size))
        affine = np.eye(4)
        affine[:3, :3] = direction * spacing
        affine[:3, 3] = np.array(image.GetOrigin()) + direction @ (spacing * np.array([x0, y0, z0]))
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
        for name, array in ((f"volume-{number}.nii", hu[crop].astype(np.int16)),
                            (f"segmentation-{number}.nii", (mask[crop] * 2).astype(np.uint8))):
            nifti = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
            nifti.set_sform(affine, code=1)
            nifti.set_qform(affine, code=1)
            nib.save(nifti, root / "raw" / name)
    out = root / "lung.zarr"
    convert_dataset(ConvertConfig(source="lits", input_dir=str(root / "raw"), output=str(out),
                                  windows=(parse_window("lung"),)), progress=False)
    store = SliceStore.open(out, mode="a")
    binary = store.read_label("volume-0", "tumour")
    soft = np.stack([gaussian_filter((s > 0).astype(np.float32), 1.5) for s in binary]).astype(np.float32)
    store.write_label("volume-0", "soft_tumour", soft, attributes={"kind": "soft", "method": "gaussian sigma 1.5"})
    return out


@pytest.mark.slow
def test_srgan_beats_bicubic_on_held_out_real_crops(lung_regions, tmp_path):
    """SRResNet stage (the paper preset's first phase: MSE only), 16 -> 64, three regions; PSNR on the fourth."""
    from ctseg.score import evaluate_sr_checkpoint

    config = build_config(model="srgan", layers=[{
        "store": str(lung_regions), "target": "tumour", "out": str(tmp_path / "sr"), "size": 64, "crop": "center",
        "cases": ["volume-0", "volume-1", "volume-2"], "train_split": "all", "val_split": "none", "sampling": "all",
        "batch_size": 8, "steps_per_epoch": 50, "epochs": 3, "image_every": 0, "seed": 0,
        "augment": {"rotate_deg": 0.0, "scale": [1.0, 1.0], "intensity": 0.0},
        "model_options": {**TINY_SR, "residual": True}, "optimizers": {"g": {"lr": 1e-3}},
        "loss_weights": {"adversarial": 0.0}, "frozen": ["d"]}])
    train(config, progress=False)
    result = evaluate_sr_checkpoint(tmp_path / "sr" / "last.pt", cases=["volume-3"], device="cpu")
    print("srgan held-out:", {k: round(v, 4) for k, v in result.items()})
    assert result["crops"] == 14
    assert result["psnr"] > result["psnr_bicubic"] + 0.1, result


@pytest.mark.slow
def test_softgan_learns_soft_masks_better_than_the_binary_label(lung_regions, tmp_path):
    """MSE against the soft truth on the nodule's slices below that of the expert's binary mask."""
    from ctprep.store import SliceStore
    from ctseg.score import soft_metrics

    config = build_config(model="softgan", layers=[{
        "store": str(lung_regions), "target": "soft_tumour", "out": str(tmp_path / "soft"), "size": 64,
        "crop": "center", "cases": ["volume-0"], "train_split": "all", "val_split": "none",
        "sampling": "lesion_only", "batch_size": 3, "steps_per_epoch": 60, "epochs": 4, "image_every": 0,
        "seed": 0, "augment": {"rotate_deg": 10.0, "scale": [0.9, 1.1], "intensity": 0.05},
        "model_options": {"features": [16, 32, 64, 64], "d_features": 8},
        "optimizers": {"g": {"lr": 5e-4}, "d": {"lr": 5e-4}}}])
    train(config, progress=False)
    model, config, _ = load_model(tmp_path / "soft" / "last.pt", device="cpu")
    data = SliceStore.open(lung_regions).read_case("volume-0", labels=["soft_tumour", "tumour"])
    rows = np.flatnonzero(data.labels["tumour"].any(axis=(1, 2)))
    soft = data.labels["soft_tumour"][rows]
    prob = predict_volume(model, data.image, config)[0][rows]
    learned = soft_metrics(prob, soft)
    binary = soft_metrics(data.labels["tumour"][rows].astype(np.float32), soft)
    print("softgan:", {k: round(v, 5) for k, v in learned.items()}, "binary label:",
          {k: round(v, 5) for k, v in binary.items()})
    assert learned["mse"] < binary["mse"], (learned, binary)
    assert learned["dice"] >= 0.8
