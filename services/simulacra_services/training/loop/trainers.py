"""One optimisation step per family, and the complete state a checkpoint needs to resume exactly.

Every random draw (latents, the VAE's eps, augmentations) comes from the trainer's own
``torch.Generator``, saved in the state: same seed, data and device give the same weights, and a
resumed run continues the very same stream.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from simulacra_services.training.loop.ada import AdaController
from simulacra_services.training.loop.diffaugment import diff_augment
from simulacra_services.training.loop.ema import ModelEma
from simulacra_services.training.loop.hyperparameters import ADA_DEFAULT_TARGETS, Hyperparameters
from simulacra_services.training.models import ConditionalGenerator, ConditionalVAE, ModelConfig, ProjectionDiscriminator


def _maybe_compile(module: nn.Module, device: torch.device):
    """torch.compile on a GPU; eager on the CPU (compiling costs more than it saves on small models)."""
    return torch.compile(module) if device.type == "cuda" else module


class Trainer:
    kind: str

    def __init__(self, config: ModelConfig, hp: Hyperparameters, device: torch.device) -> None:
        self.config, self.hp, self.device = config, hp, device
        torch.manual_seed(hp.seed)
        self.noise = torch.Generator(device=device).manual_seed(hp.seed + 1)
        self.amp = hp.mixed_precision and device.type == "cuda"

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.latent_dim, generator=self.noise, device=self.device)

    def step(self, step: int, images, labels, attributes) -> dict[str, float]:
        raise NotImplementedError

    def use_validation(self, data) -> None:
        """Held-out reals the trainer may score (never train on); only the enhanced GAN's r_v does."""

    def sampler(self) -> nn.Module:
        """The network that maps (z, labels, attributes) to images: exported and evaluated."""
        raise NotImplementedError

    def modules(self) -> dict[str, object]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        state = {name: module.state_dict() for name, module in self.modules().items()}
        return state | {"noise": self.noise.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.modules().items():
            module.load_state_dict(state[name])
        self.noise.set_state(state["noise"])


class VaeTrainer(Trainer):
    kind = "vae"

    def __init__(self, config, hp, device) -> None:
        super().__init__(config, hp, device)
        self.vae = ConditionalVAE(config).to(device)
        self.forward = _maybe_compile(self.vae, device)
        self.optimizer = torch.optim.Adam(self.vae.parameters(), hp.learning_rate, betas=(hp.adam_beta1, hp.adam_beta2))

    def step(self, step, images, labels, attributes):
        self.vae.train()
        noise = self.latents(images.shape[0])
        with self.autocast():
            recon, mean, log_variance = self.forward(images, labels, attributes, noise=noise)
        reconstruction = 0.5 * (recon.float() - images).pow(2).sum(dim=(1, 2, 3)).mean()
        kl = (-0.5 * (1 + log_variance - mean.pow(2) - log_variance.exp()).sum(dim=1)).mean()
        warmup = min(1.0, (step + 1) / self.hp.kl_warmup_steps) if self.hp.kl_warmup_steps else 1.0
        loss = reconstruction + self.hp.kl_weight * warmup * kl
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "reconstruction": reconstruction.item(), "kl": kl.item()}

    def sampler(self):
        return self.vae.decoder.eval()

    def modules(self):
        return {"vae": self.vae, "optimizer": self.optimizer}


LECAM_DECAY = 0.99
"""Decay of LeCam's anchors (the running means of D's scores), the paper's value."""


def lecam_penalty(d_real: torch.Tensor, d_fake: torch.Tensor, anchor_real: torch.Tensor, anchor_fake: torch.Tensor) -> torch.Tensor:
    """LeCam regularisation (Tseng et al., CVPR 2021, eq. 3): scores on reals are pulled towards the
    running mean of the scores on fakes and vice versa, ``mean((D(x) - a_F)^2) + mean((D(G(z)) - a_R)^2)``.
    The anchors are constants here (no gradient flows into them). This is the paper's equation; the
    authors' code squares only the one-sided excess (``relu(D(x) - a_F)``, ``relu(a_R - D(G(z)))``)."""
    return (d_real - anchor_fake.detach()).pow(2).mean() + (d_fake - anchor_real.detach()).pow(2).mean()


class LecamAnchors:
    """The exponential moving averages of D's mean score on reals and on fakes that LeCam anchors to.

    The first update sets them to that step's means (no bias towards 0), later ones decay at
    ``LECAM_DECAY``. Part of the trainer's state, so a resumed run continues them exactly."""

    def __init__(self, device: torch.device) -> None:
        self.values = torch.zeros(2, device=device)  # [real, fake]
        self.started = False

    def update(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> None:
        means = torch.stack([d_real.detach().mean(), d_fake.detach().mean()]).to(self.values.dtype)
        self.values = means if not self.started else LECAM_DECAY * self.values + (1 - LECAM_DECAY) * means
        self.started = True

    @property
    def real(self) -> torch.Tensor:
        return self.values[0]

    @property
    def fake(self) -> torch.Tensor:
        return self.values[1]

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "started": self.started}

    def load_state_dict(self, state: dict) -> None:
        self.values = state["values"].to(self.values.device, self.values.dtype).clone()
        self.started = bool(state["started"])


class GanTrainer(Trainer):
    """Conditional GAN; with ``diff_augment`` / ``adaptive_augmentation`` it is the enhanced GAN.

    ``lecam_weight > 0`` adds LeCam regularisation to the discriminator's loss (``lecam_penalty``)."""

    kind = "gan"

    def __init__(self, config, hp, device) -> None:
        super().__init__(config, hp, device)
        self.generator = ConditionalGenerator(config).to(device)
        self.discriminator = ProjectionDiscriminator(config).to(device)
        self.ema = ModelEma(self.generator, hp.ema_decay)
        self.g, self.d = _maybe_compile(self.generator, device), _maybe_compile(self.discriminator, device)
        betas = (hp.adam_beta1, hp.adam_beta2)
        self.g_optimizer = torch.optim.Adam(self.generator.parameters(), hp.learning_rate, betas=betas)
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), hp.discriminator_learning_rate, betas=betas)
        self.ada = AdaController(
            target=hp.ada_target,
            interval=hp.ada_interval,
            speed_images=hp.ada_speed_images,
            p=hp.ada_initial_p if hp.diff_augment else 0.0,
            adjust_enabled=hp.adaptive_augmentation and bool(hp.diff_augment),
            heuristic=hp.ada_heuristic,
        )
        self.lecam = LecamAnchors(device)
        self.validation: torch.Tensor | None = None
        self.validation_labels: torch.Tensor | None = None
        self.validation_attributes: torch.Tensor | None = None

    def use_validation(self, data) -> None:
        """Held-out reals (a ``TrainingData``, the job's validation items) for ADA's r_v.

        Without at least 2 of them (or when this is never called before the first step) r_v cannot be
        measured: ADA falls back to r_t, against r_t's default target when the target was r_v's default."""
        if self.ada.heuristic != "r_v":
            return
        if data is None or len(data) < 2:
            if self.ada.target == ADA_DEFAULT_TARGETS["r_v"]:
                self.ada.target = ADA_DEFAULT_TARGETS["r_t"]
            self.ada.heuristic = "r_t"
            return
        self.validation = data.images.to(self.device)
        self.validation_labels = data.labels.to(self.device)
        self.validation_attributes = None if data.attributes is None else data.attributes.to(self.device)

    def _measures_r_v(self) -> bool:
        if self.ada.heuristic == "r_v" and self.validation is None:
            self.use_validation(None)  # never given held-out reals: r_t
        return self.ada.heuristic == "r_v"

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if not self.hp.diff_augment:
            return x
        return diff_augment(x, self.hp.diff_augment, self.ada.p, self.noise)

    def step(self, step, images, labels, attributes):
        hp = self.hp
        self.generator.train()
        n = images.shape[0]
        for _ in range(hp.d_steps_per_g_step):
            with torch.no_grad(), self.autocast():
                fake = self.g(self.latents(n), labels, attributes).float()
            real = self.augment(images)
            if hp.r1_gamma > 0:
                real = real.detach().requires_grad_(True)
            d_validation = None
            with self.autocast():
                if self._measures_r_v():
                    # Held-out reals, augmented alike, scored in the same forward (no extra
                    # spectral-norm power iteration, no gradient): ADA's r_v.
                    val_images, val_labels, val_attributes = self._validation_batch(n)
                    scores = self.d(
                        torch.cat([real, self.augment(val_images)]), torch.cat([labels, val_labels]),
                        None if attributes is None else torch.cat([attributes, val_attributes]),
                    ).float()
                    d_real, d_validation = scores[:n], scores[n:].detach()
                else:
                    d_real = self.d(real, labels, attributes).float()
                d_fake = self.d(self.augment(fake), labels, attributes).float()
            if hp.loss == "hinge":
                d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            else:
                d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            r1 = torch.zeros((), device=self.device)
            if hp.r1_gamma > 0:
                (gradient,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
                r1 = gradient.pow(2).sum(dim=(1, 2, 3)).mean()
                d_loss = d_loss + 0.5 * hp.r1_gamma * r1
            if hp.lecam_weight > 0:
                self.lecam.update(d_real, d_fake)
                lecam = lecam_penalty(d_real, d_fake, self.lecam.real, self.lecam.fake)
                d_loss = d_loss + hp.lecam_weight * lecam
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_optimizer.step()
            self.ada.accumulate(d_real, d_fake, d_validation)
        with self.autocast():
            fake = self.g(self.latents(n), labels, attributes).float()
            d_fake = self.d(self.augment(fake), labels, attributes).float()
        g_loss = -d_fake.mean() if hp.loss == "hinge" else F.softplus(-d_fake).mean()
        self.g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_optimizer.step()
        self.ema.update(self.generator, step)
        self.ada.end_step(step, n)
        losses = {"generator": g_loss.item(), "discriminator": d_loss.item(), "d_real": d_real.mean().item()}
        if hp.r1_gamma > 0:
            losses["r1"] = r1.item()
        if hp.lecam_weight > 0:
            losses["lecam"] = lecam.item()
        if hp.diff_augment:
            losses["ada_p"] = self.ada.p
            losses["ada_r"] = self.ada.r  # the latest r_v (or r_t) p was steered by
        return losses

    def load_state_dict(self, state: dict) -> None:
        if "lecam" not in state:  # a checkpoint from before LeCam existed: it trained without it
            state = state | {"lecam": LecamAnchors(self.device).state_dict()}
        super().load_state_dict(state)

    def _validation_batch(self, n: int):
        index = torch.randint(0, self.validation.shape[0], (n,), generator=self.noise, device=self.device)
        attributes = None if self.validation_attributes is None else self.validation_attributes[index]
        return self.validation[index], self.validation_labels[index], attributes

    def sampler(self):
        return self.ema.model.eval()

    def modules(self):
        return {
            "generator": self.generator,
            "discriminator": self.discriminator,
            "ema": self.ema,
            "g_optimizer": self.g_optimizer,
            "d_optimizer": self.d_optimizer,
            "ada": self.ada,
            "lecam": self.lecam,
        }


def make_trainer(kind: str, config: ModelConfig, hp: Hyperparameters, device: torch.device) -> Trainer:
    if kind == "vae":
        return VaeTrainer(config, hp, device)
    trainer = GanTrainer(config, hp, device)
    trainer.kind = kind
    return trainer
