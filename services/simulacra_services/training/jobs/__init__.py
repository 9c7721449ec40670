"""Training jobs on the shared jobs framework: the handler that supervises a worker process per job,
the job spec (validation and defaults), and registration of the result in the model registry."""
