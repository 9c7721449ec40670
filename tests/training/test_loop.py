"""The training loop: determinism, exact resume from a checkpoint, DiffAugment, ADA, hyperparameters."""

from __future__ import annotations

import math

import pytest
import torch

from simulacra_services.core.storage import LocalObjectStore
from simulacra_services.training.loop.ada import AdaController
from simulacra_services.training.loop.checkpoints import CheckpointInfo, CheckpointStore
from simulacra_services.training.loop.diffaugment import cutout, diff_augment, translation
from simulacra_services.training.loop.hyperparameters import InvalidHyperparameter, resolve
from simulacra_services.training.loop.schedule import BatchSchedule
from simulacra_services.training.loop.trainers import LECAM_DECAY, LecamAnchors, lecam_penalty
from tests.training.tiny import tiny_data, tiny_run, weights

KINDS = ("vae", "gan", "enhanced_gan")


def _assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_the_same_weights_and_another_seed_does_not(kind):
    a, b, c = tiny_run(kind), tiny_run(kind), tiny_run(kind, seed=7)
    for run in (a, b, c):
        run.run()
    _assert_same_weights(a, b)
    assert a.history == b.history
    assert a.history != c.history


@pytest.mark.parametrize("kind", KINDS)
def test_resume_from_a_checkpoint_continues_exactly(tmp_path, kind):
    extra = {"r1_gamma": 0.5, "loss": "nonsaturating"} if kind == "gan" else {}
    if kind == "enhanced_gan":
        # Validation draws, p moving, LeCam's anchors carried over.
        extra = {"ada_heuristic": "r_v", "ada_interval": 1, "ada_speed_images": 80, "lecam_weight": 0.3}
    straight = tiny_run(kind, attribute_sizes=(2, 3), **extra)
    straight.run()

    first = tiny_run(kind, attribute_sizes=(2, 3), **extra)
    first.run(until_step=3)
    store = CheckpointStore(LocalObjectStore(tmp_path), "training-jobs/j1")
    info = store.save(first.step, first.state_dict())
    assert info.object_key == "training-jobs/j1/checkpoints/0000000003.pt"
    torch.manual_seed(12345)  # the process that resumes has another global RNG state

    resumed = tiny_run(kind, attribute_sizes=(2, 3), **extra)
    resumed.load_state_dict(store.load(info))
    assert resumed.step == 3
    resumed.run()
    assert resumed.step == straight.step == 6
    assert resumed.history == straight.history
    _assert_same_weights(resumed, straight)


def test_a_corrupted_checkpoint_is_refused(tmp_path):
    run = tiny_run("gan")
    store = CheckpointStore(LocalObjectStore(tmp_path), "training-jobs/j2")
    info = store.save(0, run.state_dict())
    with pytest.raises(ValueError, match="sha256"):
        store.load(CheckpointInfo(info.step, info.object_key, "0" * 64, info.size_bytes))
    with pytest.raises(ValueError, match="model kind"):
        tiny_run("vae").load_state_dict(store.load(info))


def test_stop_request_ends_the_run_between_steps():
    run = tiny_run("gan")
    run.run(should_stop=lambda: run.step >= 2)
    assert run.step == 2 and not run.done


def test_batch_schedule_is_a_function_of_seed_and_step():
    a, b = BatchSchedule(10, 4, seed=3), BatchSchedule(10, 4, seed=3)
    assert a.steps_per_epoch == 2
    seen = torch.cat([a.indices(0), a.indices(1)])
    assert len(set(seen.tolist())) == 8  # no repeats inside an epoch
    assert torch.equal(b.indices(5), a.indices(5)) and torch.equal(b.indices(1), a.indices(1))
    assert not torch.equal(a.indices(2), a.indices(0))  # another epoch, another order
    assert BatchSchedule(3, 64, seed=0).batch_size == 3


def test_diff_augment_with_p_zero_is_the_identity_and_gradients_flow():
    x = (torch.rand(6, 1, 16, 16) * 2 - 1).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(diff_augment(x, ("color", "translation", "cutout"), 0.0, g), x)
    y = diff_augment(x, ("color", "translation", "cutout"), 1.0, g)
    assert not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_cutout_blanks_a_square_and_translation_keeps_the_content():
    g = torch.Generator().manual_seed(1)
    x = torch.ones(4, 1, 16, 16)
    cut = cutout(x, g)
    blanked = (cut == -1).sum(dim=(1, 2, 3))
    assert ((blanked > 0) & (blanked <= 64)).all()  # a square of at most 8x8
    dot = torch.full((8, 1, 16, 16), -1.0)
    dot[:, :, 8, 8] = 1.0
    moved = translation(dot, g)
    assert torch.equal((moved == 1).sum(dim=(1, 2, 3)), torch.ones(8, dtype=torch.long))


def test_ada_raises_p_when_the_discriminator_overfits_and_lowers_it_otherwise():
    ada = AdaController(target=0.6, interval=2, speed_images=100, p=0.5)
    for step in range(4):
        ada.accumulate(torch.ones(10))  # r_t = 1: overfitting
        ada.end_step(step, batch_size=10)
    assert ada.p == pytest.approx(0.9) and ada.history[-1] == (3, pytest.approx(0.9), 1.0)
    for step in range(4, 20):
        ada.accumulate(-torch.ones(10))
        ada.end_step(step, batch_size=10)
    assert ada.p == 0.0  # clamped
    restored = AdaController()
    restored.load_state_dict(ada.state_dict())
    assert restored.p == ada.p and restored.history == ada.history


def test_ada_r_v_is_the_share_of_the_margin_the_training_reals_alone_get():
    def r_v(real, validation, fake):
        ada = AdaController(heuristic="r_v", interval=1)
        ada.accumulate(torch.tensor(real), torch.tensor(fake), torch.tensor(validation))
        return ada.measure()

    assert r_v([1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]) == pytest.approx(1.0)  # held-out reals look fake: memorised
    assert r_v([1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]) == pytest.approx(0.0)  # held-out reals look real: no overfitting
    assert r_v([2.0, 0.0], [0.5, 0.5], [-1.0, -1.0]) == pytest.approx(0.25)
    assert r_v([7.0, 5.0], [5.5, 5.5], [4.0, 4.0]) == pytest.approx(0.25)  # a common shift of every score cancels
    assert r_v([-1.0], [-2.0], [0.0]) == 0.0  # no real-vs-fake margin: nothing to overfit
    # r_t on the shifted scores says 1 (every real "sure"), r_v says what is overfitted:
    shifted = AdaController(heuristic="r_t", interval=1)
    shifted.accumulate(torch.tensor([7.0, 5.0]), torch.tensor([4.0, 4.0]), torch.tensor([5.5, 5.5]))
    assert shifted.measure() == 1.0

    ada = AdaController(heuristic="r_v", target=0.3, interval=2, speed_images=100)
    for step in range(4):
        ada.accumulate(torch.ones(10), -torch.ones(10), -torch.ones(10))  # r_v = 1 > 0.3: raise p
        ada.end_step(step, batch_size=10)
    assert ada.p == pytest.approx(0.4) and ada.history[-1] == (3, pytest.approx(0.4), pytest.approx(1.0))
    ada.accumulate(torch.ones(10), -torch.ones(10), torch.ones(10))  # r_v = 0 < 0.3: lower p
    ada.end_step(4, batch_size=10)
    ada.end_step(5, batch_size=10)
    assert ada.p == pytest.approx(0.2) and ada.r == pytest.approx(0.0)
    with pytest.raises(ValueError):  # r_v without validation scores is not silently 0
        missing = AdaController(heuristic="r_v")
        missing.accumulate(torch.ones(2), -torch.ones(2))
        missing.measure()


def test_ada_on_r_v_scores_validation_items_and_falls_back_to_r_t_without_them():
    with_validation = tiny_run("enhanced_gan", ada_heuristic="r_v", ada_interval=1)
    assert with_validation.trainer.ada.heuristic == "r_v" and with_validation.trainer.ada.target == pytest.approx(0.3)
    ada = with_validation.trainer.ada
    seen, accumulate = [], ada.accumulate

    def spy(real, fake=None, validation=None):
        seen.append((real.shape, fake.shape, None if validation is None else validation.shape))
        accumulate(real, fake, validation)

    ada.accumulate = spy
    with_validation.run()
    assert seen == [(torch.Size([8]),) * 3] * 6  # a batch of validation reals scored at every D step
    assert ada.heuristic == "r_v" and len(ada.history) == 6
    assert all(math.isfinite(r) for _, _, r in ada.history)

    r_v = {"ada_heuristic": "r_v", "validation": False}
    for run in (tiny_run("enhanced_gan", **r_v), tiny_run("enhanced_gan", ada_target=0.2, **r_v)):
        run.run()  # never given held-out reals: r_t (a mean of the signs of 4 steps x 8 scores)
        assert run.trainer.ada.heuristic == "r_t" and len(run.trainer.ada.history) == 1
        assert run.trainer.ada.r * 32 == pytest.approx(round(run.trainer.ada.r * 32))
    assert tiny_run("enhanced_gan", **r_v).trainer.ada.target == pytest.approx(0.3)  # until the first step
    fallen = tiny_run("enhanced_gan", **r_v)
    fallen.trainer.use_validation(tiny_data(1))  # 1 item is not a validation set
    assert fallen.trainer.ada.heuristic == "r_t" and fallen.trainer.ada.target == pytest.approx(0.6)
    kept = tiny_run("enhanced_gan", ada_target=0.2, **r_v)
    kept.trainer.use_validation(None)
    assert kept.trainer.ada.target == pytest.approx(0.2)  # the user's target stays


def test_enhanced_gan_logs_ada_p_and_plain_gan_does_not():
    enhanced, plain = tiny_run("enhanced_gan", ada_interval=1, ada_speed_images=80, ada_initial_p=0.5), tiny_run("gan")
    enhanced.run()
    plain.run()
    assert "ada_p" in enhanced.history[-1] and "ada_p" not in plain.history[-1]
    assert len(enhanced.trainer.ada.history) == 6
    assert enhanced.history[0]["ada_p"] != pytest.approx(0.5)  # it moved from its initial p


def test_lecam_penalty_is_the_papers_formula_with_moving_anchors():
    d_real, d_fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    # mean((D(x) - a_F)^2) + mean((D(G(z)) - a_R)^2) with a_R = 0.5, a_F = -1:
    expected = ((2.0**2 + 4.0**2) / 2) + ((2.5**2 + 0.5**2) / 2)
    assert lecam_penalty(d_real, d_fake, torch.tensor(0.5), torch.tensor(-1.0)).item() == pytest.approx(expected)
    real = d_real.clone().requires_grad_(True)
    lecam_penalty(real, d_fake, torch.tensor(0.5), torch.tensor(-1.0)).backward()
    assert torch.allclose(real.grad, torch.tensor([2.0, 4.0]))  # d/dD(x) of mean((D(x) + 1)^2), anchors constant

    anchors = LecamAnchors(torch.device("cpu"))
    anchors.update(d_real, d_fake)  # the first update sets them: means 2 and -1
    assert (anchors.real.item(), anchors.fake.item()) == (2.0, -1.0)
    anchors.update(torch.tensor([4.0]), torch.tensor([1.0]))
    assert anchors.real.item() == pytest.approx(LECAM_DECAY * 2 + (1 - LECAM_DECAY) * 4)
    assert anchors.fake.item() == pytest.approx(LECAM_DECAY * -1 + (1 - LECAM_DECAY) * 1)
    restored = LecamAnchors(torch.device("cpu"))
    restored.load_state_dict(anchors.state_dict())
    assert torch.equal(restored.values, anchors.values) and restored.started


def test_lecam_weight_zero_changes_nothing_and_a_weight_changes_the_discriminator():
    off, default, on = tiny_run("gan", lecam_weight=0.0), tiny_run("gan"), tiny_run("gan", lecam_weight=0.5)
    for run in (off, default, on):
        run.run()
    _assert_same_weights(off, default)
    assert off.history == default.history and "lecam" not in off.history[-1]
    assert not off.trainer.lecam.started  # no anchor is measured when it is off
    assert on.history[-1]["lecam"] > 0 and on.trainer.lecam.started
    key = "discriminator.score.parametrizations.weight.original"
    assert not torch.equal(weights(on)[key], weights(off)[key])
    # A checkpoint written before LeCam existed still loads (with fresh anchors).
    state = off.trainer.state_dict()
    del state["lecam"]
    old = tiny_run("gan")
    old.trainer.load_state_dict(state)
    assert not old.trainer.lecam.started


def test_hyperparameters_defaults_per_kind_and_precise_errors():
    assert resolve("vae", {}).learning_rate == 1e-3
    gan = resolve("enhanced_gan", {"batch_size": 32, "ada_target": 0.0})
    assert gan.diff_augment == ("color", "translation", "cutout") and gan.adaptive_augmentation
    assert gan.batch_size == 32 and gan.ada_target == 0.0  # an explicit zero stays zero (the default is 0.6)
    assert (resolve("enhanced_gan", {}).ada_heuristic, resolve("enhanced_gan", {}).ada_target) == ("r_t", 0.6)
    assert resolve("enhanced_gan", {"ada_heuristic": "r_v"}).ada_target == 0.3  # the target follows the heuristic
    assert resolve("enhanced_gan", {"ada_heuristic": "r_v", "ada_target": 0.5}).ada_target == 0.5
    assert (resolve("gan", {}).ada_heuristic, resolve("gan", {}).ada_target) == ("r_t", 0.6)
    assert resolve("gan", {}).lecam_weight == 0.0 and resolve("enhanced_gan", {}).lecam_weight == 0.1
    assert resolve("enhanced_gan", {"lecam_weight": 0.0}).lecam_weight == 0.0  # an explicit 0 turns it off
    for given, field in [
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"loss": "wasserstein"}, "loss"),
        ({"ada_heuristic": "r_x"}, "ada_heuristic"),
        ({"diff_augment": ("color", "color")}, "diff_augment"),
        ({"nonsense": 1}, "nonsense"),
        ({"discriminator_learning_rate": 0.0}, "discriminator_learning_rate"),
        ({"lecam_weight": -0.1}, "lecam_weight"),
    ]:
        with pytest.raises(InvalidHyperparameter) as caught:
            resolve("gan", given)
        assert caught.value.field == field
