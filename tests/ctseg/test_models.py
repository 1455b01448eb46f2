"""The contract every registered model meets; one subclass per model (issue 6's models add theirs).

Steps run on synthetic batches (a bright square in the image is the lesion); the exact
resume test runs the real training loop on the phantom store.
"""

from __future__ import annotations

import math

import pytest
import torch

from ctseg.build import MODELS, build_config, build_model
from ctseg.errors import ConfigError
from ctseg.models.base import Amp, StepContext
from ctseg.train import train

SIZE = 32


def synthetic_batch(n: int = 4, channels: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, channels, SIZE, SIZE, generator=g) * 0.3
    target = torch.zeros(n, 1, SIZE, SIZE)
    for i in range(n):
        y, x = torch.randint(4, SIZE - 12, (2,), generator=g).tolist()
        target[i, 0, y:y + 8, x:x + 8] = 1
    image = image + 0.6 * target
    return {"image": image, "target": target}


class ModelContract:
    model: str = ""
    options: dict = {}
    optimizers: dict = {}
    discriminator: str | None = None  # the network trained against the generator
    generator: str = ""
    d_loss: str = ""  # the logged loss the discriminator minimises

    def config(self, **layer):
        base = {"store": "unused.zarr", "target": "tumour", "size": SIZE, "batch_size": 4,
                "model_options": self.options, "optimizers": self.optimizers}
        return build_config(model=self.model, layers=[base, layer])

    def make(self, **layer):
        config = self.config(**layer)
        torch.manual_seed(0)
        model = build_model(config, 2)
        optimizers = model.optimizers(config)
        ctx = StepContext(optimizers=optimizers, amp=Amp(torch.device("cpu"), "off", list(optimizers)),
                          weights=config.weights_at(0), trainable=frozenset(optimizers))
        return model, ctx

    def test_registered_with_a_description(self):
        assert MODELS[self.model].description

    def test_predict_gives_probabilities_of_the_input_size(self):
        model, _ = self.make()
        prob = model.eval().predict(synthetic_batch()["image"])
        assert prob.shape == (4, 1, SIZE, SIZE)
        assert prob.min() >= 0 and prob.max() <= 1

    def test_step_losses_are_finite(self):
        model, ctx = self.make()
        logs = model.train().train_step(synthetic_batch(), ctx)
        assert logs and all(math.isfinite(float(v)) for v in logs.values())

    def test_one_step_changes_every_network(self):
        model, ctx = self.make()
        before = {n: [p.detach().clone() for p in net.parameters()] for n, net in model.nets.items()}
        model.train().train_step(synthetic_batch(), ctx)
        for name, net in model.nets.items():
            changed = any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters()))
            assert changed, f"{self.model}: network {name} did not change"

    def test_frozen_network_does_not_change(self):
        name = next(iter(MODELS[self.model](self.config(), 2).nets))
        model, ctx = self.make(frozen=[name])
        before = [p.detach().clone() for p in model.nets[name].parameters()]
        model.train().train_step(synthetic_batch(), ctx)
        assert all(torch.equal(a, b) for a, b in zip(before, model.nets[name].parameters()))

    def test_discriminator_loss_falls_when_the_generator_is_frozen(self):
        if self.discriminator is None:
            pytest.skip(f"{self.model} has no discriminator")
        model, ctx = self.make(frozen=[self.generator])
        batch = synthetic_batch()
        losses = [float(model.train().train_step(batch, ctx)[self.d_loss]) for _ in range(12)]
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses

    def test_unknown_option_is_refused(self):
        with pytest.raises(ConfigError, match="unknown model_options"):
            build_model(self.config(model_options={"no_such_option": 1}), 2)

    def test_paper_preset_resolves(self):
        config = build_config(model=self.model, layers=[{"store": "s.zarr", "target": "tumour"}], preset="paper")
        assert config.to_dict()["model"] == self.model

    def test_resume_continues_exactly(self, phantom_store, tmp_path):
        """Stopped after 4 of 6 steps (mid-epoch) and resumed == 6 steps in one go, bit for bit."""
        layer = {"store": str(phantom_store), "out": str(tmp_path / "a"), "epochs": 2, "steps_per_epoch": 3,
                 "batch_size": 2, "train_split": "all", "val_split": "none", "image_every": 0, "seed": 4,
                 "crop": "lesion"}
        straight = train(self.config(**layer), progress=False)
        layer["out"] = str(tmp_path / "b")
        first = train(self.config(**layer, max_steps=4), progress=False)
        assert (first.step, first.stopped) == (4, "max_steps")
        resumed = train(self.config(**layer), resume=True, progress=False)
        assert straight.step == resumed.step == 6
        a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
        b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
        for name in a["networks"]:
            for key, value in a["networks"][name].items():
                assert torch.equal(value, b["networks"][name][key]), f"{name}.{key} differs after resume"
        assert a["optimizers"]["{}".format(next(iter(a["optimizers"])))]["state"].keys() == \
            b["optimizers"][next(iter(b["optimizers"]))]["state"].keys()


class TestUNet(ModelContract):
    model = "unet"
    options = {"features": [8, 16, 32]}
    optimizers = {"net": {"lr": 1e-3}}

    @pytest.mark.parametrize("loss", ["mae", "mse", "weighted_ce", "dice", "mse_dice"])
    def test_every_loss_of_the_study_trains(self, loss):
        model, ctx = self.make(model_options={**self.options, "loss": loss})
        batch = synthetic_batch()
        first = float(model.train().train_step(batch, ctx)["loss"])
        for _ in range(5):
            last = float(model.train_step(batch, ctx)["loss"])
        assert math.isfinite(first) and last < first


class TestCTumorGAN(ModelContract):
    model = "ctumorgan"
    options = {"features": [8, 16, 32, 32], "d_features": 8, "z_dim": 10}
    optimizers = {"g": {"lr": 1e-3}, "d": {"lr": 1e-3}}
    discriminator, generator, d_loss = "d", "g", "loss_d"

    def test_noise_joins_at_the_bottleneck(self):
        model, _ = self.make()
        image = synthetic_batch()["image"]
        g = model.nets["g"].eval()
        with torch.no_grad():
            a, b = g(image, z=torch.zeros(4, 10)), g(image, z=torch.randn(4, 10) * 3)
        assert not torch.allclose(a, b)
        assert torch.equal(model.predict(image), model.predict(image))  # z = 0 at prediction

    def test_wrong_masks_come_from_other_slices_or_the_bank(self):
        model, _ = self.make()
        target = synthetic_batch()["target"]
        wrong, valid = model.wrong_masks(target)
        assert torch.equal(wrong, target.roll(1, 0)) and valid.sum() == 4
        single = target[:1]
        assert model.wrong_masks(single)[1].sum() == 0  # nothing to compare with yet
        model.remember(target[1:2])
        wrong, valid = model.wrong_masks(single)
        assert torch.equal(wrong, target[1:2]) and valid.item() == 1

    def test_paper_preset_has_two_phases(self):
        config = build_config(model="ctumorgan", layers=[{"store": "s.zarr", "target": "tumour"}], preset="paper")
        assert config.batch_size == 1 and config.threshold == 0.1 and config.total_epochs == 300
        assert config.weights_at(0) == {"alpha": 0.0, "beta": 1.0, "gamma": 0.0}
        assert config.weights_at(250) == {"alpha": 1.0, "beta": 0.0, "gamma": 100.0}
        assert config.phase_at(250)[1].lr == {"g": 5e-5, "d": 5e-5}
        assert config.optimizers["g"].betas == (0.5, 0.999)
        # Sec. 2.1: tumour slices only, whole slices; Sec. 2.3.2: batch 1; Sec. 2.2.4: z to the deconvolutions
        assert (config.sampling, config.crop, config.size, config.augment.enabled) == (
            "lesion_only", "resize", 512, False)
        assert config.model_options["z_at"] == "decoder"

    def test_paper_noise_reaches_every_decoder_deconvolution(self):
        """Ablation: with z_at decoder, changing z changes the input of the last deconvolution (deconv1);
        with z_at bottleneck, the same z change reaches deconv1 only through the layers above it."""
        model, _ = self.make(model_options={**self.options, "z_at": "decoder"})
        g = model.nets["g"].eval()
        seen = []
        g.final.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
        image = synthetic_batch()["image"]
        with torch.no_grad():
            g(image, z=torch.zeros(4, 10)), g(image, z=torch.ones(4, 10))
        z_channels = slice(seen[0].shape[1] - 10, None)  # the tiled z, concatenated last
        assert torch.equal(seen[0][:, z_channels], torch.zeros_like(seen[0][:, z_channels]))
        assert torch.equal(seen[1][:, z_channels], torch.ones_like(seen[1][:, z_channels]))
        assert not torch.allclose(seen[0][:, :z_channels.start], seen[1][:, :z_channels.start])
        assert all(up.up.in_channels % 2 == 0 and up.up.in_channels > 10 for up in g.up)
        plain, _ = self.make()
        assert plain.nets["g"].final.up.in_channels == g.final.up.in_channels - 10

    @pytest.mark.parametrize("loss", ["mae", "mse", "weighted_ce", "dice", "mse_dice"])
    def test_each_table2_loss_trains_the_generator_alone(self, loss):
        model, ctx = self.make(model_options={**self.options, "g_loss": loss})
        d_before = [p.clone() for p in model.nets["d"].parameters()]
        g_before = [p.clone() for p in model.nets["g"].parameters()]
        logs = model.train().train_step(synthetic_batch(), ctx)
        assert math.isfinite(float(logs["loss_g"])) and "loss_d" not in logs
        assert all(torch.equal(a, b) for a, b in zip(d_before, model.nets["d"].parameters()))
        assert not all(torch.equal(a, b) for a, b in zip(g_before, model.nets["g"].parameters()))

    def test_weighted_cross_entropy_balances_the_classes(self):
        from ctseg.models.losses import study_loss

        target = torch.zeros(1, 1, 4, 4)
        target[0, 0, 0, 0] = 1  # 1 positive, 15 negatives: the positive weighs 15
        loss = study_loss("weighted_ce", torch.full_like(target, 0.5), target)  # every pixel costs log 2, weighted
        assert float(loss) == pytest.approx(math.log(2) * (15 + 15) / 16, rel=1e-4)

    def test_unknown_loss_or_noise_place_is_one_clear_error(self):
        with pytest.raises(ConfigError, match="g_loss must be one of"):
            self.make(model_options={**self.options, "g_loss": "l3"})
        with pytest.raises(ConfigError, match="z_at must be one of"):
            self.make(model_options={**self.options, "z_at": "everywhere"})


class TestSegAN(ModelContract):
    model = "segan"
    options = {"features": [8, 16, 32, 32], "critic_features": [8, 16, 32]}
    optimizers = {"s": {"lr": 1e-3}, "c": {"lr": 1e-3}}
    discriminator, generator, d_loss = "c", "s", "loss_c"

    def test_critic_weights_are_clipped(self):
        model, ctx = self.make()
        model.train().train_step(synthetic_batch(), ctx)
        assert max(p.abs().max().item() for p in model.nets["c"].parameters()) <= 0.01 + 1e-9

    def test_one_critic_per_label_for_s3_3c(self):
        config = self.config(target="a,b,c", model_options={**self.options, "variant": "S3-3C"})
        model = build_model(config, 2)
        assert sorted(model.nets) == ["c", "c1", "c2", "s"]
        optimizers = model.optimizers(config)
        batch = synthetic_batch()
        batch["target"] = batch["target"].repeat(1, 3, 1, 1)
        ctx = StepContext(optimizers=optimizers, amp=Amp(torch.device("cpu"), "off", list(optimizers)),
                          weights={}, trainable=frozenset(optimizers))
        logs = model.train().train_step(batch, ctx)
        assert math.isfinite(float(logs["loss_s"]))
        assert model.eval().predict(batch["image"]).shape == (4, 3, SIZE, SIZE)

    def test_s1_1c_is_one_segmentor_and_one_critic_per_label(self):
        """SegAN Sec. 3.1: S1-1C builds a separate SegAN per label; label 1 ignores label 0's segmentor."""
        config = self.config(target="a,b", model_options={**self.options, "variant": "S1-1C"})
        model = build_model(config, 2)
        assert sorted(model.nets) == ["c", "c1", "s"] and len(model.nets["s"].nets) == 2
        image = synthetic_batch()["image"]
        before = model.eval().predict(image)
        with torch.no_grad():
            for p in model.nets["s"].nets[0].parameters():
                p.add_(0.5)
        after = model.predict(image)
        assert torch.equal(before[:, 1], after[:, 1]) and not torch.equal(before[:, 0], after[:, 0])

    def test_single_scale_ablations_use_the_input_or_the_output_layer(self):
        from ctseg.models.segan import SCALES, multiscale_l1

        fake = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)]
        real = [torch.full((1, 1, 2, 2), float(i + 1)) for i in range(4)]  # layer i differs by i + 1
        assert float(multiscale_l1(fake, real)) == pytest.approx(2.5)  # S3: all four scales
        assert float(multiscale_l1(fake, real, SCALES["S3-3C-s0"])) == pytest.approx(1.0)
        assert float(multiscale_l1(fake, real, SCALES["S3-3C-s3"])) == pytest.approx(4.0)
        config = self.config(target="a,b", model_options={**self.options, "variant": "S3-3C-s0"})
        assert sorted(build_model(config, 2).nets) == ["c", "c1", "s"]


def test_the_catalogue_names_exactly_the_registered_models():
    """ctseg.models.registry.CATALOGUE (what `ctseg models` prints without torch) is the registry."""
    from ctseg.models.registry import CATALOGUE

    assert {name: cls.description for name, cls in MODELS.items()} == CATALOGUE
    assert all(cls.name == name for name, cls in MODELS.items())


def test_each_registered_model_has_its_own_file():
    for name, cls in MODELS.items():
        assert cls.__module__ == "ctseg.models." + name.replace("-", "_"), name
