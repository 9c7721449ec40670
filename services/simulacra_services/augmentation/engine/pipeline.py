"""Running a pipeline on one item: sample, compose, execute once.

``Augmenter.run`` walks the pipeline tree. Each node at path ``p`` (``"2"``,
``"2.0"``, ...) draws from its own counter-based stream ``op_generator(item
seed, p)``: first whether it fires (always drawn, so that a probability of 1
costs the same stream as 0.7), then which children a group runs, then the
op's parameters. Consecutive geometric ops only compose their matrices; the
image and the annotations are resampled once per run of geometric ops, when a
pixel op needs the pixels or the pipeline ends (the StyleGAN2-ADA idea: one
interpolation instead of one per op). The annotations are moved once, at the
end, through the recorded resamplings (``targets.TargetTransform``).

Fusion means the pixels of the composed map are taken from the source image:
a crop followed by a pad does not bring back the cropped-away content only
if a pixel op sits between them; otherwise the fused warp sees the source
image through the composed map. The annotations always follow the same map,
so they match the pixels either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from simulacra_services.annotation.domain.model import Annotation, Category
from simulacra_services.augmentation.engine import rng as rng_module
from simulacra_services.augmentation.engine.params import invalid
from simulacra_services.augmentation.engine.ops.mixing import fit
from simulacra_services.augmentation.engine.registry import FieldOp, GeometricOp, ImageOp, MixOp
from simulacra_services.augmentation.engine.spec import Node, OpNode, PipelineSpec, digest
from simulacra_services.augmentation.engine.targets import Step, TargetTransform
from simulacra_services.augmentation.engine.warp import Resampling, is_identity, warp

MAX_IMAGE_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class Item:
    """An image ([H, W, C] uint8 or float32 in [0, 1]) with its annotations."""

    image: np.ndarray
    annotations: Sequence[Annotation] = ()
    key: str = ""
    seed: int | None = None
    partners: Sequence[Item] = ()
    """Other items that mixing ops (mixup, cutmix, mosaic, copy_paste) may draw from."""


@dataclass(frozen=True)
class Augmented:
    key: str
    image: np.ndarray
    annotations: tuple[Annotation, ...]
    seed: int
    applied_paths: tuple[str, ...]
    dropped_annotations: int
    partner_keys: tuple[str, ...] = ()
    """Keys of the partners mixing ops used, in order (the other sources of this item)."""
    resamplings: tuple[Step, ...] = ()
    """The geometric resamplings the image went through since its last mixing op (or its input), in
    order: what the annotations were moved through (for tests and debugging)."""

    @property
    def applied_ops(self) -> tuple[int, ...]:
        """Top-level op indices that fired (a group counts when it fired)."""
        seen: list[int] = []
        for path in self.applied_paths:
            top = int(path.split(".", 1)[0])
            if top not in seen:
                seen.append(top)
        return tuple(seen)


@dataclass
class _State:
    image: np.ndarray
    annotations: list[Annotation]
    path: str
    matrix: np.ndarray = field(default_factory=lambda: np.eye(3))
    height: int = 0
    width: int = 0
    resampling: Resampling | None = None
    steps: list[Step] = field(default_factory=list)
    done: list[Step] = field(default_factory=list)  # steps already moved the annotations (since the last mix)
    base: tuple[int, int] = (0, 0)  # frame the pending steps start from
    dropped: int = 0


def check_image(image: np.ndarray, field: str = "image") -> None:
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise invalid("INVALID_IMAGE", field, f"an image is [H, W, C] with C in 1, 3, 4; got shape {list(image.shape)}", shape=list(image.shape))
    if image.dtype not in (np.uint8, np.float32):
        raise invalid("INVALID_IMAGE", field, f"an image is uint8 or float32, got {image.dtype}", dtype=str(image.dtype))
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise invalid("INVALID_IMAGE", field, "an image needs at least one pixel")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise errors_resource(field, image)


def errors_resource(field: str, image: np.ndarray):  # noqa: ANN201
    from simulacra_services.core import errors

    return errors.ResourceExhausted(
        "IMAGE_TOO_LARGE",
        f"{field}: {image.shape[1]}x{image.shape[0]} pixels, at most {MAX_IMAGE_PIXELS}",
        {"field": field, "limit": MAX_IMAGE_PIXELS},
    )


class NumpyPixels:
    """Where the executor sends pixel work: numpy + OpenCV, at once (the default)."""

    def warp(self, image: np.ndarray, matrix: np.ndarray, height: int, width: int, resampling: Resampling) -> np.ndarray:
        return warp(image, matrix, height, width, resampling)

    def remap(self, image: np.ndarray, field: object, values: Mapping[str, object]) -> np.ndarray:
        return field.remap(image, values["interpolation"], values["border_mode"], values["fill_value"])  # type: ignore[attr-defined]

    def apply(self, image: np.ndarray, op: ImageOp, values: Mapping[str, object], sampled: object) -> np.ndarray:
        return op.apply(image, values, sampled)

    def mixing(self) -> bool:
        return True


NUMPY = NumpyPixels()


class Augmenter:
    """A validated pipeline, ready to run on items (thread-safe: it holds no per-item state)."""

    def __init__(self, spec: PipelineSpec, categories: Mapping[int, Category] | Sequence[Category] = (), *, fuse: bool = True) -> None:
        """``fuse=False`` resamples after every geometric op (what op-by-op libraries do; for comparison)."""
        self.spec = spec
        self.fuse = fuse
        self.digest = digest(spec)
        if isinstance(categories, Mapping):
            self.categories = dict(categories)
        else:
            self.categories = {c.category_id: c for c in categories}

    def item_seed(self, request_seed: int, key: str, position: int, copy_index: int = 0) -> int:
        if self.spec.seed_policy == "SEED_POLICY_POSITION":
            return rng_module.position_seed(request_seed, position)
        return rng_module.item_seed(request_seed, key, copy_index)

    def run(self, item: Item, seed: int, path: str = "item", pixels: NumpyPixels = NUMPY) -> Augmented:
        """Augment one item with the given item seed (``pixels``: where the pixel work goes)."""
        check_image(item.image, f"{path}.image")
        state = _State(image=item.image, annotations=list(item.annotations), path=f"{path}.annotations")
        state.height, state.width = item.image.shape[:2]
        state.base = (state.height, state.width)
        for index, partner in enumerate(item.partners):
            check_image(partner.image, f"{path}.partners[{index}].image")
        applied: list[str] = []
        partner_keys: list[str] = []
        for node, node_path, generator in self._fired(self.spec.ops, "", seed):
            op = node.op
            if isinstance(op, GeometricOp):
                sampled = op.sample(node.values, generator, state.height, state.width)
                step = op.warp(node.values, sampled, state.height, state.width)
                state.resampling = (state.resampling or Resampling()).merge(step.interpolation, step.border_mode, step.fill_value)
                state.matrix = step.matrix @ state.matrix
                state.height, state.width = step.height, step.width
                if not self.fuse:
                    self._flush(state, pixels)
            elif isinstance(op, MixOp):
                if not item.partners:
                    continue  # nothing to mix with: the op does not fire
                if not pixels.mixing():
                    raise NotImplementedError("mixing ops run on the numpy path only")
                self._flush(state, pixels)
                self._materialize(state)
                sources = []
                order = generator.permutation(len(item.partners))  # distinct partners while there are enough
                for number in range(op.partners_wanted(node.values)):
                    index = int(order[number % len(order)])
                    partner = item.partners[index]
                    key = partner.key or f"partners[{index}]"
                    sources.append(fit(key, partner.image, partner.annotations, state.image, self.categories, f"p{len(partner_keys) + number}.", f"{path}.partners[{index}].annotations"))
                state.image, state.annotations, dropped = op.mix(node.values, generator, state.image, state.annotations, sources, self.spec.annotation_policy, state.path)
                state.dropped += dropped
                partner_keys.extend(s.key for s in sources)
                state.base = state.image.shape[:2]
                state.done = []
            elif isinstance(op, FieldOp):
                self._flush(state, pixels)
                sampled = op.sample(node.values, generator, state.height, state.width)
                field = op.field(node.values, sampled, state.height, state.width)
                state.image = pixels.remap(state.image, field, node.values)
                state.steps.append(Step(np.eye(3), state.height, state.width, field))
            else:
                assert isinstance(op, ImageOp)
                self._flush(state, pixels)
                sampled = op.sample(node.values, generator, state.height, state.width)
                state.image = pixels.apply(state.image, op, node.values, sampled)
            applied.append(node_path)
        self._flush(state, pixels)
        self._materialize(state)
        return Augmented(
            key=item.key,
            image=state.image,
            annotations=tuple(state.annotations),
            seed=seed,
            applied_paths=tuple(applied),
            dropped_annotations=state.dropped,
            partner_keys=tuple(partner_keys),
            resamplings=tuple(state.done),
        )

    def _materialize(self, state: _State) -> None:
        """Move the annotations through the resamplings recorded so far (once, all steps at a time)."""
        if state.steps and state.annotations:
            transform = TargetTransform(state.steps, state.base, self.spec.annotation_policy, self.categories, state.path)
            state.annotations, dropped = transform.apply(state.annotations)
            state.dropped += dropped
        state.done.extend(state.steps)
        state.steps = []
        state.base = state.image.shape[:2]

    def _fired(self, nodes: Sequence[Node], prefix: str, seed: int) -> Iterator[tuple[OpNode, str, np.random.Generator]]:
        for index, node in enumerate(nodes):
            yield from self._node(node, f"{prefix}{index}", seed)

    def _node(self, node: Node, path: str, seed: int) -> Iterator[tuple[OpNode, str, np.random.Generator]]:
        generator = rng_module.op_generator(seed, path)
        if generator.random() >= node.probability:
            return
        if isinstance(node, OpNode):
            yield node, path, generator
            return
        children = list(range(len(node.children)))
        if node.mode == "one_of":
            children = [generator.choice_index(list(node.weights))]
        elif node.mode == "some_of":
            count = int(generator.integers(node.min_count, node.max_count + 1))
            children = sorted(generator.permutation(len(children))[:count])
        elif node.mode == "random_order":
            children = generator.permutation(len(children))
        for index in children:
            yield from self._node(node.children[index], f"{path}.{index}", seed)

    def _flush(self, state: _State, pixels: NumpyPixels = NUMPY) -> None:
        in_h, in_w = state.image.shape[:2]
        if state.resampling is None:
            return
        if not ((state.height, state.width) == (in_h, in_w) and is_identity(state.matrix)):
            state.image = pixels.warp(state.image, state.matrix, state.height, state.width, state.resampling)
            state.steps.append(Step(state.matrix, state.height, state.width))
        state.matrix = np.eye(3)
        state.resampling = None

    def run_batch(self, items: Sequence[Item], request_seed: int, start_position: int = 0) -> list[Augmented]:
        """Augment items with seeds derived as the pipeline's seed policy says."""
        out = []
        for index, item in enumerate(items):
            seed = item.seed if item.seed is not None else self.item_seed(request_seed, item.key, start_position + index)
            out.append(self.run(item, seed, f"items[{index}]"))
        return out
