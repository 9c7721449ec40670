"""Entry point of the worker process: ``python -m simulacra_services.training.worker``."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from simulacra_services.training.worker import protocol


def _exit_with_parent() -> None:
    """A worker whose server died (kill -9) must not train on beside the worker of the server that
    takes the job over: it exits at once when its parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> int:
    # Events go to the original stdout; anything a library prints goes to stderr instead.
    events = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    emit = protocol.EventWriter(events)
    stopping = False

    def request_stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    _exit_with_parent()

    import torch

    from simulacra_client.annotation import AnnotationClient
    from simulacra_client.errors import SimulacraRpcError
    from simulacra_services.core.config import Settings
    from simulacra_services.core.storage import open_object_store
    from simulacra_services.training.api import annotation_source
    from simulacra_services.training.worker.pipeline import DeviceUnavailable, JobRequest, TrainingPipeline

    torch.set_num_threads(int(os.environ.get("SIMULACRA_TRAINING_THREADS", "2")))
    request = JobRequest.from_json(json.loads(sys.stdin.readline()))
    settings = Settings.from_env()
    objects = open_object_store(settings)
    hp = request.hp
    try:
        emit(protocol.STAGE, stage="LOADING_DATA")
        with AnnotationClient(settings.address("annotation"), token=settings.auth_token or None,
                              tls_ca=settings.tls_ca or None, max_message_bytes=settings.max_message_bytes) as client:
            data = annotation_source.load(client, request.data, height=hp.image_height, width=hp.image_width,
                                          channels=hp.channels, conditional=hp.conditional, should_stop=lambda: stopping)
        TrainingPipeline(request, objects, emit, lambda: stopping).run(data)
    except InterruptedError:
        emit(protocol.STOPPED, step=0)
    except annotation_source.EmptyDataset as error:
        emit(protocol.ERROR, code="FAILED_PRECONDITION", reason="EMPTY_DATASET", message=str(error))
        return protocol.FAILED_EXIT
    except annotation_source.WrongKindDataset as error:
        emit(protocol.ERROR, code="FAILED_PRECONDITION", reason="DATASET_UNSUITABLE", message=str(error))
        return protocol.FAILED_EXIT
    except SimulacraRpcError as error:
        if error.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN"):
            raise  # transient: a crash exit, so the supervisor retries from the latest checkpoint
        emit(protocol.ERROR, code=error.code.name, reason=error.reason or "ANNOTATION_STORE_ERROR",
             message=f"annotation-store: {error.message}")
        return protocol.FAILED_EXIT
    except DeviceUnavailable as error:
        emit(protocol.ERROR, code="FAILED_PRECONDITION", reason="DEVICE_UNAVAILABLE", message=str(error))
        return protocol.FAILED_EXIT
    finally:
        objects.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
