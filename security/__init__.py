"""Least privilege: the secrets backends, the scrubber that keeps secret values out of everything
leaving a job, Redis ACL users and the job-inputs handoff through them."""
