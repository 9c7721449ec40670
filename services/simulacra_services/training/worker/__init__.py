"""The job's own process: loads data, trains, checkpoints, exports, reports (``python -m ...worker``).

The server's supervisor (``training.jobs``) starts one per running job, feeds it a JSON request on
stdin and reads JSON events from stdout, so a crash, a kill -9 or a GIL-bound training step never
touches the gRPC server.
"""
