"""Planning a job: the estimate, the GPU catalog, job time and cost, the GPU choice, the host check and plan files."""
