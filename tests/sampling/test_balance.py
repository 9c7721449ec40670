"""Class mix "balance against dataset@version": a real annotation-store gives the histogram."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from simulacra_client import AnnotationClient, SamplingClient
from simulacra_client.api.annotation.v1 import annotation_pb2 as ann
from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb
from simulacra_services.annotation.service import DEFINITION as ANNOTATION
from simulacra_services.core.registry import GeneratorSignature
from simulacra_services.sampling.api.balance import gap_weights
from tests.harness import png, running_service
from tests.sampling.conftest import SMALL, local_settings, rpc_error, started
from tests.sampling.generators import DIGITS, PLAIN


def test_gap_weights_fill_up_to_the_largest_class() -> None:
    sig = GeneratorSignature(latent_dim=2, channels=1, height=2, width=2, num_classes=4, category_ids=(10, 20, 30, 40))
    assert gap_weights({10: 5, 20: 1, 30: 3}, sig) == {0: 0.0, 1: 4.0, 2: 2.0, 3: 5.0}
    assert gap_weights({10: 2, 20: 2, 30: 2, 40: 2}, sig) == {}  # balanced already: uniform


async def test_a_stream_balances_against_a_dataset_version(tmp_path: Path) -> None:
    async with running_service(ANNOTATION, "local", data_dir=tmp_path / "annotation") as annotation:
        counts = {1: 6, 2: 2, 3: 4}  # objects per category in the committed version; categories 4..10 have none

        def make_dataset() -> None:
            with AnnotationClient(annotation.address) as client:
                client.create_dataset("digits-real", categories=[ann.Category(name=f"d{i}", category_id=i, display_name=f"digit {i}") for i in range(1, 11)])
                items = [
                    ann.Item(image=ann.Image(data=png(8, 8, mode="L", seed=100 * c + k)), annotations=[ann.Annotation(category_id=c, class_label=ann.ClassLabel())])
                    for c, n in counts.items()
                    for k in range(n)
                ]
                client.upload_items("digits-real", items)
                client.commit("digits-real")

        await asyncio.to_thread(make_dataset)
        settings = local_settings(tmp_path).replace(annotation_address=annotation.address)
        async for sampling in started(settings, replace(SMALL, max_sample_count=2048)):
            sampling.register("digits")
            sampling.register("plain", PLAIN)
            balanced = await sampling.sample(
                "models/digits/versions/1", 2000, seed=1, class_mix=gen_pb.ClassMix(balance_against="datasets/digits-real/versions/1")
            )
            drawn = np.bincount(np.array(balanced.labels), minlength=10)
            # category c is label c - 1 (DIGITS.category_ids = 1..10); gaps to 6: 0, 4, 2, then 6 for each empty one
            assert drawn[0] == 0 and all(drawn[1:] > 0)
            assert abs(drawn[1] / drawn[2] - 2.0) < 0.6 and abs(drawn[3] / drawn[1] - 1.5) < 0.5

            address = sampling.server.address  # type: ignore[union-attr]
            with SamplingClient(address) as client:
                again = await asyncio.to_thread(client.sample, "digits@1", 2000, seed=1, class_mix="digits-real@1")
            assert again.labels.tolist() == list(balanced.labels)  # same version, same draw

            for mix, code, reason in [
                (gen_pb.ClassMix(balance_against="datasets/digits-real/versions/latest"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BALANCE_REFERENCE"),
                (gen_pb.ClassMix(balance_against="datasets/nope/versions/1"), grpc.StatusCode.NOT_FOUND, "BALANCE_DATASET_NOT_FOUND"),
                (gen_pb.ClassMix(balance_against="datasets/digits-real/versions/1", weights={1: 1.0}), grpc.StatusCode.INVALID_ARGUMENT, "CLASS_MIX_CONFLICT"),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await sampling.sample("models/digits/versions/1", 4, class_mix=mix)
                assert (rpc_error(raised.value).code, rpc_error(raised.value).reason) == (code, reason)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await sampling.sample("models/plain/versions/1", 4, class_mix=gen_pb.ClassMix(balance_against="datasets/digits-real/versions/1"))
            assert rpc_error(raised.value).reason == "GENERATOR_UNCONDITIONAL"
    assert DIGITS.category_ids == tuple(range(1, 11))
