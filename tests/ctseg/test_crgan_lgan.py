"""crgan and the five LGAN designs: the model contract plus what is particular to each.

Contract tests (shapes, finite losses, a step changes every network, frozen networks stay,
the discriminator's loss falls with the generator frozen, exact resume) come from
test_models.ModelContract; the learning runs on the real nodule are at the bottom (slow).
"""

from __future__ import annotations

import math

import pytest
import torch

from test_models import ModelContract, synthetic_batch, SIZE

from ctseg.build import build_config, build_model
from ctseg.errors import ConfigError
from ctseg.models.blocks import has_batch_norm
from ctseg.models.base import StepContext
from ctseg.models.crgan import BiConvLSTM, PatientNorm, balanced_l1, compose, error_maps
from ctseg.models.lgan import gradient_penalty


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one thread is as fast, and far faster when the machine is shared
    (two OpenMP threads on a busy 2-core machine spin-wait on each other, 10-30x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- crgan -------------------------------------------------------------------------------------------
class TestCRGAN(ModelContract):
    model = "crgan"
    options = {"features": [8, 16, 32], "d_features": 8}
    optimizers = {"g": {"lr": 1e-3}, "d": {"lr": 1e-3}, "r": {"lr": 1e-3}}
    discriminator, generator, d_loss = "d", "g", "loss_d"

    def test_one_step_changes_every_network(self):
        """Trained in two stages (Sec. 3.2.1): G and D in a stage-1 step, R in a stage-2 step."""
        self.test_stage_one_trains_g_and_d_only_then_stage_two_r_only()

    def test_error_maps_compose_back_to_the_truth(self):
        g = torch.rand(2, 1, 8, 8)
        for truth in ((torch.rand(2, 1, 8, 8) > 0.5).float(), torch.rand(2, 1, 8, 8)):
            fp, fn = error_maps(g, truth)
            assert fp.min() >= 0 and fn.min() >= 0 and (fp * fn).max() == 0  # never both at a pixel
            assert torch.allclose(compose(g, fp, fn), truth, atol=1e-6)
        assert torch.equal(error_maps(g, (g > 2).float())[0], g)  # empty truth: everything predicted is FP

    def test_predict_returns_the_composition_or_g_alone(self):
        model, _ = self.make()
        image = synthetic_batch()["image"]
        model.eval()
        parts = model.predict_parts(image)
        assert set(parts) == {"g", "fp", "fn", "final"}
        assert torch.allclose(parts["final"], (parts["g"] - parts["fp"] + parts["fn"]).clamp(0, 1))
        assert torch.equal(model.predict(image), parts["g"])  # R not trained yet: the final output is G's
        model.refined = True
        assert torch.equal(model.predict(image), parts["final"])
        model.options["predict"] = "g"
        assert torch.equal(model.predict(image), parts["g"])

    def test_refinement_learns_the_error_maps_of_a_frozen_generator(self):
        model, ctx = self.make(frozen=["g", "d"], model_options={**self.options, "cgan_epochs": 0})
        batch = synthetic_batch()
        assert not model.refined and torch.equal(model.predict(batch["image"]), model.predict_parts(batch["image"])["g"])
        losses = [float(model.train().train_step(batch, ctx)["loss_r"]) for _ in range(10)]
        assert losses[-1] < losses[0], losses
        assert model.refined and model.extra_state() == {"refined": True}

    def test_stage_one_trains_g_and_d_only_then_stage_two_r_only(self):
        model, ctx = self.make(model_options={**self.options, "cgan_epochs": 1})
        assert model.stage(0) == 1 and model.stage(1) == 2
        batch = synthetic_batch()
        for epoch, moved in ((0, {"g", "d"}), (1, {"r"})):
            before = {n: [p.detach().clone() for p in net.parameters()] for n, net in model.nets.items()}
            step = StepContext(optimizers=ctx.optimizers, amp=ctx.amp, weights=ctx.weights, epoch=epoch,
                               trainable=ctx.trainable)
            model.train().train_step(batch, step)
            changed = {n for n, net in model.nets.items()
                       if any(not torch.equal(a, b) for a, b in zip(before[n], net.parameters()))}
            assert changed == moved, (epoch, changed)

    def test_balanced_l1_weighs_lesion_and_background_equally(self):
        truth = torch.zeros(1, 1, 10, 10)
        truth[..., :1, :1] = 1  # 1 lesion pixel in 100
        empty = torch.zeros_like(truth)
        assert balanced_l1(empty, truth).item() == pytest.approx(0.5)  # plain L1 would say 0.01
        assert torch.nn.functional.l1_loss(empty, truth).item() == pytest.approx(0.01)
        assert balanced_l1(truth, truth).item() == 0
        assert balanced_l1(torch.ones_like(truth), truth).item() == pytest.approx(0.5)

    def test_patient_norm_by_default_uses_each_batch_statistics_at_inference(self):
        config = self.config()
        assert config.patient_batches and config.model_options["norm"] == "patient"
        model = build_model(config, 2).eval()
        assert not any(has_batch_norm(net) for net in model.nets.values())  # never SyncBatchNorm-converted
        assert any(isinstance(m, PatientNorm) for m in model.nets["g"].modules())
        image = synthetic_batch()["image"]
        alone = model.predict(image[:2])
        with_others = model.predict(torch.cat([image[:2], image[2:] * 0.2]))[:2]
        assert not torch.allclose(alone, with_others)  # statistics of the batch (the patient), not running ones

    def test_ordinary_batch_norm_option(self):
        model = build_model(self.config(patient_batches=False, model_options={**self.options, "norm": "batch"}), 2)
        assert has_batch_norm(model.nets["g"]) and has_batch_norm(model.nets["d"])
        model.eval()
        image = synthetic_batch()["image"]
        assert torch.allclose(model.predict(image[:2]), model.predict(image)[:2], atol=1e-6)

    @pytest.mark.parametrize("patch,shape", [(1, (8, 1, SIZE, SIZE)), (16, (8, 1, 14, 14)), (34, (8, 1, 6, 6))])
    def test_discriminator_patch_size(self, patch, shape):
        model = build_model(self.config(model_options={**self.options, "d_patch": patch}), 2)
        batch = synthetic_batch()
        pairs = torch.cat([batch["image"], batch["target"]], 1)
        assert model.nets["d"](torch.cat([pairs, pairs]), sequences=2).shape == shape

    def test_unknown_patch_size_is_refused(self):
        with pytest.raises(ConfigError, match="d_patch"):
            build_model(self.config(model_options={**self.options, "d_patch": 50}), 2)

    def test_recurrent_needs_patient_batches(self):
        with pytest.raises(ConfigError, match="patient_batches"):
            build_model(self.config(patient_batches=False, model_options={**self.options, "recurrent": True}), 2)

    def test_recurrent_variant_links_neighbouring_slices(self):
        options = {**self.options, "recurrent": True, "norm": "none"}
        model, ctx = self.make(model_options=options)
        for name in ("g", "d", "r"):
            assert any(isinstance(m, BiConvLSTM) for m in model.nets[name].modules()), name
        logs = model.train().train_step(synthetic_batch(), ctx)
        assert all(math.isfinite(float(v)) for v in logs.values())
        flat = build_model(self.config(model_options={**self.options, "norm": "none"}), 2)
        for net, linked in ((model.nets["g"], True), (model.nets["r"], True), (model.nets["d"], True),
                            (flat.nets["g"], False), (flat.nets["d"], False)):
            image = synthetic_batch()["image"]
            if net is model.nets["r"] or net in (model.nets["d"], flat.nets["d"]):
                image = torch.cat([image, synthetic_batch()["target"]], 1)
            image.requires_grad_(True)
            net(image)[0].sum().backward()  # output of slice 0 ...
            reach = image.grad[3].abs().sum().item()  # ... depends on slice 3 (the backward direction)?
            assert (reach > 0) == linked, (net.__class__.__name__, reach)

    def test_biconvlstm_keeps_sequences_apart_and_reads_both_ways(self):
        torch.manual_seed(0)
        rnn = BiConvLSTM(4, 3)
        x = torch.randn(6, 4, 5, 5)
        out = rnn(x, sequences=2)
        assert out.shape == x.shape
        y = x.clone()
        y[0] += 1  # first slice of the first sequence
        moved = rnn(y, sequences=2)
        assert torch.allclose(moved[3:], out[3:], rtol=0, atol=1e-7)  # the other sequence does not see it
        assert not torch.allclose(moved[2], out[2])  # the forward direction carries it to the end
        z = x.clone()
        z[2] += 1  # last slice of the first sequence
        assert not torch.allclose(rnn(z, sequences=2)[0], out[0])  # the backward direction carries it back

    def test_paper_presets(self):
        paper = build_config(model="crgan", layers=[{"store": "s.zarr", "target": "tumour"}], preset="paper")
        assert (paper.optimizers["g"].name, paper.optimizers["d"].name, paper.optimizers["r"].name) == \
            ("adadelta", "adadelta", "rmsprop")
        assert all(o.lr == 1e-3 for o in paper.optimizers.values())
        assert paper.patient_batches and paper.loss_weights == {"adv": 1.0, "l1": 1.0}  # Eq. 4
        recurrent = build_config(model="crgan", layers=[{"store": "s.zarr", "target": "tumour"}],
                                 preset="paper-recurrent")
        assert recurrent.model_options["recurrent"] and recurrent.optimizers["g"].name == "rmsprop"


# ---- LGAN --------------------------------------------------------------------------------------------
class LGANContract(ModelContract):
    """The contract plus the WGAN checks, for each critic design (one subclass per registered name)."""

    options = {"features": [8, 16, 32], "critic_features": [8, 16], "fc": 16, "n_critic": 1}
    optimizers = {"g": {"lr": 1e-3}, "d": {"lr": 1e-3}}
    discriminator, generator, d_loss = "d", "g", "loss_d"
    first_in: int = 0  # input channels of the critic's first convolution (image 2 channels, 1 label)

    def em_estimate(self, model, batch) -> float:
        """mean D(real) - mean D(fake) on ``batch`` with the current generator."""
        with torch.no_grad():
            pred = model.predict(batch["image"])
            cond = model.condition(batch["image"], batch["target"])
            critic = model.nets["d"]
            return float(critic(cond, batch["target"]).mean() - critic(cond, pred).mean())

    def test_critic_training_increases_d_real_minus_d_fake(self):
        model, ctx = self.make(frozen=["g"])
        batch = synthetic_batch()
        model.eval()
        before = self.em_estimate(model, batch)
        for _ in range(25):
            model.train().train_step(batch, ctx)
        model.eval()
        after = self.em_estimate(model, batch)
        assert after > before + 0.1, (before, after)

    def test_critic_input(self):
        model = build_model(self.config(), 2)
        first = next(m for m in model.nets["d"].modules() if isinstance(m, torch.nn.Conv2d))
        assert first.in_channels == self.first_in

    def test_weight_clipping(self):
        model, ctx = self.make(model_options={**self.options, "lipschitz": "clip", "clip": 0.02})
        model.train().train_step(synthetic_batch(), ctx)
        assert max(p.abs().max().item() for p in model.nets["d"].parameters()) <= 0.02 + 1e-9

    def test_gradient_penalty_refuses_batch_norm_in_the_critic(self):
        with pytest.raises(ConfigError, match="batch norm"):
            build_model(self.config(model_options={**self.options, "critic_norm": "batch"}), 2)


class TestLGANBasic(LGANContract):
    model, first_in = "lgan-basic", 1

    def test_critic_sees_the_mask_alone(self):
        model = build_model(self.config(), 2)
        mask = synthetic_batch()["target"]
        critic = model.nets["d"]
        assert torch.equal(critic(torch.rand(4, 2, SIZE, SIZE), mask), critic(torch.zeros(4, 2, SIZE, SIZE), mask))


class TestLGANProduct(LGANContract):
    model, first_in = "lgan-product", 2

    def test_critic_sees_mask_times_ct(self):
        model = build_model(self.config(), 2)
        batch = synthetic_batch()
        critic = model.nets["d"]
        outside = batch["image"] + (1 - batch["target"]) * 0.5  # changes only where the mask is 0
        assert torch.allclose(critic(batch["image"], batch["target"]), critic(outside, batch["target"]))


class TestLGANEarlyFusion(LGANContract):
    model, first_in = "lgan-ef", 3


class TestLGANLateFusion(LGANContract):
    model, first_in = "lgan-lf", 2  # the CT branch's first convolution

    def test_two_branches_fused_before_the_common_layers(self):
        model = build_model(self.config(), 2)
        critic = model.nets["d"]
        assert critic.cond_branch[0][0].in_channels == 2 and critic.mask_branch[0][0].in_channels == 1
        assert critic.head[1].in_features == 2 * 16 * 4 * 4  # both branches' 16 channels, pooled to 4x4
        early = build_model(self.config(model_options={**self.options, "branch_layers": 1}), 2).nets["d"]
        assert early.trunk[0][0].in_channels == 2 * 8


class TestLGANRegression(LGANContract):
    model, first_in = "lgan-regression", 1

    def test_critic_is_conditioned_on_the_truth(self):
        model = build_model(self.config(), 2)
        batch = synthetic_batch()
        assert torch.equal(model.condition(batch["image"], batch["target"]), batch["target"])

    def test_anchor_off_gives_the_literal_loss(self):
        model, ctx = self.make(model_options={**self.options, "anchor": False, "lipschitz": "clip"})
        logs = model.train().train_step(synthetic_batch(), ctx)
        assert float(logs["loss_d"]) == pytest.approx(float(logs["d_fake"]))


class TestLGANCommon:
    config = TestLGANEarlyFusion.config
    make = TestLGANEarlyFusion.make
    model = "lgan-ef"
    options = LGANContract.options
    optimizers = LGANContract.optimizers

    def test_gradient_penalty_of_known_critics(self):
        x = torch.rand(5, 2, requires_grad=True)
        linear = gradient_penalty(x @ torch.tensor([3.0, 4.0]), x)  # gradient (3, 4) everywhere
        assert linear.item() == pytest.approx((5.0 - 1.0) ** 2)
        quadratic = gradient_penalty((x ** 2).sum(1) / 2, x)  # gradient x
        expected = ((x.detach().norm(dim=1) - 1) ** 2).mean()
        assert quadratic.item() == pytest.approx(expected.item(), rel=1e-5)
        quadratic.backward()  # differentiable (create_graph): d/dx (|x| - 1)^2 / 5
        assert torch.allclose(x.grad, 2 * (1 - 1 / x.detach().norm(dim=1, keepdim=True)) * x.detach() / 5, atol=1e-6)

    def test_generator_steps_every_n_critic_batches(self):
        from ctseg.models.base import StepContext

        model, ctx = self.make(model_options={**self.options, "n_critic": 3})
        batch = synthetic_batch()
        changes = []
        for step in range(3):
            before = [p.detach().clone() for p in model.nets["g"].parameters()]
            step_ctx = StepContext(optimizers=ctx.optimizers, amp=ctx.amp, weights=ctx.weights, step=step,
                                   trainable=ctx.trainable)
            logs = model.train().train_step(batch, step_ctx)
            changes.append(any(not torch.equal(a, b) for a, b in zip(before, model.nets["g"].parameters())))
            assert ("loss_g" in logs) == changes[-1]
        assert changes == [False, False, True]

    def test_repeat_schedule_runs_n_critic_steps_per_batch(self):
        model, ctx = self.make(model_options={**self.options, "n_critic": 3, "critic_schedule": "repeat"})
        model.train().train_step(synthetic_batch(), ctx)
        state = ctx.optimizers["d"].state_dict()["state"]
        assert float(next(iter(state.values()))["step"]) == 3
        assert float(next(iter(ctx.optimizers["g"].state_dict()["state"].values()))["step"]) == 1

    def test_resume_is_exact_with_the_n_critic_schedule(self, phantom_store, tmp_path):
        """6 steps with the generator on steps 2 and 5; stopped after 4, resumed: bit for bit."""
        self.options = {**LGANContract.options, "n_critic": 3}
        ModelContract.test_resume_continues_exactly(self, phantom_store, tmp_path)

    def test_flatten_head_without_pooling(self):
        model, ctx = self.make(model_options={**self.options, "pool": None})
        assert model.nets["d"].head[1].in_features == 16 * 8 * 8  # 32 -> 16 -> 8 after two stride-2 convs
        logs = model.train().train_step(synthetic_batch(), ctx)
        assert math.isfinite(float(logs["loss_d"]))

    def test_paper_preset(self):
        config = build_config(model="lgan-lf", layers=[{"store": "s.zarr", "target": "lung"}], preset="paper")
        assert config.size == 224 and config.crop == "resize"
        assert all(o.name == "adam" and o.lr == 1e-5 for o in config.optimizers.values())
        default = build_config(model="lgan-lf", layers=[{"store": "s.zarr", "target": "lung"}])
        assert default.size == 224 and default.model_options["n_critic"] == 1 and config.model_options["n_critic"] == 5
        assert default.loss_weights["adv"] == 0.01 and config.loss_weights["adv"] == 1.0
        assert default.model_options["lipschitz"] == "gp" and default.loss_weights["gp"] == 10.0
        # LGAN Sec. 4.2: weight decay 0.0005 and a Gaussian initialisation; paper-n1: one critic step
        assert all(o.weight_decay == 5e-4 for o in config.optimizers.values())
        assert config.model_options["init"] == "gaussian" and default.model_options["init"] == "default"
        n1 = build_config(model="lgan-lf", layers=[{"store": "s.zarr", "target": "lung"}], preset="paper-n1")
        assert n1.model_options["n_critic"] == 1 and n1.model_options["init"] == "gaussian"
        gaussian = build_model(n1.__class__.from_dict({**n1.to_dict(), "size": 32,
                                                       "model_options": {**n1.model_options, **self.options}}), 1)
        weights = torch.cat([m.weight.flatten() for m in gaussian.nets["g"].modules()
                             if isinstance(m, torch.nn.Conv2d)])
        assert float(weights.detach().std()) == pytest.approx(0.02, rel=0.05)


# ---- learning the real nodule (slow) ----------------------------------------------------------------------
# G at lr 3e-3 (the nodule is ~7 % of a lesion crop: plain BCE is slow), one critic step per
# generator step, adv 0.1 (the gradient-penalty critic's EM estimate is ~10-30 on 64x64 masks).
LGAN_LEARNING = ({"features": [16, 32, 64], "critic_features": [8, 16, 32], "fc": 32, "n_critic": 1,
                  "pos_weight": None},  # a small lesion: BCE weighted by the batch's background/foreground ratio
                 {"g": {"lr": 3e-3}, "d": {"lr": 1e-3}}, 120, {"adv": 0.1})
LEARNING = {
    **{name: LGAN_LEARNING for name in ("lgan-basic", "lgan-product", "lgan-ef", "lgan-lf", "lgan-regression")},
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(LEARNING))
def test_model_learns_the_real_nodule(model, nodule_store, tmp_path):
    """As test_learning: 100-120 steps of batch 8 on the pyradiomics nodule; the best validated (training) Dice."""
    from test_learning import assert_learns_the_nodule

    assert_learns_the_nodule(model, *LEARNING[model], nodule_store, tmp_path)


@pytest.mark.slow
def test_crgan_generator_alone_and_refined_learn_the_real_nodule(nodule_store, tmp_path):
    """The two stages of Sec. 3.2.1 on the nodule: 120 steps of G and D, then 80 of R on the fixed G.

    G alone must reach Dice 0.8 (validated as ``dice_g``) and the final G - FP + FN output
    must be at least as good (Table 4: refinement adds to the cGAN); best.pt predicts it again.
    """
    from test_learning import assert_learns_the_nodule

    options = {"features": [8, 16, 32, 32], "d_features": 8, "cgan_epochs": 6}
    optimizers = {"g": {"lr": 2e-3}, "d": {"lr": 1e-3}, "r": {"lr": 2e-3}}
    phases = [{"epochs": 6, "decay": "linear"}, {"epochs": 4, "decay": "linear"}]
    result = assert_learns_the_nodule("crgan", options, optimizers, 200, {}, nodule_store, tmp_path, phases=phases)
    stage_one = [h["dice_g"] for h in result.history[:6]]
    stage_two = result.history[6:]
    assert max(stage_one) >= 0.8, stage_one
    assert all(h["dice_g"] == pytest.approx(stage_two[0]["dice_g"]) for h in stage_two)  # G fixed in stage 2
    assert stage_two[-1]["dice"] >= stage_two[-1]["dice_g"] >= 0.8, stage_two
